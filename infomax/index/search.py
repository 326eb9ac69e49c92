"""Searching: FAISS's search with the tuned parameter, widened for rows that come back short,
and the padding convention (-1 / -inf); with a metadata filter, ``filtered.py``'s paths."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from infomax.index.faiss_ops import untyped_faiss as _faiss
from infomax.index.filtered import FilteredSearching
from infomax.index.filters import Filter, as_filter
from infomax.index.inputs import MAX_ID
from infomax.index.matches import Match

_SINGLE_THREAD_BELOW = 4  # searches of fewer queries run FAISS on one OpenMP thread


class Searching(FilteredSearching):
    """EmbeddingIndex's searches (a mixin: ``_index``, ``_kind``, ``_rw`` and the rest of the state it
    reads are set by ``EmbeddingIndex.__init__``)."""

    def _params(self, k: int, value: int | None) -> Any:
        if self._kind == "flat":
            return None
        if self._kind == "ivf":
            key = ("ivf", value)
            p = self._params_cache.get(key)
            if p is None:
                nprobe = int(value or 1)
                if self._quantizer_hnsw:
                    p = _faiss.SearchParametersIVF(
                        nprobe=nprobe, quantizer_params=_faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
                    )
                else:
                    p = _faiss.SearchParametersIVF(nprobe=nprobe)
                self._params_cache[key] = p
            return p
        ef = max(int(value or 16), k)
        if self._tombstones:
            # IndexIDMap temporarily rewrites params.sel during a search: never share
            return _faiss.SearchParametersHNSW(efSearch=ef, sel=faiss.IDSelectorRange(0, MAX_ID))
        key = ("hnsw", ef)
        p = self._params_cache.get(key)
        if p is None:
            p = _faiss.SearchParametersHNSW(efSearch=ef)
            self._params_cache[key] = p
        return p

    def _param_value(self) -> int | None:
        sp = self._info.get("search_params") or {}
        if self._kind == "ivf":
            return int(sp.get("nprobe", 1))
        if self._kind == "hnsw":
            return int(sp.get("efSearch", 16))
        return None

    def _search_locked(
        self, q: np.ndarray, k: int, value: int | None, match: Match | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if len(q) < _SINGLE_THREAD_BELOW:
            # FAISS parallelises over queries: a parallel region for 1-3 queries buys
            # nothing and, on a busy machine, waits for a second core to be scheduled
            # (milliseconds). omp_set_num_threads only affects the calling thread.
            prev = faiss.omp_get_max_threads()
            if prev != 1:
                faiss.omp_set_num_threads(1)
                try:
                    return self._search_locked_omp(q, k, value, match)
                finally:
                    faiss.omp_set_num_threads(prev)
        return self._search_locked_omp(q, k, value, match)

    def _search_locked_omp(self, q: np.ndarray, k: int, value: int | None, match: Match | None) -> tuple[np.ndarray, np.ndarray]:
        if match is not None:
            return self._filtered_locked(q, k, match)
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

    def search(self, queries: Any, k: int = 10, *, filter: Filter | dict | str | None = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
        """Nearest neighbours by cosine similarity.

        ``queries``: (n, dim) or (dim,) array (normalised here). Returns
        ``(scores, ids)``: (n, k) float32 cosine similarities, best first, and (n, k)
        int64 ids. When the index holds fewer than ``k`` items the rows are padded
        at the end with score ``-inf`` and id ``-1`` (FAISS convention).

        ``filter``: only items whose metadata it matches (a dict such as ``{"label": {"in": [3,
        5]}, "meta.camera": "x100"}``, its JSON text, or a parsed ``Filter``; syntax in
        ``infomax.index.filters``); ``ValueError`` naming the problem for a bad one. It runs
        inside the FAISS search (an id selector): each row holds ``min(k, m)`` real ids when
        ``m`` items match. How each index type does it (exact or exhaustive when at most
        50,000 items match, efSearch / nprobe raised by n / m otherwise):
        ``infomax.index.filtered``."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        flt = as_filter(filter)
        self._check_open()
        q = self._prepare(queries, "queries")
        k = int(k)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        match = self._match(flt) if flt is not None else None
        with self._rw.read():
            D, I = self._search_locked(q, k, self._param_value(), match)
        missing = I < 0
        if missing.any():
            I[missing] = -1
            D[missing] = -np.inf
        return D, I

    def search_by_id(
        self, id: int, k: int = 10, *, exclude_self: bool = True, filter: Filter | dict | str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
        """Like :meth:`search` (returns (1, k) arrays) for the stored vector of item
        ``id``; the item itself is left out of its results unless ``exclude_self``
        is False (it need not match ``filter``). Raises ``KeyError`` for an unknown id."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        flt = as_filter(filter)
        v = self.vector(id)
        if v is None:
            raise KeyError(f"no item with id {id!r}")
        if not exclude_self:
            return self.search(v, k, filter=flt)
        D, I = self.search(v, int(k) + 1, filter=flt)
        own = I[0] == int(id)
        keep = ~own if own.any() else np.arange(k + 1) < k
        return D[:, keep][:, :k], I[:, keep][:, :k]
