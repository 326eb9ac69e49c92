"""Which FAISS index to build: the factory rules (autofaiss-like), their memory estimates, and
memory sizes as users write them ("4GB")."""

from __future__ import annotations

import math
import re

import numpy as np

from infomax.errors import SettingError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_memory(s: str | int) -> int:
    """Parse a memory size into bytes: ``1024``, ``"1024"``, ``"512MB"``, ``"4GB"``,
    ``"1.5 GiB"``. Decimal units (kB/MB/GB/TB = powers of 1000, as autofaiss) and
    binary ones (KiB/MiB/GiB/TiB). Case-insensitive. Anything else, zero or a
    negative size raises ``ValueError`` quoting the value."""
    if isinstance(s, bool):
        raise SettingError(f"invalid memory size {s!r}", setting="memory_budget")
    if isinstance(s, (int, np.integer)):
        if s <= 0:
            raise SettingError(f"invalid memory size {s!r}: must be positive", setting="memory_budget")
        return int(s)
    if not isinstance(s, str):
        raise SettingError(
            f"invalid memory size {s!r}: expected e.g. '4GB', '512MB' or a number of bytes", setting="memory_budget"
        )
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", s)
    if not m or m.group(2).lower() not in _UNITS:
        raise SettingError(
            f"invalid memory size {s!r}: expected e.g. '4GB', '512MB', '1.5GiB' or a number of bytes", setting="memory_budget"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise SettingError(f"invalid memory size {s!r}: must be at least 1 byte", setting="memory_budget")
    return int(value)


def nlist_for(n: int) -> int:
    """IVF list count: the power of two nearest 4*sqrt(n), at most n/39 (FAISS wants
    >= 39 training points per centroid), at least 1."""
    if n <= 0:
        return 1
    target = 4.0 * math.sqrt(n)
    nlist = 2 ** int(round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return max(1, nlist)


def _divisors_desc(dim: int, at_most: int) -> list[int]:
    return [m for m in range(min(dim, at_most), 0, -1) if dim % m == 0]


def estimate_memory(factory: str, n: int, dim: int) -> int:
    """Rough RAM (and file) size in bytes of an index built with ``factory``
    (as produced by :func:`choose_factory`) holding ``n`` vectors of ``dim``
    float32 (including the 8-byte id per vector)."""
    if factory == "Flat":
        return n * (4 * dim + 8)
    m = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory)
    if m:
        M = int(m.group(1))
        # level-0 has 2*M neighbours (int32), upper levels add ~1/M of that
        return int(n * (4 * dim + 8 + 2 * M * 4 * 1.05 + 12))
    m = re.fullmatch(r"IVF(\d+)(_HNSW(\d+))?,(.*)", factory)
    if m:
        nlist = int(m.group(1))
        quant = nlist * dim * 4
        if m.group(2):
            quant += nlist * 2 * int(m.group(3)) * 4
        codes = m.group(4)
        if codes == "Flat":
            return n * (4 * dim + 8) + quant
        pq = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", codes)
        if pq:
            mm = int(pq.group(1))
            nbits = int(pq.group(2) or 8)
            return n * (math.ceil(mm * nbits / 8) + 8) + quant + (1 << nbits) * dim * 4
    raise ValueError(f"cannot estimate memory of factory {factory!r}")


def choose_factory(n: int, dim: int, memory_budget_bytes: int) -> str:
    """Choose a FAISS factory string for ``n`` vectors of dimension ``dim`` within
    ``memory_budget_bytes`` of RAM (autofaiss-like rules, first match wins).

    Memory estimates (:func:`estimate_memory`, 8 bytes per id included):
    Flat ``n*(4d+8)``; HNSW32 ``n*(4d+8+~281)``; IVF-Flat ``n*(4d+8) + nlist*4d``;
    IVF-PQm ``n*(m+8) + nlist*4d + 256*4d``.

    1. ``n < 50_000`` and Flat fits            -> ``"Flat"`` (exact; brute force is
       fast enough at this size and needs no training or tuning).
    2. ``n < 1_000_000`` and HNSW32 fits       -> ``"HNSW32"`` (best speed/recall
       trade-off while the graph fits in RAM).
    3. Flat codes fit (any n >= 39*nlist)      -> ``"IVF{nlist},Flat"`` (exact
       distances, less memory than HNSW, native removal).
    4. otherwise (many millions, or over budget) -> ``"IVF{nlist},PQ{m}x8"`` with
       ``m`` the largest divisor of ``dim`` that is <= ``dim // 4`` and fits the
       budget (64 bytes per vector for dim 256). Needs ``n >= 10_000`` to train
       the 256-centroid sub-quantizers.

    ``nlist`` is the power of two nearest ``4*sqrt(n)`` (at most ``n/39``); when
    ``nlist >= 16384`` (about n >= 12M) the coarse quantizer is an HNSW graph:
    ``"IVF{nlist}_HNSW32,..."``. Raises ``ValueError`` when nothing fits.
    """
    n = int(n)
    dim = int(dim)
    budget = int(memory_budget_bytes)
    if n < 0 or dim <= 0 or budget <= 0:
        raise ValueError(f"choose_factory: need n >= 0, dim > 0, budget > 0; got n={n}, dim={dim}, budget={budget}")
    if n < 50_000 and estimate_memory("Flat", n, dim) <= budget:
        return "Flat"
    if n < 1_000_000 and estimate_memory("HNSW32", n, dim) <= budget:
        return "HNSW32"
    nlist = nlist_for(n)
    quant = f"IVF{nlist}_HNSW32" if nlist >= 16384 else f"IVF{nlist}"
    if n >= 39 * nlist and n >= 1000:
        fac = f"{quant},Flat"
        if estimate_memory(fac, n, dim) <= budget:
            return fac
    if n >= 10_000:
        for m in _divisors_desc(dim, max(1, dim // 4)):
            fac = f"{quant},PQ{m}x8"
            if estimate_memory(fac, n, dim) <= budget:
                return fac
        smallest = f"{quant},PQ{_divisors_desc(dim, 1)[0]}x8"
        raise SettingError(
            f"no index fits a memory budget of {budget} bytes for n={n}, dim={dim}: even {smallest!r} "
            f"needs ~{estimate_memory(smallest, n, dim)} bytes",
            setting="memory_budget",
        )
    raise SettingError(
        f"no index fits a memory budget of {budget} bytes for n={n}, dim={dim}: Flat needs "
        f"~{estimate_memory('Flat', n, dim)} bytes and product quantization needs at least 10000 vectors to train",
        setting="memory_budget",
    )


def safe_estimate(factory: str, n: int, dim: int) -> int | None:
    try:
        return estimate_memory(factory, n, dim)
    except ValueError:
        return None
