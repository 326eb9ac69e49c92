"""FAISS structures as the index uses them: creating one from a factory string, what kind it is
(which decides how ids and removals work), and reading the ids it holds."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from infomax.errors import SettingError

TOMBSTONE = -2  # id-map value of a removed HNSW entry (never a valid id)
# faiss untyped: its python wrappers take arguments (keywords, arrays) faiss's type hints do not know
untyped_faiss: Any = faiss


def index_kind(index: Any) -> str:
    """'ivf' (native ids), 'hnsw' (IDMap2 over a graph: tombstones) or 'flat'
    (IDMap2 over anything supporting remove_ids)."""
    if faiss.try_extract_index_ivf(index) is not None and not isinstance(index, faiss.IndexIDMap):
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def new_faiss_index(dim: int, factory: str) -> Any:
    spec = factory.strip()
    for prefix in ("IDMap2,", "IDMap,"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
    try:
        base = faiss.index_factory(int(dim), spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise SettingError(f"invalid FAISS factory string {factory!r}: {msg}") from None
    found = faiss.try_extract_index_ivf(base)
    if found is not None:
        ivf = faiss.downcast_index(found)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # slow (annealing) and unused: we never search in polysemous mode
        return base
    return faiss.IndexIDMap2(base)


def id_map_view(index: Any) -> np.ndarray:
    """Writable numpy view on an IndexIDMap's id_map (valid until the next add)."""
    n = index.id_map.size()
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return faiss.rev_swig_ptr(index.id_map.data(), n)


def faiss_ids(index: Any, kind: str) -> np.ndarray:
    """All live ids stored in the FAISS index."""
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        invlists: Any = ivf.invlists  # an ArrayInvertedLists: faiss's stubs type it as the base class or None
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


def count_tombstones(index: Any, kind: str) -> int:
    if kind != "hnsw":
        return 0
    return int(np.count_nonzero(id_map_view(index) < 0))
