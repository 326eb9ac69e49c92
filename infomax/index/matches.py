"""The matching ids of a filter (``Match``: sorted int64 ids with their FAISS selectors, built on
first use) and the per-index cache of them (``MatchCache``), kept apart from the search code
(``filtered.py``) because the index state (``state.py``) creates the cache and the search mixins
derive from that state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import faiss
import numpy as np

from infomax.index.faiss_ops import untyped_faiss as _faiss

CACHE_ENTRIES = 16  # resolved filters kept per index state
CACHE_IDS = 4_000_000  # ... holding at most this many ids in all (32 MB)
_BITMAP_BYTES_PER_ID, _BITMAP_BYTES_FREE = 16, 1 << 16  # a bitmap selector up to this size (a hash set's)


class Match:
    """The sorted int64 ids a filter matched at index generation ``generation``, with the FAISS
    selector and the id-map positions built on first use."""

    def __init__(self, ids: np.ndarray, generation: int) -> None:
        self.ids = ids
        self.generation = generation
        self._selector: Any = None
        self._mask: np.ndarray | None = None  # ids as a boolean array over 0..max id, where small
        self._positions: np.ndarray | None = None
        self._position_selector: Any = None

    def mask(self) -> np.ndarray | None:
        """The ids as a boolean array over 0..max id when that is small (dense ids, as a data
        set's positions: at most 128 entries per matching id + 512 Ki), else None."""
        if self._mask is None:
            top = int(self.ids[-1]) + 1 if len(self.ids) else 0
            if len(self.ids) and top // 8 <= _BITMAP_BYTES_PER_ID * len(self.ids) + _BITMAP_BYTES_FREE:
                mask = np.zeros(top, dtype=bool)
                mask[self.ids] = True
                self._mask = mask
        return self._mask

    def selector(self) -> Any:
        """A bitmap of the ids where it is small (dense ids, as a data set's positions): 100x
        quicker to build than a hash set and quicker to test; else ``IDSelectorBatch`` (hash set
        and Bloom filter: path-hash ids reach 2^53). Read-only during searches (``is_member`` is
        const): shared by concurrent searches."""
        if self._selector is None:
            mask = self.mask()
            if mask is not None:
                # bit i of byte i >> 3, least significant first, as IDSelectorBitmap reads it (it
                # keeps a reference to the array)
                self._selector = _faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
            else:
                self._selector = faiss.IDSelectorBatch(self.ids)
        return self._selector

    def position_selector(self, id_map: np.ndarray, generation: int) -> Any:
        """A bitmap selector of the matching positions of an ``IndexIDMap``'s id map (for its
        inner index, searched directly), kept like :meth:`positions`."""
        if self._position_selector is not None and generation == self.generation:
            return self._position_selector
        mask = np.zeros(len(id_map), dtype=bool)
        mask[self.positions(id_map, generation)] = True
        sel = _faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
        if generation == self.generation:
            self._position_selector = sel
        return sel

    def positions(self, id_map: np.ndarray, generation: int) -> np.ndarray:
        """Positions in an ``IndexIDMap``'s id map of the matching ids (kept while the index is
        at the generation the ids were resolved at)."""
        if self._positions is not None and generation == self.generation:
            return self._positions
        mask = self.mask()
        if mask is not None:  # a gather, ~10x quicker than np.isin's sort
            inside = (id_map >= 0) & (id_map < len(mask))
            pos = np.flatnonzero(inside & mask[np.where(inside, id_map, 0)])
        else:
            pos = np.flatnonzero(np.isin(id_map, self.ids))
        if generation == self.generation:
            self._positions = pos
        return pos


class MatchCache:
    """The last resolved filters of one index generation (LRU); a new generation empties it."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_ids: int = CACHE_IDS) -> None:
        self._entries = entries
        self._max_ids = max_ids
        self._lock = threading.Lock()
        self._generation = -1
        self._items: OrderedDict[str, Match] = OrderedDict()

    def get(self, key: str, generation: int) -> Match | None:
        with self._lock:
            if generation != self._generation:
                return None
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def clear(self) -> None:
        """Forget every resolved filter (the next search of each resolves it again)."""
        with self._lock:
            self._items.clear()

    def put(self, key: str, match: Match) -> None:
        with self._lock:
            if match.generation < self._generation:
                return  # resolved before a change another search has seen: not kept
            if match.generation > self._generation:
                self._items.clear()
                self._generation = match.generation
            self._items[key] = match
            self._items.move_to_end(key)
            total = sum(len(m.ids) for m in self._items.values())
            while self._items and (len(self._items) > self._entries or total > self._max_ids):
                total -= len(self._items.popitem(last=False)[1].ids)
