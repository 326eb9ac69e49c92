"""Filtered search: the k nearest items among those a metadata filter (``filters.py``) matches.

The filter runs inside the FAISS search, as an id selector (``faiss.IDSelectorBitmap`` or
``IDSelectorBatch`` of the matching ids in ``SearchParameters(sel=...)``), not by dropping results
afterwards: every row holds ``min(k, m)`` real ids when ``m`` items match (fewer only when fewer
match), best first, padded with id -1 / score -inf. Removed items never come back: the ids come
from the metadata store, where a removal deletes the row, and HNSW tombstones (id -2) are never in
a selector.

The path each index type takes (faiss-cpu 1.15.1; ``m`` items match out of ``n``, tuned
``nprobe`` / ``efSearch`` from ``index.json``):

* Flat (``IDMap2`` over ``IndexFlat``): FAISS search with the selector; exhaustive, exact.
* HNSW: ``m <= EXACT_MATCHES`` (50,000: the size below which ``choose_factory`` builds a Flat
  index, brute force being fast enough there): exact, the matching vectors read back from the
  graph's storage and scored in numpy, or, above 4,096 of them, the graph's flat storage searched
  with a bitmap of their positions (no copy). Otherwise a graph walk with the selector and ``efSearch = max(ef, k) * n / m``: the walk
  keeps only matching nodes, so about ``ef * m / n`` of its candidates count; rows that come back
  short are searched again with x4 and x16, then exactly. The walk keeps the tuned recall for a
  filter independent of the query (0.98 at 50% in bench/filtered_search.py), not for one
  anti-correlated with it (the items of other clusters than the query's: 0.16-0.37 measured on
  structureless synthetic clusters), which is why it waits for filters this broad.
* IVF (``IVF{n},Flat``, ``,PQ``, HNSW quantizer): ``m <= EXACT_MATCHES``: every list (``nprobe =
  nlist``) with the selector, exhaustive (exact for IVF-Flat, PQ scores for IVF-PQ, as unfiltered);
  otherwise ``nprobe = nprobe * n / m`` (at most ``nlist``), widened x4 up to ``nlist`` for short rows.
* Types whose search refuses a selector (``IndexPQ``, ``IndexNSG`` built with ``--factory``):
  exact over the vectors reconstructed from the index (or, where it cannot, the stored ones).

The matching ids of a filter are resolved once per state of the index: the last
``matches.CACHE_ENTRIES`` filters are cached until the next add or remove (``_generation``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from infomax.index.faiss_ops import id_map_view
from infomax.index.faiss_ops import untyped_faiss as _faiss
from infomax.index.filters import Filter, as_filter, distinct_labels, matching_ids
from infomax.index.matches import Match
from infomax.index.state import IndexState
from infomax.index.store import fetch_vectors

# HNSW and IVF search exactly (exhaustively) when at most this many items match: choose_factory's
# limit for a Flat index (below it brute force is fast enough to need no approximate index)
EXACT_MATCHES = 50_000
_EXACT_CHUNK = 4096  # vectors scored at once on the exact path (bounds its memory)
_HNSW_WIDENINGS = 2  # x4 each, before the short rows go exact


class FilteredSearching(IndexState):
    """EmbeddingIndex's filtered searches (a mixin of ``Searching``: the state it reads is set by
    ``EmbeddingIndex.__init__``; the callers hold ``_rw.read()`` around ``_filtered_locked``)."""

    # ----------------------------------------------------------------- the matching ids

    def matching_ids(self, filter: Filter | dict | str) -> np.ndarray:  # noqa: A002 - the API's word
        """Sorted int64 ids of the items ``filter`` matches (see ``infomax.index.filters``);
        ``ValueError`` naming the problem for a bad filter."""
        self._check_open()
        flt = as_filter(filter)
        if flt is None:
            with self._rconn_lock:
                return np.array([r[0] for r in self._rconn.execute("SELECT id FROM items ORDER BY id")], np.int64)
        return self._match(flt).ids

    def labels(self, limit: int = 1000) -> list[int]:
        """The distinct labels the items carry, ascending (at most ``limit``): what a label
        filter can select."""
        self._check_open()
        with self._rconn_lock:
            return distinct_labels(self._rconn, limit)

    def _match(self, flt: Filter) -> Match:
        # The generation is read before the store: FAISS changes after its store (add, remove,
        # refresh), so the ids resolved now hold every item FAISS has at this generation.
        generation = self._generation
        key = flt.key
        found = self._matches.get(key, generation)
        if found is not None:
            return found
        with self._rconn_lock:
            ids = matching_ids(self._rconn, flt)
        match = Match(ids, generation)
        self._matches.put(key, match)
        return match

    # ----------------------------------------------------------------- search (read lock held)

    def _filtered_locked(self, q: np.ndarray, k: int, match: Match) -> tuple[np.ndarray, np.ndarray]:
        m = len(match.ids)
        if m == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        tuned = self._param_value()
        if self._no_selectors or (self._kind == "hnsw" and m <= EXACT_MATCHES):
            return self._exact_locked(q, k, match)
        index = self._index
        fraction = m / max(1, len(self))
        if self._kind == "ivf":
            limit = int(faiss.extract_index_ivf(index).nlist)
            start = limit if m <= EXACT_MATCHES else min(limit, math.ceil(int(tuned or 1) / fraction))
            widenings = math.inf
        elif self._kind == "hnsw":
            limit = max(4096, int(index.ntotal))
            start = min(limit, math.ceil(max(int(tuned or 16), k) / fraction))
            widenings = _HNSW_WIDENINGS
        else:
            limit = start = 0
            widenings = 0
        sel = match.selector()
        try:
            D, I = index.search(q, k, params=self._selector_params(start, sel))
        except RuntimeError as e:
            if "params" not in str(e):  # "invalid search params", "search params not supported"
                raise
            self._no_selectors = True  # e.g. IndexPQ, IndexNSG: their search takes no parameters
            return self._exact_locked(q, k, match)
        need = min(k, m)
        short = np.flatnonzero(I[:, need - 1] < 0)
        cur, done = start, 0
        while len(short) and cur < limit and done < widenings:
            cur, done = min(limit, cur * 4), done + 1
            D2, I2 = index.search(q[short], k, params=self._selector_params(cur, sel))
            D[short], I[short] = D2, I2
            short = short[I2[:, need - 1] < 0]
        if len(short) and self._kind == "hnsw":
            D[short], I[short] = self._exact_locked(q[short], k, match)
        return D, I

    def _selector_params(self, value: int, sel: Any) -> Any:
        """New parameters per search: an IndexIDMap rewrites ``params.sel`` while it searches."""
        if self._kind == "ivf":
            if self._quantizer_hnsw:
                quantizer = _faiss.SearchParametersHNSW(efSearch=max(64, 2 * value))
                return _faiss.SearchParametersIVF(nprobe=value, sel=sel, quantizer_params=quantizer)
            return _faiss.SearchParametersIVF(nprobe=value, sel=sel)
        if self._kind == "hnsw":
            return _faiss.SearchParametersHNSW(efSearch=value, sel=sel)
        return _faiss.SearchParameters(sel=sel)

    def _exact_locked(self, q: np.ndarray, k: int, match: Match) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the matching items: a graph's flat storage searched with a bitmap of
        their positions; else their vectors as the index holds them (read back at their id-map
        positions), else the store's."""
        index = self._index
        if isinstance(index, faiss.IndexIDMap):
            id_map = id_map_view(index)
            inner = faiss.downcast_index(index.index)
            storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else None
            if isinstance(storage, faiss.IndexFlat) and len(match.ids) > _EXACT_CHUNK:
                # many: no copy of the vectors, FAISS scores them in place (it tests all n bits;
                # for a few thousand, copying them out is quicker: 0.14 against 0.5 ms for 1,000
                # of 100,000 measured)
                sel = match.position_selector(id_map, self._generation)
                D, P = storage.search(q, k, params=_faiss.SearchParameters(sel=sel))
                return D, np.where(P >= 0, id_map[np.maximum(P, 0)], -1)
            pos = match.positions(id_map, self._generation)
            try:
                return top_k(
                    q,
                    k,
                    (
                        (id_map[pos[a : a + _EXACT_CHUNK]], inner.reconstruct_batch(pos[a : a + _EXACT_CHUNK]))
                        for a in range(0, len(pos), _EXACT_CHUNK)
                    ),
                )
            except RuntimeError:  # an inner type that cannot reconstruct: the stored vectors
                pass
        return top_k(q, k, self._stored_vectors(match.ids))

    def _stored_vectors(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, len(ids), _EXACT_CHUNK):
            with self._rconn_lock:
                present, vecs = fetch_vectors(self._rconn, ids[a : a + _EXACT_CHUNK], self._dim)
            yield present, vecs


def top_k(q: np.ndarray, k: int, chunks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best inner products of ``q`` (n, dim) over ``chunks`` of (ids (c,), vectors
    (c, dim)): (n, k) float32 scores, best first, and (n, k) int64 ids, padded with -inf / -1."""
    n = len(q)
    D = np.full((n, k), -np.inf, np.float32)
    I = np.full((n, k), -1, np.int64)  # noqa: E741 - FAISS's name
    for ids, vecs in chunks:
        if len(ids) == 0:
            continue
        s = q @ np.ascontiguousarray(vecs, dtype=np.float32).T
        both_d = np.concatenate([D, s], axis=1)
        both_i = np.concatenate([I, np.broadcast_to(ids, s.shape)], axis=1)
        keep = np.argpartition(-both_d, k - 1, axis=1)[:, :k]
        D, I = np.take_along_axis(both_d, keep, 1), np.take_along_axis(both_i, keep, 1)
    order = np.argsort(-D, axis=1, kind="stable")
    return np.take_along_axis(D, order, 1).astype(np.float32), np.take_along_axis(I, order, 1)
