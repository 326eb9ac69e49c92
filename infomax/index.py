"""Cosine-similarity index over image embeddings: FAISS for search, SQLite for
metadata and durability.

Conventions (faiss / autofaiss style)
-------------------------------------
* Vectors are L2-normalised before they are added or queried and the index uses
  the inner-product metric, so scores are cosine similarities (higher = closer,
  at most ~1.0). Zero vectors, NaN/inf values and wrong dimensions raise
  ``ValueError`` naming the problem; nothing is silently indexed.
* The FAISS interface is kept: ``search`` returns ``(scores, ids)``, two
  ``(n, k)`` arrays, float32 and int64. Ids are non-negative int64 chosen by the
  caller (or allocated ``max+1``); ``-1`` is never an id. When fewer than ``k``
  items exist, rows are padded at the end with id ``-1`` and score ``-inf``
  (FAISS convention). Approximate indexes are searched again with wider
  parameters when a row comes back short, so whenever at least ``k`` items are
  present every row holds ``k`` real ids.

On-disk layout (a contract other code relies on)
------------------------------------------------
A folder with three files (and ``writer.lock``, see below)::

    index.faiss      FAISS index (``faiss.read_index`` reads it as is), followed by a
                     32-byte snapshot trailer: b"IMXSNAP1", payload length (u64),
                     last applied operation sequence number (i64), CRC-32 of the
                     payload (u32), reserved (u32). The trailer detects truncated or
                     foreign files and records which log entries the snapshot holds.
    index.json       build record (see ``EmbeddingIndex.info``): format_version,
                     factory, metric "inner_product", normalized true, dim, count,
                     search_params ({"nprobe": ..} / {"efSearch": ..} / {}),
                     recall_at_10, latency_ms_per_query, created_at,
                     infomax_version, artifact (dict identifying the encoder, or
                     null), snapshot_seq, ...
    metadata.sqlite  SQLite, WAL mode, synchronous=FULL:
                       items(id INTEGER PRIMARY KEY, source TEXT, label INTEGER NULL,
                             meta TEXT (JSON object), vector BLOB (float32 LE,
                             L2-normalised), seq INTEGER (log entry that added it))
                       oplog(seq INTEGER PRIMARY KEY AUTOINCREMENT, op 'add'|'remove',
                             ids BLOB (int64 LE), n INTEGER, created_at REAL)
                       kv(key TEXT PRIMARY KEY, value TEXT): schema_version, dim,
                             next_id, snapshot_seq, pruned_through

Ids in FAISS: flat and graph indexes are wrapped in ``IndexIDMap2``; IVF indexes
use their native ids. HNSW graphs cannot delete, so removed HNSW entries are
tombstoned (their id in the id map is set to -2 and searches use an
``IDSelector`` that skips them) until :meth:`EmbeddingIndex.compact`.

Durability
----------
For an index bound to a folder, ``add``/``remove`` commit the items (vectors and
metadata) together with an operation-log entry in one SQLite transaction
(fsync'd when ``durable=True``), then apply the change to the in-memory FAISS
index. ``index.faiss`` is only a snapshot; ``save()``/``checkpoint()`` rewrite it
atomically (temp file + fsync + rename + directory fsync) and prune the log
entries it contains. ``load()`` replays log entries newer than the snapshot, so a
``kill -9`` right after ``add()`` returns loses nothing and after ``load()`` the
FAISS index and the metadata store agree. Replay is idempotent (every logged id is
re-synchronised with the ``items`` table), and a full reconciliation runs if the
snapshot and the store disagree in any other way (e.g. the log was pruned past the
snapshot).

One writer per folder (``infomax.writer_lock``): a writable instance holds an
exclusive OS lock on ``writer.lock`` in the folder for its lifetime (released by
``close()``, or by the kernel when the process dies, ``kill -9`` included); a
second writable ``load()`` anywhere raises :class:`IndexLockedError` naming the
holder's pid and command, and so does a ``build``/``save`` that would replace a
folder a writer has open. Any number of read-only instances may open the folder
alongside the writer; they pick up its log entries with
:meth:`EmbeddingIndex.refresh`, and :meth:`EmbeddingIndex.folder_replaced` tells
them when a rebuild has put a new folder in place.

Thread safety
-------------
Any number of threads may search concurrently; mutations (add, remove, save,
compact, refresh) are serialised by a writer mutex, and the moment the FAISS
structure is modified is protected by a writer-preferring readers-writer lock, so
a search never observes a half-applied change. FAISS releases the GIL while it
searches. Metadata reads use their own SQLite connection (WAL readers do not
block on the writer). ``get()`` right after a concurrent ``remove()`` of the same
id can return ``None``: callers must treat that as "gone".
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import faiss
import numpy as np

from infomax.atomic import (
    atomic_write_json,
    fsync_dir,
    fsync_file,
    temp_dir_beside,
    temp_name_for,
)
from infomax.writer_lock import REPLACE_FIX, IndexLockedError, WriterLock

__all__ = [
    "EmbeddingIndex",
    "IndexLoadError",
    "IndexMismatchError",
    "IndexLockedError",
    "choose_factory",
    "parse_memory",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "RECORD_FILE",
    "METADATA_FILE",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SCHEMA_VERSION = 1
INDEX_FILE = "index.faiss"
RECORD_FILE = "index.json"
METADATA_FILE = "metadata.sqlite"

_TRAILER = struct.Struct("<8sQqII")
_TRAILER_MAGIC = b"IMXSNAP1"
_TOMBSTONE = -2  # id-map value of a removed HNSW entry (never a valid id)
_MAX_ID = 2**63 - 1
_SQL_CHUNK = 500  # ids per "IN (...)" query (SQLite's variable limit is >= 999)
_VERIFY_CRC_MAX_BYTES = 2 << 30
_SINGLE_THREAD_BELOW = 4  # searches of fewer queries run FAISS on one OpenMP thread  # load(verify=None) checks the CRC of files up to 2 GiB

RECALL_DEFINITION = (
    "mean over sampled indexed vectors used as queries (the query's own id excluded "
    "from both result lists) of |approx top-10 with exact score >= exact 10th score| / 10, "
    "vs exact inner-product search"
)


class IndexLoadError(Exception):
    """An index folder cannot be loaded: a file is missing, truncated, foreign or
    corrupt. The message names the file and what is wrong."""


class IndexMismatchError(ValueError):
    """The index does not belong to the encoder in use (dimension or artifact id).
    The message gives the expected and the found value."""


# --------------------------------------------------------------------------- helpers


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _infomax_version() -> str:
    try:
        from infomax import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return version("infomax")
    except Exception:
        return "0+unknown"


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_memory(s: str | int) -> int:
    """Parse a memory size into bytes: ``1024``, ``"1024"``, ``"512MB"``, ``"4GB"``,
    ``"1.5 GiB"``. Decimal units (kB/MB/GB/TB = powers of 1000, as autofaiss) and
    binary ones (KiB/MiB/GiB/TiB). Case-insensitive. Anything else, zero or a
    negative size raises ``ValueError`` quoting the value."""
    if isinstance(s, bool):
        raise ValueError(f"invalid memory size {s!r}")
    if isinstance(s, (int, np.integer)):
        if s <= 0:
            raise ValueError(f"invalid memory size {s!r}: must be positive")
        return int(s)
    if not isinstance(s, str):
        raise ValueError(f"invalid memory size {s!r}: expected e.g. '4GB', '512MB' or a number of bytes")
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", s)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid memory size {s!r}: expected e.g. '4GB', '512MB', '1.5GiB' or a number of bytes")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"invalid memory size {s!r}: must be at least 1 byte")
    return int(value)


def _nlist_for(n: int) -> int:
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
    nlist = _nlist_for(n)
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
        raise ValueError(
            f"no index fits a memory budget of {budget} bytes for n={n}, dim={dim}: even {smallest!r} "
            f"needs ~{estimate_memory(smallest, n, dim)} bytes"
        )
    raise ValueError(
        f"no index fits a memory budget of {budget} bytes for n={n}, dim={dim}: Flat needs "
        f"~{estimate_memory('Flat', n, dim)} bytes and product quantization needs at least 10000 vectors to train"
    )


class _RWLock:
    """Writer-preferring readers-writer lock (not re-entrant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _ids_blob(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, dtype="<i8").tobytes()


def _blob_ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i8").astype(np.int64)


def _chunks(a: np.ndarray, size: int = _SQL_CHUNK) -> Iterator[list[int]]:
    for i in range(0, len(a), size):
        yield [int(v) for v in a[i : i + size]]


def _as_id_array(ids: Any, what: str = "ids") -> np.ndarray:
    """1-D int64 array from ids; rejects non-integers (floats, strings, bools)."""
    if np.isscalar(ids) or (isinstance(ids, np.ndarray) and ids.ndim == 0):
        ids = [ids]
    try:
        a = np.asarray(ids)
    except Exception as e:  # ragged etc.
        raise ValueError(f"{what} must be a 1-D sequence of integers: {e}") from None
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        if a.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a):
            try:
                return a.astype(np.int64)
            except OverflowError:
                raise ValueError(f"{what} must fit in int64") from None
        raise ValueError(f"{what} must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and (a > _MAX_ID).any():
        raise ValueError(f"{what} must fit in int64")
    return a.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- FAISS helpers


def _index_kind(index: Any) -> str:
    """'ivf' (native ids), 'hnsw' (IDMap2 over a graph: tombstones) or 'flat'
    (IDMap2 over anything supporting remove_ids)."""
    if faiss.try_extract_index_ivf(index) is not None and not isinstance(index, faiss.IndexIDMap):
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def _new_faiss_index(dim: int, factory: str) -> Any:
    spec = factory.strip()
    for prefix in ("IDMap2,", "IDMap,"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
    try:
        base = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ValueError(f"invalid FAISS factory string {factory!r}: {msg}") from None
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # slow (annealing) and unused: we never search in polysemous mode
        return base
    return faiss.IndexIDMap2(base)


def _id_map_view(index: Any) -> np.ndarray:
    """Writable numpy view on an IndexIDMap's id_map (valid until the next add)."""
    n = index.id_map.size()
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return faiss.rev_swig_ptr(index.id_map.data(), n)


def _faiss_ids(index: Any, kind: str) -> np.ndarray:
    """All live ids stored in the FAISS index."""
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        invlists = ivf.invlists
        parts = []
        for lst in range(ivf.nlist):
            size = invlists.list_size(lst)
            if size:
                ptr = invlists.get_ids(lst)
                parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(lst, ptr)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    return ids[ids >= 0]


def _count_tombstones(index: Any, kind: str) -> int:
    if kind != "hnsw":
        return 0
    return int(np.count_nonzero(_id_map_view(index) < 0))


def _is_faiss_header(head: bytes) -> bool:
    # Every FAISS index fourcc starts with 'I' ("IxM2", "IwFl", "IHNf", "IBxF", ...)
    return len(head) == 4 and head[:1] == b"I" and all(0x20 <= c < 0x7F for c in head)


def _file_crc(path: Path, length: int) -> int:
    crc = 0
    with open(path, "rb") as f:
        remaining = length
        while remaining:
            chunk = f.read(min(remaining, 8 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
    return crc & 0xFFFFFFFF


def _check_snapshot_file(p: Path, verify: bool | None) -> tuple[int, int]:
    """Validate ``index.faiss`` before FAISS sees it. Returns (payload_len, seq)."""
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise IndexLoadError(f"{p}: missing (the index folder has no {INDEX_FILE})") from None
    except OSError as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    if size < 4 + _TRAILER.size:
        raise IndexLoadError(f"{p}: truncated or empty ({size} bytes, not a FAISS index)")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
            f.seek(size - _TRAILER.size)
            trailer = f.read(_TRAILER.size)
    except OSError as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    if not _is_faiss_header(head):
        raise IndexLoadError(f"{p}: not a FAISS index (file starts with {head!r})")
    magic, payload_len, seq, crc, _ = _TRAILER.unpack(trailer)
    if magic != _TRAILER_MAGIC:
        raise IndexLoadError(
            f"{p}: truncated or not written by infomax (the {len(_TRAILER_MAGIC)}-byte snapshot trailer "
            f"{_TRAILER_MAGIC!r} is missing at the end of the {size}-byte file)"
        )
    if payload_len != size - _TRAILER.size:
        raise IndexLoadError(
            f"{p}: size mismatch: the trailer says {payload_len} bytes of index data but the file holds "
            f"{size - _TRAILER.size} (truncated or spliced)"
        )
    if seq < 0:
        raise IndexLoadError(f"{p}: corrupt snapshot trailer (sequence number {seq})")
    if verify is None:
        verify = size <= _VERIFY_CRC_MAX_BYTES
    if verify:
        actual = _file_crc(p, payload_len)
        if actual != crc:
            raise IndexLoadError(f"{p}: checksum mismatch (CRC-32 {actual:08x}, trailer says {crc:08x}): the file is corrupt")
    return payload_len, seq


def _read_faiss(p: Path, *, mmap: bool) -> tuple[Any, bool]:
    """faiss.read_index with memory mapping where the type allows it. Returns
    (index, mmapped)."""
    with open(p, "rb") as f:
        head = f.read(4)
    attempts: list[int] = []
    if mmap:
        # IVF: inverted lists mapped as (read-only) OnDiskInvertedLists; flat codes
        # (Flat, HNSW storage): IO_FLAG_MMAP_IFC.
        if head[:2] in (b"Iw", b"IW") and hasattr(faiss, "IO_FLAG_MMAP"):
            attempts.append(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            attempts.append(faiss.IO_FLAG_MMAP_IFC)
    attempts.append(0)
    last: Exception | None = None
    for flags in attempts:
        try:
            return faiss.read_index(str(p), flags), flags != 0
        except (RuntimeError, MemoryError, ValueError) as e:
            last = e
            continue
    detail = str(last).strip().splitlines()[-1] if last and str(last).strip() else repr(last)
    raise IndexLoadError(f"{p}: FAISS cannot read it (corrupt or truncated): {detail}")


def _write_snapshot_tmp(index: Any, dest: Path, seq: int) -> Path:
    """Write ``index`` + trailer to a fresh temp file beside ``dest`` and fsync it.
    The caller renames it (or removes it)."""
    tmp = temp_name_for(dest)
    try:
        faiss.write_index(index, str(tmp))
        payload_len = tmp.stat().st_size
        crc = _file_crc(tmp, payload_len)
        with open(tmp, "ab") as f:
            f.write(_TRAILER.pack(_TRAILER_MAGIC, payload_len, int(seq), crc, 0))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def _read_record(p: Path) -> dict:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexLoadError(f"{p}: missing (the index folder has no build record {RECORD_FILE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexLoadError(f"{p}: not valid JSON ({e}); truncated or corrupt build record") from None
    if not isinstance(rec, dict):
        raise IndexLoadError(f"{p}: not an index build record (a JSON {type(rec).__name__}, expected an object)")
    missing = [k for k in ("format_version", "factory", "metric", "normalized", "dim", "artifact") if k not in rec]
    if missing:
        raise IndexLoadError(f"{p}: not an index build record (missing keys: {', '.join(missing)})")
    fv = rec["format_version"]
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise IndexLoadError(f"{p}: invalid format_version {fv!r}")
    if fv > FORMAT_VERSION:
        raise IndexLoadError(f"{p}: format_version {fv} was written by a newer infomax (this one reads <= {FORMAT_VERSION})")
    if rec["metric"] != "inner_product" or rec["normalized"] is not True:
        raise IndexLoadError(f"{p}: unsupported metric {rec['metric']!r} / normalized={rec['normalized']!r} (expected inner_product, true)")
    dim = rec["dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise IndexLoadError(f"{p}: invalid dim {dim!r}")
    if not isinstance(rec["factory"], str):
        raise IndexLoadError(f"{p}: invalid factory {rec['factory']!r}")
    if rec["artifact"] is not None and not isinstance(rec["artifact"], dict):
        raise IndexLoadError(f"{p}: invalid artifact {rec['artifact']!r} (expected an object or null)")
    return rec


# --------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    source TEXT,
    label INTEGER,
    meta TEXT,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS oplog(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    ids BLOB NOT NULL,
    n INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _connect(db: Path | str, *, read_only: bool, durable: bool) -> sqlite3.Connection:
    if db == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    elif read_only:
        conn = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True, timeout=60.0,
                               isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(db), timeout=60.0, isolation_level=None, check_same_thread=False)
    if db != ":memory:" and not read_only:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def _kv_get(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


def _first_free_id(conn: sqlite3.Connection) -> int:
    """One past the largest id ever used (ids of removed items are never handed out again)."""
    top = conn.execute("SELECT MAX(id) FROM items").fetchone()[0]
    return max(_kv_get(conn, "next_id"), (top + 1) if top is not None else 0)


def _kv_set(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute("INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (key, str(int(value))))


def _last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='oplog'").fetchone()
    return int(row[0]) if row else 0


def _fetch_vectors(conn: sqlite3.Connection, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(present ids in the given order, their vectors) for the ids found in items."""
    found: dict[int, bytes] = {}
    for chunk in _chunks(ids):
        q = f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))})"
        for i, blob in conn.execute(q, chunk):
            found[int(i)] = blob
    present = np.array([i for i in ids.tolist() if i in found], dtype=np.int64)
    vecs = np.empty((len(present), dim), dtype=np.float32)
    for row, i in enumerate(present.tolist()):
        vecs[row] = np.frombuffer(found[i], dtype="<f4")
    return present, vecs


def _existing_ids(conn: sqlite3.Connection, ids: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for chunk in _chunks(ids):
        q = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
        out.extend(int(r[0]) for r in conn.execute(q, chunk))
    return np.array(sorted(out), dtype=np.int64)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class _Plan:
    """Changes to bring the FAISS index up to date with the store."""

    __slots__ = ("remove", "add_ids", "add_vecs", "seq", "full")

    def __init__(self, remove: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray, seq: int, full: bool):
        self.remove, self.add_ids, self.add_vecs, self.seq, self.full = remove, add_ids, add_vecs, seq, full


# --------------------------------------------------------------------------- the index


class EmbeddingIndex:
    """Cosine-similarity index of embeddings with stable int64 ids and metadata.

    Build with :meth:`create` (empty) or :meth:`build` (chooses, trains and tunes
    the FAISS index), open with :meth:`load`. See the module docstring for the
    folder layout, durability and thread-safety guarantees.
    """

    # ------------------------------------------------------------------ construction

    def __init__(self, *, index: Any, info: dict, path: Path | None, conn: sqlite3.Connection,
                 read_conn: sqlite3.Connection | None, read_only: bool, durable: bool, mmapped: bool,
                 applied_seq: int, logging_enabled: bool) -> None:
        # Private: use create(), build() or load().
        self._index = index
        self._kind = _index_kind(index)
        self._info = info
        self._dim = int(info["dim"])
        self._path = path
        self._conn = conn
        self._rconn = read_conn if read_conn is not None else conn
        self._read_only = read_only
        self._durable = durable
        self._mmapped = mmapped
        self._applied_seq = int(applied_seq)
        self._logging = logging_enabled
        self._tombstones = _count_tombstones(index, self._kind)
        self._rw = _RWLock()
        self._wmutex = threading.RLock()
        self._conn_lock = threading.RLock()
        self._rconn_lock = self._conn_lock if self._rconn is conn else threading.Lock()
        self._closed = False
        self._lock: WriterLock | None = None  # held by a writable instance bound to a folder
        self._folder_id: tuple[int, int] | None = _folder_id(path) if path is not None else None
        self._params_cache: dict[Any, Any] = {}
        self._quantizer_hnsw = False
        if self._kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            self._quantizer_hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)

    @staticmethod
    def _base_record(dim: int, factory: str, artifact: dict | None) -> dict:
        now = _now_iso()
        return {
            "format_version": FORMAT_VERSION,
            "factory": factory,
            "metric": "inner_product",
            "normalized": True,
            "dim": int(dim),
            "count": 0,
            "search_params": {},
            "recall_at_10": None,
            "recall_target": None,
            "recall_target_met": None,
            "recall_definition": RECALL_DEFINITION,
            "latency_ms_per_query": None,
            "batch_ms_per_query": None,
            "tuning_queries": 0,
            "memory_budget_bytes": None,
            "created_at": now,
            "updated_at": now,
            "infomax_version": _infomax_version(),
            "faiss_version": faiss.__version__,
            "artifact": copy.deepcopy(artifact),
            "snapshot_seq": 0,
            "index_file_bytes": None,
            "tombstones": 0,
            "build": None,
        }

    @staticmethod
    def _check_artifact(artifact: Any) -> None:
        if artifact is None:
            return
        if not isinstance(artifact, Mapping):
            raise ValueError(f"artifact must be a dict identifying the encoder (e.g. {{'id': sha256, 'path': ...}}) or None, got {type(artifact).__name__}")
        if "id" in artifact and not isinstance(artifact["id"], str):
            raise ValueError(f"artifact['id'] must be a string, got {artifact['id']!r}")
        try:
            json.dumps(artifact, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"artifact is not JSON-serialisable: {e}") from None

    @classmethod
    def create(cls, dim: int, factory: str | None = None, *, path: str | os.PathLike | None = None,
               artifact: dict | None = None, overwrite: bool = False, durable: bool = True) -> "EmbeddingIndex":
        """An empty index of dimension ``dim`` (``factory`` None -> ``"Flat"``).

        With ``path`` the folder is written immediately (it must not already hold
        an index unless ``overwrite``) and the index is bound to it: later
        ``add``/``remove`` are logged durably. IVF/PQ factories need :meth:`train`
        before vectors can be added (or use :meth:`build`)."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        cls._check_artifact(artifact)
        self = cls._new(int(dim), factory or "Flat", artifact, durable, ":memory:")
        if path is not None:
            self.save(path, overwrite=overwrite)
        return self

    @classmethod
    def _new(cls, dim: int, factory: str, artifact: dict | None, durable: bool, db: Path | str) -> "EmbeddingIndex":
        index = _new_faiss_index(dim, factory)
        info = cls._base_record(dim, factory, dict(artifact) if artifact is not None else None)
        conn = _connect(db, read_only=False, durable=False)
        if db != ":memory:":
            conn.execute("PRAGMA synchronous=OFF")  # bulk build in a temp folder, fsync'd once at the end
        conn.executescript(_SCHEMA)
        with _transaction(conn):
            _kv_set(conn, "schema_version", SCHEMA_VERSION)
            _kv_set(conn, "dim", dim)
        return cls(index=index, info=info, path=None, conn=conn, read_conn=None, read_only=False,
                   durable=durable, mmapped=False, applied_seq=0, logging_enabled=False)

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def factory(self) -> str:
        return str(self._info["factory"])

    @property
    def path(self) -> Path | None:
        """The folder the index is bound to (None for an in-memory index)."""
        return self._path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def tombstones(self) -> int:
        """Removed HNSW entries still occupying the graph (see :meth:`compact`)."""
        return self._tombstones

    @property
    def search_params(self) -> dict:
        """{"nprobe": n} (IVF), {"efSearch": n} (HNSW) or {} (exact)."""
        return dict(self._info.get("search_params") or {})

    @search_params.setter
    def search_params(self, params: Mapping[str, int]) -> None:
        allowed = {"ivf": {"nprobe"}, "hnsw": {"efSearch"}}.get(self._kind, set())
        clean = {}
        for key, value in dict(params).items():
            if key not in allowed:
                raise ValueError(f"search parameter {key!r} does not apply to a {self.factory!r} index (allowed: {sorted(allowed)})")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"search parameter {key} must be a positive integer, got {value!r}")
            clean[key] = int(value)
        self._info["search_params"] = clean
        self._params_cache.clear()

    @property
    def info(self) -> dict:
        """The build record (a copy; what index.json holds), with the current count."""
        rec = copy.deepcopy(self._info)
        rec["count"] = len(self)
        rec["tombstones"] = self._tombstones
        return rec

    def __len__(self) -> int:
        index = self._index
        return 0 if index is None else int(index.ntotal) - self._tombstones

    def __contains__(self, id: object) -> bool:
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)):
            return False
        if not (0 <= int(id) <= _MAX_ID):
            return False
        self._check_open()
        with self._rconn_lock:
            return self._rconn.execute("SELECT 1 FROM items WHERE id=?", (int(id),)).fetchone() is not None

    def __repr__(self) -> str:
        where = str(self._path) if self._path else "in memory"
        return f"<EmbeddingIndex {self.factory!r} dim={self._dim} n={len(self)} {where}>"

    def __enter__(self) -> "EmbeddingIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the index is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._read_only:
            raise PermissionError(f"index at {self._path} was opened read_only")

    # ------------------------------------------------------------------ validation

    def _prepare(self, vectors: Any, what: str) -> np.ndarray:
        """(n, dim) float32 C-contiguous, L2-normalised copy; ValueError on bad input."""
        if isinstance(vectors, np.ndarray) and vectors.dtype == np.float32:
            a = vectors
        else:
            try:
                a = np.asarray(vectors)
            except Exception as e:
                raise ValueError(f"{what} must be a numeric array of shape (n, {self._dim}): {e}") from None
            if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{what} must be a real numeric array of shape (n, {self._dim}), got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError(f"{what} must have shape (n, {self._dim}), got shape {a.shape}")
        if a.shape[1] != self._dim:
            raise ValueError(f"wrong dimension: {what} have dimension {a.shape[1]}, the index expects {self._dim}")
        with np.errstate(over="ignore", invalid="ignore"):
            a32 = np.ascontiguousarray(a, dtype=np.float32)
            sq = np.einsum("ij,ij->i", a32, a32)
        if len(sq) and bool(np.all(np.isfinite(sq))) and float(sq.min()) > 1e-30:
            return a32 / np.sqrt(sq)[:, None]
        if len(sq) == 0:
            return a32.copy()
        # slow path: precise diagnostics / tiny or huge values
        bad = np.flatnonzero(~np.isfinite(a32).all(axis=1))
        if len(bad):
            src_bad = ~np.isfinite(np.asarray(a, dtype=np.float64)).all(axis=1)
            kind = "NaN or inf" if src_bad[bad].all() else "NaN/inf or values outside the float32 range"
            raise ValueError(f"{what} contain {kind} in {len(bad)} row(s), first rows {bad[:10].tolist()}")
        a64 = a32.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", a64, a64))
        zero = np.flatnonzero(norms == 0)
        if len(zero):
            raise ValueError(f"{what} contain {len(zero)} zero vector(s) (cosine similarity undefined), first rows {zero[:10].tolist()}")
        return np.ascontiguousarray(a64 / norms[:, None], dtype=np.float32)

    def _parse_metadata(self, metadata: Any, ids: np.ndarray | None, n: int) -> list[tuple[Any, Any, Any]]:
        if metadata is None:
            return [(None, None, None)] * n
        if isinstance(metadata, Mapping) or not isinstance(metadata, Sequence):
            raise ValueError(f"metadata must be a list of {n} dicts (or None), got {type(metadata).__name__}")
        if len(metadata) != n:
            raise ValueError(f"metadata has {len(metadata)} entries for {n} vectors")
        rows = []
        for i, md in enumerate(metadata):
            if md is None:
                rows.append((None, None, None))
                continue
            if not isinstance(md, Mapping):
                raise ValueError(f"metadata[{i}] must be a dict, got {type(md).__name__}")
            d = dict(md)
            if "id" in d:
                given = d.pop("id")
                if ids is None or given != int(ids[i]):
                    raise ValueError(f"metadata[{i}] has key 'id'={given!r}; pass ids=... to add() instead")
            source = d.pop("source", None)
            if source is not None:
                if isinstance(source, os.PathLike):
                    source = os.fspath(source)
                if not isinstance(source, str):
                    raise ValueError(f"metadata[{i}]['source'] must be a string, got {type(source).__name__}")
            label = d.pop("label", None)
            if label is not None:
                if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                    raise ValueError(f"metadata[{i}]['label'] must be an integer or None, got {label!r}")
                label = int(label)
            extra = d.pop("meta", None)
            if extra is not None:
                if not isinstance(extra, Mapping):
                    raise ValueError(f"metadata[{i}]['meta'] must be a dict, got {type(extra).__name__}")
                d = {**dict(extra), **d}
            meta = None
            if d:
                try:
                    meta = json.dumps(d, allow_nan=False, ensure_ascii=False, default=_json_default)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"metadata[{i}] is not JSON-serialisable: {e}") from None
            rows.append((source, label, meta))
        return rows

    # ------------------------------------------------------------------ FAISS mutation (callers hold _wmutex)

    def _faiss_add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self._rw.write():
            self._index.add_with_ids(vecs, ids)

    def _faiss_remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        with self._rw.write():
            if self._kind == "hnsw":
                view = _id_map_view(self._index)
                hit = np.isin(view, ids)
                count = int(np.count_nonzero(hit))
                if count:
                    view[hit] = _TOMBSTONE
                    self._index.construct_rev_map()
                    self._tombstones += count
                    self._params_cache.clear()
                return count
            return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def _apply_plan(self, plan: _Plan | None) -> None:
        if plan is None:
            return
        if plan.full:
            log.warning("index %s: FAISS snapshot and metadata store disagreed; reconciled %d removals and %d additions",
                        self._path, len(plan.remove), len(plan.add_ids))
        self._faiss_remove(plan.remove)
        self._faiss_add(plan.add_ids, plan.add_vecs)
        self._applied_seq = max(self._applied_seq, plan.seq)

    def _plan(self, conn: sqlite3.Connection, *, force_full: bool = False) -> _Plan | None:
        """Inside a transaction on ``conn``: what to apply to catch up with the log."""
        last = _last_seq(conn)
        if last <= self._applied_seq and not force_full:
            return None
        full = force_full or _kv_get(conn, "pruned_through") > self._applied_seq
        touched: list[np.ndarray] = []
        if not full:
            expect = self._applied_seq + 1
            for seq, blob in conn.execute("SELECT seq, ids FROM oplog WHERE seq > ? ORDER BY seq", (self._applied_seq,)):
                if seq != expect:  # gap: entries were pruned or lost
                    full = True
                    break
                touched.append(_blob_ids(blob))
                expect += 1
            if expect != last + 1:  # trailing entries missing
                full = True
        if full:
            item_ids = []
            item_seqs = []
            for i, s in conn.execute("SELECT id, seq FROM items"):
                item_ids.append(i)
                item_seqs.append(s)
            item_ids_a = np.array(item_ids, dtype=np.int64)
            item_seqs_a = np.array(item_seqs, dtype=np.int64)
            in_faiss = _faiss_ids(self._index, self._kind)
            stale = item_ids_a[item_seqs_a > self._applied_seq]
            remove = np.union1d(np.setdiff1d(in_faiss, item_ids_a), np.intersect1d(stale, in_faiss))
            to_add = np.union1d(np.setdiff1d(item_ids_a, in_faiss), stale)
            add_ids, add_vecs = _fetch_vectors(conn, to_add, self._dim)
            return _Plan(remove, add_ids, add_vecs, max(last, self._applied_seq), True)
        ids = np.unique(np.concatenate(touched)) if touched else np.zeros(0, dtype=np.int64)
        add_ids, add_vecs = _fetch_vectors(conn, ids, self._dim)
        return _Plan(ids, add_ids, add_vecs, last, False)

    def _materialize(self) -> None:
        """Replace a memory-mapped (immutable) FAISS index by an in-memory copy of
        the current snapshot before the first mutation."""
        if not self._mmapped:
            return
        assert self._path is not None
        index, seq = self._read_snapshot(self._path, mmap=False, verify=False)[:2]
        with self._rw.write():
            self._index = index
            self._mmapped = False
            self._applied_seq = seq
            self._tombstones = _count_tombstones(index, self._kind)
            self._params_cache.clear()

    @staticmethod
    def _read_snapshot(folder: Path, *, mmap: bool, verify: bool | None) -> tuple[Any, int, bool]:
        """Read index.faiss consistently even if another writer renames a new
        snapshot over it meanwhile. Returns (index, seq, mmapped)."""
        p = folder / INDEX_FILE
        for _ in range(5):
            try:
                st1 = p.stat()
            except FileNotFoundError:
                raise IndexLoadError(f"{p}: missing (the index folder has no {INDEX_FILE})") from None
            _, seq = _check_snapshot_file(p, verify)
            index, mmapped = _read_faiss(p, mmap=mmap)
            st2 = p.stat()
            if (st1.st_ino, st1.st_size, st1.st_mtime_ns) == (st2.st_ino, st2.st_size, st2.st_mtime_ns):
                return index, seq, mmapped
        raise IndexLoadError(f"{p}: keeps changing while being read")

    # ------------------------------------------------------------------ add / remove

    def train(self, vectors: Any) -> None:
        """Train an IVF/PQ index (a no-op for Flat/HNSW). Vectors are normalised
        first. Must happen before the first add."""
        self._check_writable()
        x = self._prepare(vectors, "training vectors")
        with self._wmutex:
            if self._index.is_trained:
                return
            if len(self) or self._index.ntotal:
                raise ValueError("cannot train an index that already holds vectors")
            self._materialize()
            with self._rw.write():
                self._index.train(x)

    def add(self, vectors: Any, ids: Any = None, metadata: list[dict] | None = None) -> np.ndarray:
        """Add vectors (normalised here) with optional ids and metadata; returns the
        int64 ids. ``ids`` None allocates the next free ids (one past the largest id
        ever used, starting at 0). Duplicate ids (within the batch or already
        present) and negative ids raise ``ValueError`` and nothing is added.
        ``metadata`` dicts may hold ``source`` (str), ``label`` (int) and anything
        else (JSON-serialisable), which is stored as the item's ``meta``.
        For an index bound to a folder the change is committed (and fsync'd when
        ``durable``) before this returns."""
        self._check_writable()
        x = self._prepare(vectors, "vectors")
        n = len(x)
        if ids is not None:
            ids_a = _as_id_array(ids)
            if len(ids_a) != n:
                raise ValueError(f"got {len(ids_a)} ids for {n} vectors")
            if n and int(ids_a.min()) < 0:
                bad = ids_a[ids_a < 0][:10].tolist()
                raise ValueError(f"ids must be non-negative, got {bad}")
            uniq, counts = np.unique(ids_a, return_counts=True)
            if len(uniq) != n:
                raise ValueError(f"duplicate ids in the batch: {uniq[counts > 1][:10].tolist()}")
        else:
            ids_a = None
        rows = self._parse_metadata(metadata, ids_a, n)
        if not self._index.is_trained:
            raise ValueError(f"the {self.factory!r} index is not trained: call train() first or use EmbeddingIndex.build()")
        with self._wmutex:
            self._check_writable()
            self._materialize()
            return self._add_locked(x, ids_a, rows)

    def _add_locked(self, x: np.ndarray, ids_a: np.ndarray | None, rows: list, *, log_op: bool | None = None) -> np.ndarray:
        n = len(x)
        log_op = self._logging if log_op is None else log_op
        conn = self._conn
        with self._conn_lock:
            try:
                with _transaction(conn):
                    plan = self._plan(conn) if self._logging else None
                    next_id = _kv_get(conn, "next_id")
                    if ids_a is None:
                        start = _first_free_id(conn)
                        if start + n - 1 > _MAX_ID:
                            raise ValueError("id space exhausted")
                        ids_a = np.arange(start, start + n, dtype=np.int64)
                    if n == 0:
                        new_seq = None
                    else:
                        new_seq = 0
                        if log_op:
                            cur = conn.execute("INSERT INTO oplog(op, ids, n, created_at) VALUES('add', ?, ?, ?)",
                                               (_ids_blob(ids_a), n, time.time()))
                            new_seq = int(cur.lastrowid)
                        le = x.astype("<f4", copy=False)
                        conn.executemany(
                            "INSERT INTO items(id, source, label, meta, vector, seq) VALUES(?, ?, ?, ?, ?, ?)",
                            ((int(i), s, lab, m, le[r].tobytes(), new_seq)
                             for r, (i, (s, lab, m)) in enumerate(zip(ids_a.tolist(), rows))),
                        )
                        _kv_set(conn, "next_id", max(next_id, int(ids_a.max()) + 1))
            except sqlite3.IntegrityError:
                dups = _existing_ids(conn, ids_a) if ids_a is not None else np.zeros(0, np.int64)
                raise ValueError(f"ids already present in the index: {dups[:10].tolist()}"
                                 + (f" (and {len(dups) - 10} more)" if len(dups) > 10 else "")) from None
        self._apply_plan(plan)
        if n:
            self._faiss_add(ids_a, x)
            if new_seq:
                self._applied_seq = new_seq
        return ids_a

    def remove(self, ids: Any) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many were removed."""
        self._check_writable()
        ids_a = np.unique(_as_id_array(ids))
        ids_a = ids_a[ids_a >= 0]
        with self._wmutex:
            self._check_writable()
            self._materialize()
            conn = self._conn
            with self._conn_lock, _transaction(conn):
                plan = self._plan(conn) if self._logging else None
                present = _existing_ids(conn, ids_a)
                new_seq = None
                if len(present):
                    if self._logging:
                        cur = conn.execute("INSERT INTO oplog(op, ids, n, created_at) VALUES('remove', ?, ?, ?)",
                                           (_ids_blob(present), len(present), time.time()))
                        new_seq = int(cur.lastrowid)
                    for chunk in _chunks(present):
                        conn.execute(f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self._apply_plan(plan)
            self._faiss_remove(present)
            if new_seq:
                self._applied_seq = new_seq
            return int(len(present))

    def refresh(self) -> int:
        """Apply log entries written by other instances (processes) of this
        folder. Returns the number of ids re-synchronised."""
        self._check_open()
        if not self._logging:
            return 0
        with self._wmutex:
            if self._mmapped:
                with self._rconn_lock:
                    if _last_seq(self._rconn) <= self._applied_seq:
                        return 0
                self._materialize()
            conn = self._conn if not self._read_only else self._rconn
            lock = self._conn_lock if not self._read_only else self._rconn_lock
            with lock, _transaction(conn, "DEFERRED"):
                plan = self._plan(conn)
            self._apply_plan(plan)
            return 0 if plan is None else int(len(np.union1d(plan.remove, plan.add_ids)))

    def folder_replaced(self) -> bool:
        """True when the folder this index was opened from is no longer at its path (a rebuild
        renamed a new folder into place, or it was moved or deleted): a reader then serves a
        snapshot nobody writes any more, and should open the path again."""
        self._check_open()
        return self._path is not None and self._folder_id is not None and _folder_id(self._path) != self._folder_id

    def compact(self) -> int:
        """Rebuild an HNSW graph without its tombstones (removed entries) from the
        stored vectors; a no-op for other types. Searches continue on the old graph
        meanwhile. Returns the number of tombstones dropped. Call :meth:`save`
        afterwards to persist it."""
        self._check_writable()
        with self._wmutex:
            if self._kind != "hnsw" or self._tombstones == 0:
                return 0
            self._materialize()
            conn = self._conn
            with self._conn_lock, _transaction(conn, "DEFERRED"):
                plan = self._plan(conn) if self._logging else None
                seq = max(self._applied_seq, plan.seq if plan else 0)
                ids = np.array([r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)
                ids, vecs = _fetch_vectors(conn, ids, self._dim)
            new = _new_faiss_index(self._dim, self.factory)
            old_inner = faiss.downcast_index(self._index.index)
            new_inner = faiss.downcast_index(new.index)
            if isinstance(old_inner, faiss.IndexHNSW) and isinstance(new_inner, faiss.IndexHNSW):
                new_inner.hnsw.efConstruction = old_inner.hnsw.efConstruction
            if not new.is_trained:
                new.train(vecs)
            if len(ids):
                new.add_with_ids(vecs, ids)
            dropped = self._tombstones
            with self._rw.write():
                self._index = new
                self._tombstones = 0
                self._applied_seq = seq
                self._params_cache.clear()
            return dropped

    # ------------------------------------------------------------------ search

    def _params(self, k: int, value: int | None) -> Any:
        if self._kind == "flat":
            return None
        if self._kind == "ivf":
            key = ("ivf", value)
            p = self._params_cache.get(key)
            if p is None:
                nprobe = int(value or 1)
                if self._quantizer_hnsw:
                    p = faiss.SearchParametersIVF(nprobe=nprobe,
                                                  quantizer_params=faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe)))
                else:
                    p = faiss.SearchParametersIVF(nprobe=nprobe)
                self._params_cache[key] = p
            return p
        ef = max(int(value or 16), k)
        if self._tombstones:
            # IndexIDMap temporarily rewrites params.sel during a search: never share
            return faiss.SearchParametersHNSW(efSearch=ef, sel=faiss.IDSelectorRange(0, _MAX_ID))
        key = ("hnsw", ef)
        p = self._params_cache.get(key)
        if p is None:
            p = faiss.SearchParametersHNSW(efSearch=ef)
            self._params_cache[key] = p
        return p

    def _param_value(self) -> int | None:
        sp = self._info.get("search_params") or {}
        if self._kind == "ivf":
            return int(sp.get("nprobe", 1))
        if self._kind == "hnsw":
            return int(sp.get("efSearch", 16))
        return None

    def _search_locked(self, q: np.ndarray, k: int, value: int | None) -> tuple[np.ndarray, np.ndarray]:
        if len(q) < _SINGLE_THREAD_BELOW:
            # FAISS parallelises over queries: a parallel region for 1-3 queries buys
            # nothing and, on a busy machine, waits for a second core to be scheduled
            # (milliseconds). omp_set_num_threads only affects the calling thread.
            prev = faiss.omp_get_max_threads()
            if prev != 1:
                faiss.omp_set_num_threads(1)
                try:
                    return self._search_locked_omp(q, k, value)
                finally:
                    faiss.omp_set_num_threads(prev)
        return self._search_locked_omp(q, k, value)

    def _search_locked_omp(self, q: np.ndarray, k: int, value: int | None) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        D, I = index.search(q, k, params=self._params(k, value))
        if self._kind != "flat":
            need = min(k, int(index.ntotal) - self._tombstones)
            if need > 0:
                short = np.flatnonzero(I[:, need - 1] < 0)
                limit = faiss.extract_index_ivf(index).nlist if self._kind == "ivf" else max(4096, int(index.ntotal))
                cur = int(value or 1)
                while len(short) and cur < limit:
                    cur = min(limit, cur * 4)
                    D2, I2 = index.search(q[short], k, params=self._params(k, cur))
                    D[short], I[short] = D2, I2
                    short = short[I2[:, need - 1] < 0]
        return D, I

    def search(self, queries: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Nearest neighbours by cosine similarity.

        ``queries``: (n, dim) or (dim,) array (normalised here). Returns
        ``(scores, ids)``: (n, k) float32 cosine similarities, best first, and (n, k)
        int64 ids. When the index holds fewer than ``k`` items the rows are padded
        at the end with score ``-inf`` and id ``-1`` (FAISS convention)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self._check_open()
        q = self._prepare(queries, "queries")
        k = int(k)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        with self._rw.read():
            D, I = self._search_locked(q, k, self._param_value())
        missing = I < 0
        if missing.any():
            I[missing] = -1
            D[missing] = -np.inf
        return D, I

    def search_by_id(self, id: int, k: int = 10, *, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` (returns (1, k) arrays) for the stored vector of item
        ``id``; the item itself is left out of its results unless ``exclude_self``
        is False. Raises ``KeyError`` for an unknown id."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        v = self.vector(id)
        if v is None:
            raise KeyError(f"no item with id {id!r}")
        if not exclude_self:
            return self.search(v, k)
        D, I = self.search(v, int(k) + 1)
        own = I[0] == int(id)
        keep = ~own if own.any() else np.arange(k + 1) < k
        return D[:, keep][:, :k], I[:, keep][:, :k]

    # ------------------------------------------------------------------ metadata

    @staticmethod
    def _row_dict(row: tuple) -> dict:
        i, source, label, meta = row
        return {"id": int(i), "source": source, "label": label, "meta": json.loads(meta) if meta else {}}

    def get(self, id: int) -> dict | None:
        """{"id", "source", "label", "meta"} of an item, or None if absent."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not (0 <= int(id) <= _MAX_ID):
            return None
        self._check_open()
        with self._rconn_lock:
            row = self._rconn.execute("SELECT id, source, label, meta FROM items WHERE id=?", (int(id),)).fetchone()
        return self._row_dict(row) if row else None

    def get_many(self, ids: Any) -> list[dict | None]:
        """:meth:`get` for many ids (in order; None for absent ids and -1)."""
        self._check_open()
        ids_a = _as_id_array(ids)
        valid = np.unique(ids_a[ids_a >= 0])
        found: dict[int, dict] = {}
        with self._rconn_lock:
            for chunk in _chunks(valid):
                q = f"SELECT id, source, label, meta FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                for row in self._rconn.execute(q, chunk):
                    found[int(row[0])] = self._row_dict(row)
        return [found.get(int(i)) for i in ids_a.tolist()]

    def vector(self, id: int) -> np.ndarray | None:
        """The stored (L2-normalised, float32) vector of an item, or None."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not (0 <= int(id) <= _MAX_ID):
            return None
        self._check_open()
        with self._rconn_lock:
            row = self._rconn.execute("SELECT vector FROM items WHERE id=?", (int(id),)).fetchone()
        return np.frombuffer(row[0], dtype="<f4").astype(np.float32) if row else None

    def next_free_id(self) -> int:
        """The first id :meth:`add` allocates when given none: one past the largest id
        ever used (a client holding the id of a removed item never gets another item)."""
        self._check_open()
        with self._rconn_lock:
            return _first_free_id(self._rconn)

    def ids(self) -> np.ndarray:
        """All ids, ascending."""
        self._check_open()
        with self._rconn_lock:
            return np.array([r[0] for r in self._rconn.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def sample_ids(self, n: int, seed: int | None = None) -> np.ndarray:
        """Up to ``n`` distinct ids drawn uniformly at random (reproducible with ``seed``)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        all_ids = self.ids()
        rng = np.random.default_rng(seed)
        if n >= len(all_ids):
            return rng.permutation(all_ids)
        return rng.choice(all_ids, size=int(n), replace=False)

    # ------------------------------------------------------------------ persistence

    def checkpoint(self) -> Path:
        """Rewrite the snapshot of a bound index and prune the log (= ``save()``)."""
        if self._path is None:
            raise ValueError("checkpoint() needs an index bound to a folder; use save(path)")
        return self.save()

    def save(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
        """Write the index atomically and return the folder.

        * ``save()`` on a bound index: checkpoint: write ``index.faiss`` (temp +
          fsync + rename + dir fsync) with the last applied log sequence number,
          then ``index.json``, then prune the log entries the snapshot holds.
        * ``save(path)`` on an in-memory index: write the whole folder (which must
          not already hold an index unless ``overwrite``) and bind to it.
        * ``save(other)`` on a bound index: export a consistent copy; stays bound
          to its own folder.
        """
        self._check_writable()
        with self._wmutex:
            target = Path(path) if path is not None else self._path
            if target is None:
                raise ValueError("save() needs a path for an in-memory index")
            if self._path is not None and _same_path(target, self._path):
                self._checkpoint_locked()
                return self._path
            self._export_locked(target, overwrite=overwrite, bind=self._path is None)
            return target

    def _record_for_disk(self, seq: int, file_bytes: int | None) -> dict:
        rec = self.info
        rec["updated_at"] = _now_iso()
        rec["snapshot_seq"] = int(seq)
        rec["index_file_bytes"] = file_bytes
        return rec

    def _checkpoint_locked(self) -> None:
        assert self._path is not None
        folder = self._path
        conn = self._conn
        if self._mmapped:
            with self._conn_lock:
                if _last_seq(conn) <= self._applied_seq:
                    # snapshot on disk is current; just refresh the record
                    atomic_write_json(folder / RECORD_FILE, self._record_for_disk(self._applied_seq, (folder / INDEX_FILE).stat().st_size))
                    return
            self._materialize()
        with self._conn_lock, _transaction(conn, "DEFERRED"):
            plan = self._plan(conn)
        self._apply_plan(plan)
        seq = self._applied_seq
        dest = folder / INDEX_FILE
        tmp = _write_snapshot_tmp(self._index, dest, seq)  # searches continue meanwhile
        try:
            with self._conn_lock, _transaction(conn):
                if _kv_get(conn, "snapshot_seq") > seq:
                    log.info("index %s: a newer snapshot was saved by another writer; keeping it", folder)
                    return
                os.replace(tmp, dest)
                fsync_dir(folder)
                _kv_set(conn, "snapshot_seq", seq)
                conn.execute("DELETE FROM oplog WHERE seq <= ?", (seq,))
                _kv_set(conn, "pruned_through", max(seq, _kv_get(conn, "pruned_through")))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        atomic_write_json(folder / RECORD_FILE, self._record_for_disk(seq, dest.stat().st_size))
        with self._conn_lock, contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _export_locked(self, target: Path, *, overwrite: bool, bind: bool) -> None:
        """Write a complete folder at ``target`` (built in a temp dir, then renamed
        into place)."""
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"{target} is not empty (pass overwrite=True to replace the index there)")
        self._materialize()
        if self._logging:
            with self._conn_lock, _transaction(self._conn, "DEFERRED"):
                plan = self._plan(self._conn)
            self._apply_plan(plan)
        seq = self._applied_seq
        tmpdir = temp_dir_beside(target)
        try:
            db_path = tmpdir / METADATA_FILE
            dst = sqlite3.connect(str(db_path), isolation_level=None)
            try:
                with self._conn_lock:
                    self._conn.backup(dst)
                dst.execute("PRAGMA journal_mode=WAL")
                with _transaction(dst):
                    _kv_set(dst, "snapshot_seq", seq)
                    dst.execute("DELETE FROM oplog WHERE seq <= ?", (seq,))
                    _kv_set(dst, "pruned_through", max(seq, _kv_get(dst, "pruned_through")))
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                dst.close()
            fsync_file(db_path)
            snap = _write_snapshot_tmp(self._index, tmpdir / INDEX_FILE, seq)
            os.replace(snap, tmpdir / INDEX_FILE)
            atomic_write_json(tmpdir / RECORD_FILE, self._record_for_disk(seq, (tmpdir / INDEX_FILE).stat().st_size))
            fsync_dir(tmpdir)
            lock = _install_as_writer(tmpdir, target, bind=bind)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        if bind:
            self._lock = lock
            self._folder_id = _folder_id(target)
            conn = _connect(target / METADATA_FILE, read_only=False, durable=self._durable)
            rconn = _connect(target / METADATA_FILE, read_only=False, durable=self._durable)
            with self._conn_lock:
                old = self._conn
                self._conn, self._rconn = conn, rconn
                self._rconn_lock = threading.Lock()
                self._path = target
                self._logging = True
            old.close()

    def close(self) -> None:
        """Close the SQLite connections and drop the FAISS index. Does not save
        (durable changes are already on disk; call save() to checkpoint)."""
        if self._closed:
            return
        with self._wmutex:
            self._closed = True
            with self._rw.write():
                for c in {id(self._conn): self._conn, id(self._rconn): self._rconn}.values():
                    with contextlib.suppress(Exception):
                        c.close()
                self._index = None
            if self._lock is not None:  # after the connections: no write can follow the release
                self._lock.release()
                self._lock = None

    # ------------------------------------------------------------------ load

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, expected_dim: int | None = None,
             expected_artifact_id: str | None = None, read_only: bool = False, durable: bool = True,
             verify: bool | None = None) -> "EmbeddingIndex":
        """Open an index folder.

        ``mmap``: memory-map the FAISS data where the type allows it (flat codes,
        IVF lists); a writable instance copies it into memory before its first
        change. ``expected_dim`` / ``expected_artifact_id``: raise
        :class:`IndexMismatchError` if the index was built for another encoder.
        ``read_only``: no writes at all (add/remove/save raise PermissionError).
        ``durable``: fsync every add/remove (SQLite synchronous=FULL; False ->
        NORMAL: survives a process crash, not a power loss). ``verify``: check the
        snapshot's CRC-32 (None: when the file is at most 2 GiB).

        Log entries newer than the snapshot are replayed. Raises
        :class:`IndexLoadError` (naming the file) for missing, truncated, foreign or
        corrupt files."""
        folder = Path(path)
        if not folder.exists():
            raise IndexLoadError(f"{folder}: index folder does not exist")
        if not folder.is_dir():
            raise IndexLoadError(f"{folder}: not an index folder (expected a directory with {INDEX_FILE}, {RECORD_FILE}, {METADATA_FILE})")
        # The lock first: what is read below must not be swapped by a rebuild meanwhile.
        lock = None if read_only else _lock_for_writing(folder, "open it for writing")
        try:
            self = cls._open_folder(folder, mmap=mmap, expected_dim=expected_dim,
                                    expected_artifact_id=expected_artifact_id, read_only=read_only,
                                    durable=durable, verify=verify, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return self

    @classmethod
    def _open_folder(cls, folder: Path, *, mmap: bool, expected_dim: int | None, expected_artifact_id: str | None,
                     read_only: bool, durable: bool, verify: bool | None, lock: WriterLock | None) -> "EmbeddingIndex":
        rec = _read_record(folder / RECORD_FILE)
        dim = int(rec["dim"])
        if expected_dim is not None and int(expected_dim) != dim:
            raise IndexMismatchError(
                f"dimension mismatch: the encoder produces {int(expected_dim)}-dimensional embeddings but the index at "
                f"{folder} holds {dim}-dimensional vectors (expected {int(expected_dim)}, found {dim})")
        if expected_artifact_id is not None:
            art = rec.get("artifact")
            found = art.get("id") if isinstance(art, dict) else None
            if found != expected_artifact_id:
                raise IndexMismatchError(
                    f"artifact mismatch: the index at {folder} was built with encoder artifact "
                    f"{found!r} but the encoder in use is {expected_artifact_id!r} (expected {expected_artifact_id!r}, found {found!r})")
        index, seq, mmapped = cls._read_snapshot(folder, mmap=mmap, verify=verify)
        fpath = folder / INDEX_FILE
        if index.d != dim:
            raise IndexLoadError(f"{fpath}: holds {index.d}-dimensional vectors but {RECORD_FILE} says dim {dim}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexLoadError(f"{fpath}: metric type {index.metric_type} is not inner product")
        if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
            raise IndexLoadError(f"{fpath}: a {type(index).__name__} without an id map (not written by infomax)")
        db = folder / METADATA_FILE
        if not db.is_file():
            raise IndexLoadError(f"{db}: missing (the index folder has no metadata store)")
        conns: list[sqlite3.Connection] = []
        try:
            with open(db, "rb") as f:
                header = f.read(16)
            if header != b"SQLite format 3\x00":
                raise IndexLoadError(f"{db}: not an SQLite database (file starts with {header[:16]!r})")
            conn = _connect(db, read_only=read_only, durable=durable)
            conns.append(conn)
            rconn = _connect(db, read_only=read_only, durable=durable)
            conns.append(rconn)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"items", "oplog", "kv"} - tables
            if missing:
                raise IndexLoadError(f"{db}: not an infomax metadata store (missing tables: {', '.join(sorted(missing))})")
            db_dim = _kv_get(conn, "dim", dim)
            if db_dim != dim:
                raise IndexLoadError(f"{db}: dim {db_dim} does not match {RECORD_FILE} ({dim})")
            if _kv_get(conn, "schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
                raise IndexLoadError(f"{db}: written by a newer infomax (schema version {_kv_get(conn, 'schema_version')})")
        except BaseException as e:
            for c in conns:
                c.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise IndexLoadError(f"{db}: corrupt or unreadable SQLite database: {e}") from None
            raise
        if not read_only:
            _remove_old_temps(folder)
        self = cls(index=index, info=rec, path=folder, conn=conn, read_conn=rconn, read_only=read_only,
                   durable=durable, mmapped=mmapped, applied_seq=seq, logging_enabled=True)
        self._lock = lock
        try:
            self._recover()
        except BaseException:
            self.close()
            raise
        return self

    def _recover(self) -> None:
        """Replay log entries newer than the snapshot; reconcile fully if the
        counts still disagree."""
        with self._wmutex:
            conn, lock = (self._rconn, self._rconn_lock) if self._read_only else (self._conn, self._conn_lock)
            try:
                if self._mmapped:
                    with lock:
                        behind = _last_seq(conn) > self._applied_seq
                    if behind:
                        self._materialize()
                with lock, _transaction(conn, "DEFERRED"):
                    plan = self._plan(conn)
                    stored = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
                self._apply_plan(plan)
                if plan is not None:
                    log.info("index %s: replayed log after snapshot %d (%d ids re-synchronised)",
                             self._path, self._applied_seq, len(plan.remove) + len(plan.add_ids))
                if stored != len(self):
                    self._materialize()
                    with lock, _transaction(conn, "DEFERRED"):
                        plan = self._plan(conn, force_full=True)
                    self._apply_plan(plan)
                    if int(len(self)) != stored:
                        raise IndexLoadError(f"{self._path / INDEX_FILE}: holds {len(self)} items but {METADATA_FILE} holds {stored} and they cannot be reconciled")
            except sqlite3.DatabaseError as e:
                raise IndexLoadError(f"{self._path / METADATA_FILE}: corrupt or unreadable: {e}") from None

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, vectors: Any, *, ids: Any = None, metadata: list[dict] | None = None, factory: str | None = None,
              memory_budget: int | str = "4GB", recall_target: float = 0.95, artifact: dict | None = None,
              path: str | os.PathLike | None = None, seed: int = 0, overwrite: bool = False,
              tune_queries: int = 1000, k: int = 10, durable: bool = True,
              prepare: Any = None) -> "EmbeddingIndex":
        """Build an index from ``vectors`` (n, dim).

        ``factory`` None -> :func:`choose_factory` (n, dim, ``memory_budget``).
        IVF indexes are trained on a random sample (at most 50 vectors per list,
        and >= 10k when PQ codebooks are trained). Up to ``tune_queries`` vectors
        held out of the training sample (and added to the index only after the
        tuning, so they are new to it) are used as queries against exact search
        to tune ``nprobe`` / ``efSearch``: the smallest value whose recall@10 (see
        ``RECALL_DEFINITION``) reaches ``recall_target`` is kept; if none does (PQ
        codes bound the recall), the best is kept, ``recall_target_met`` is False
        and a warning is issued. Recall and latency go into the build record.
        With ``path`` the folder is written in a temp dir and renamed into place
        (an existing non-empty folder needs ``overwrite``, and is refused with
        :class:`IndexLockedError` while a writer has it open); ``prepare(tmp)``,
        if given, is called with the temp folder once the index files are in it,
        before the rename (to add files that must be there when it appears, e.g.
        the image store). The built index stays bound to ``path`` as its writer."""
        t_start = time.perf_counter()
        if not 0.0 < float(recall_target) <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {recall_target!r}")
        cls._check_artifact(artifact)
        try:
            raw = np.asarray(vectors)
        except Exception as e:
            raise ValueError(f"vectors must be a numeric array of shape (n, dim): {e}") from None
        if raw.ndim != 2 or raw.shape[1] == 0:
            raise ValueError(f"vectors must have shape (n, dim), got shape {raw.shape}")
        n, dim = raw.shape
        budget = parse_memory(memory_budget)
        if factory is None:
            factory = choose_factory(n, dim, budget)
        target = Path(path) if path is not None else None
        if target is not None:
            if target.exists() and not target.is_dir():
                raise FileExistsError(f"{target} exists and is not a directory")
            if target.is_dir() and any(target.iterdir()) and not overwrite:
                raise FileExistsError(f"{target} is not empty (pass overwrite=True to replace the index there)")
        tmpdir = temp_dir_beside(target) if target is not None else None
        try:
            self = cls._new(int(dim), factory, artifact, durable, tmpdir / METADATA_FILE if tmpdir else ":memory:")
            try:
                self._build_into(raw, ids, metadata, budget, float(recall_target), int(seed), int(tune_queries), int(k), t_start)
                if tmpdir is not None:
                    self._finish_build(tmpdir, target, prepare)
            except BaseException:
                self.close()
                raise
        except BaseException:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return self

    def _finish_build(self, tmpdir: Path, target: Path, prepare: Any = None) -> None:
        """Complete the folder being built in ``tmpdir``, move it to ``target`` and bind."""
        conn = self._conn
        with _transaction(conn):
            _kv_set(conn, "snapshot_seq", 0)
            _kv_set(conn, "pruned_through", 0)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        fsync_file(tmpdir / METADATA_FILE)
        snap = _write_snapshot_tmp(self._index, tmpdir / INDEX_FILE, 0)
        os.replace(snap, tmpdir / INDEX_FILE)
        atomic_write_json(tmpdir / RECORD_FILE, self._record_for_disk(0, (tmpdir / INDEX_FILE).stat().st_size))
        if prepare is not None:
            prepare(tmpdir)  # e.g. the pictures: in place before the folder can be opened
        fsync_dir(tmpdir)
        self._lock = _install_as_writer(tmpdir, target, bind=True)
        self._conn = _connect(target / METADATA_FILE, read_only=False, durable=self._durable)
        self._rconn = _connect(target / METADATA_FILE, read_only=False, durable=self._durable)
        self._rconn_lock = threading.Lock()
        self._path = target
        self._folder_id = _folder_id(target)
        self._logging = True

    def _build_into(self, raw: np.ndarray, ids: Any, metadata: Any, budget: int, recall_target: float, seed: int,
                    tune_queries: int, k: int, t_start: float) -> None:
        n, dim = raw.shape
        factory = self.factory
        x = self._prepare(raw, "vectors")
        if ids is None:
            ids_a = np.arange(n, dtype=np.int64)
        else:
            ids_a = _as_id_array(ids)
            if len(ids_a) != n:
                raise ValueError(f"got {len(ids_a)} ids for {n} vectors")
            if n and int(ids_a.min()) < 0:
                raise ValueError(f"ids must be non-negative, got {ids_a[ids_a < 0][:10].tolist()}")
            uniq, counts = np.unique(ids_a, return_counts=True)
            if len(uniq) != n:
                raise ValueError(f"duplicate ids: {uniq[counts > 1][:10].tolist()}")
        rows = self._parse_metadata(metadata, ids_a, n)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        n_query = min(tune_queries, n // 10 if n >= 1000 else n)
        query_pos = perm[:n_query]
        train_info: dict[str, Any] = {}
        t0 = time.perf_counter()
        if not self._index.is_trained:
            ivf = faiss.try_extract_index_ivf(self._index)
            want = 50 * (ivf.nlist if ivf is not None else 256)
            if re.search(r"PQ\d|SQ|LSH|RQ|LSQ", factory):
                want = max(want, 10_000)
            pool = perm[n_query:] if n - n_query >= want else perm
            train_pos = np.sort(pool[:want])
            if ivf is not None:
                ivf.cp.seed = int(seed) + 1234
                if n < ivf.nlist:
                    raise ValueError(f"{factory!r} needs at least {ivf.nlist} vectors to train, got {n}")
            try:
                with self._rw.write():
                    self._index.train(x[train_pos])
            except RuntimeError as e:
                raise ValueError(f"cannot train {factory!r} on {len(train_pos)} vectors: {str(e).strip().splitlines()[-1]}") from None
            train_info = {"train_size": int(len(train_pos))}
        t_train = time.perf_counter() - t0
        # The tuning queries are truly held out: they enter the index only after the search
        # parameter is chosen, so the recall stored is that of new queries, not of vectors
        # finding themselves' neighbours in a graph they are part of (which reads ~2 points high
        # for HNSW). Tiny builds (every vector a query) tune on self-queries instead.
        held_out = 0 < n_query < n
        if held_out:
            is_query = np.zeros(n, dtype=bool)
            is_query[query_pos] = True
            base_pos = np.flatnonzero(~is_query)
        else:
            base_pos = np.arange(n)
        t0 = time.perf_counter()
        self._add_positions(x, ids_a, rows, base_pos)
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        tuning = self._tune(x[base_pos], ids_a[base_pos], x[query_pos], ids_a[query_pos], recall_target, k)
        tuning["tuning_queries_held_out"] = held_out
        t_tune = time.perf_counter() - t0
        if held_out:
            t0 = time.perf_counter()
            self._add_positions(x, ids_a, rows, np.sort(query_pos))
            t_add += time.perf_counter() - t0
        self._info.update(tuning)
        self._info["memory_budget_bytes"] = budget
        self._info["build"] = {
            "seed": int(seed),
            **train_info,
            "train_seconds": round(t_train, 3),
            "add_seconds": round(t_add, 3),
            "tune_seconds": round(t_tune, 3),
            "build_seconds": round(time.perf_counter() - t_start, 3),
            "estimated_memory_bytes": _safe_estimate(factory, n, dim),
        }

    def _add_positions(self, x: np.ndarray, ids: np.ndarray, rows: list, positions: np.ndarray, step: int = 65536) -> None:
        """Adds the build's vectors at ``positions`` (in chunks, unlogged: the build is one snapshot)."""
        for s in range(0, len(positions), step):
            pos = positions[s : s + step]
            self._add_locked(x[pos], ids[pos], [rows[i] for i in pos.tolist()], log_op=False)

    def _tune(self, x: np.ndarray, ids: np.ndarray, q: np.ndarray, qids: np.ndarray, target: float, k: int) -> dict:
        """Chooses the search parameter on the queries ``q`` (ids ``qids``) against exact search over
        ``x`` (ids ``ids``): what the index holds now. A query found among the results is dropped
        from them (self-queries of tiny builds)."""
        n = len(x)
        out: dict[str, Any] = {"recall_target": target, "tuning_queries": int(len(q))}
        kk = min(k, n - 1)
        if len(q) == 0 or kk < 1:
            out.update(recall_at_10=1.0 if self._kind == "flat" else None, recall_target_met=None, search_params={})
            return out
        order = np.argsort(ids)
        sorted_ids = ids[order]

        def drop_self(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            own = I == qids[:, None]
            none = ~own.any(axis=1)
            own[none, -1] = True
            keep = ~own
            return D[keep].reshape(len(I), -1)[:, :kk], I[keep].reshape(len(I), -1)[:, :kk]

        gD, _ = faiss.knn(q, x, kk + 1, metric=faiss.METRIC_INNER_PRODUCT)
        gI = ids[_]
        gD, gI = drop_self(gD, gI)
        kth = gD[:, -1]

        def recall(I: np.ndarray) -> float:
            valid = I >= 0
            pos = order[np.clip(np.searchsorted(sorted_ids, np.where(valid, I, 0)), 0, n - 1)]
            exact = np.einsum("qd,qkd->qk", q, x[pos])
            hit = valid & (exact >= kth[:, None] - 1e-5)
            return float(hit.sum() / (len(I) * kk))

        if self._kind == "flat":
            chosen, best = None, 1.0
            out["search_params"] = {}
        else:
            if self._kind == "ivf":
                nlist = faiss.extract_index_ivf(self._index).nlist
                cands = sorted({min(nlist, 2**i) for i in range(0, 20) if 2 ** (i - 1) < nlist})
                name = "nprobe"
            else:
                cands = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
                name = "efSearch"
            chosen, best, best_val = None, -1.0, None
            for c in cands:
                with self._rw.read():
                    D, I = self._search_locked(q, kk + 1, c)
                r = recall(drop_self(D, I)[1])
                if r > best + 1e-9:
                    best, best_val = r, c
                if r >= target:
                    chosen, best = c, r
                    break
            if chosen is None:
                chosen = best_val
                warnings.warn(f"{self.factory}: recall@10 target {target} not reached (best {best:.4f} at {name}={chosen})",
                              RuntimeWarning, stacklevel=4)
            out["search_params"] = {name: int(chosen)}
        self._info["search_params"] = out["search_params"]
        self._params_cache.clear()
        out["recall_at_10"] = round(best, 4)
        out["recall_target_met"] = bool(best >= target)
        # latency: single queries through the public API (up to 200 or ~2 s), then one batch
        t0 = time.perf_counter()
        nq = 0
        while nq < min(200, len(q)) and (nq < 5 or time.perf_counter() - t0 < 2.0):
            self.search(q[nq : nq + 1], k)
            nq += 1
        out["latency_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / nq, 4)
        t0 = time.perf_counter()
        self.search(q, k)
        out["batch_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / len(q), 4)
        return out


# --------------------------------------------------------------------------- misc helpers


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _safe_estimate(factory: str, n: int, dim: int) -> int | None:
    try:
        return estimate_memory(factory, n, dim)
    except ValueError:
        return None


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _remove_old_temps(folder: Path, min_age_s: float = 3600.0) -> None:
    """Delete snapshot/record temp files left by writers that crashed before their
    rename (only old ones: a live writer may be about to rename a fresh one)."""
    now = time.time()
    for name in (INDEX_FILE, RECORD_FILE):
        for p in folder.glob(f".{name}.tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > min_age_s:
                    p.unlink()


def _lock_for_writing(folder: Path, doing: str, fix: str | None = None) -> WriterLock:
    """The folder's writer lock, or a one-line refusal naming the holder (or the permission missing)."""
    try:
        return WriterLock.acquire(folder, doing=doing, **({"fix": fix} if fix else {}))
    except IndexLockedError:
        raise
    except PermissionError as e:
        raise PermissionError(f"{folder}: cannot {doing}: no permission to write there ({e.strerror}); open it "
                              f"read-only (read_only=True; `infomax serve --read-only`) or fix the folder's "
                              f"permissions") from None


def _install_as_writer(tmpdir: Path, target: Path, *, bind: bool) -> WriterLock | None:
    """Move the completed folder ``tmpdir`` to ``target``, refused while a writer has ``target`` open.

    The old folder's lock is held across the swap, so no writer can open it in between; with
    ``bind`` the new folder's lock is taken on ``tmpdir`` before the rename (it moves with the
    folder) and returned, so no other writer can open the new folder before its builder does."""
    new_lock = WriterLock.acquire(tmpdir, doing="bind it") if bind else None
    old_lock = None
    try:
        if target.is_dir():
            old_lock = _lock_for_writing(target, "replace it", REPLACE_FIX)
        _install_dir(tmpdir, target)
    except BaseException:
        if new_lock is not None:
            new_lock.release()
        raise
    finally:
        if old_lock is not None:
            old_lock.release()
    return new_lock


def _folder_id(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder: a rebuild renames a new folder into place, which changes it."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _install_dir(tmpdir: Path, target: Path) -> None:
    """Move a completed folder into place; an existing target is swapped out and
    deleted (not atomic as a whole, but at no moment is a half-written folder at
    ``target``)."""
    if target.exists():
        old = temp_dir_beside(target)
        os.rmdir(old)
        os.replace(target, old)
        os.replace(tmpdir, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmpdir, target)
        fsync_dir(target.parent)
