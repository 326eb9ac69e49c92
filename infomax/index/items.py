"""Reading items back: metadata, stored vectors and ids, from the read connection."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from infomax.index.inputs import MAX_ID, as_id_array
from infomax.index.state import IndexState
from infomax.index.store import chunks, first_free_id
from infomax.validate import non_negative_int


class Items(IndexState):
    """EmbeddingIndex's reads of the metadata store (a mixin: ``_rconn`` and ``_rconn_lock`` are
    set by ``EmbeddingIndex.__init__``)."""

    @staticmethod
    def _row_dict(row: tuple) -> dict:
        i, source, label, meta = row
        return {"id": int(i), "source": source, "label": label, "meta": json.loads(meta) if meta else {}}

    def get(self, id: int) -> dict | None:
        """{"id", "source", "label", "meta"} of an item, or None if absent."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not (0 <= int(id) <= MAX_ID):
            return None
        self._check_open()
        with self._rconn_lock:
            row = self._rconn.execute("SELECT id, source, label, meta FROM items WHERE id=?", (int(id),)).fetchone()
        return self._row_dict(row) if row else None

    def get_many(self, ids: Any) -> list[dict | None]:
        """:meth:`get` for many ids (in order; None for absent ids and -1)."""
        self._check_open()
        ids_a = as_id_array(ids)
        valid = np.unique(ids_a[ids_a >= 0])
        found: dict[int, dict] = {}
        with self._rconn_lock:
            for chunk in chunks(valid):
                q = f"SELECT id, source, label, meta FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                for row in self._rconn.execute(q, chunk):
                    found[int(row[0])] = self._row_dict(row)
        return [found.get(int(i)) for i in ids_a.tolist()]

    def vector(self, id: int) -> np.ndarray | None:
        """The stored (L2-normalised, float32) vector of an item, or None."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not (0 <= int(id) <= MAX_ID):
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
            return first_free_id(self._rconn)

    def ids(self) -> np.ndarray:
        """All ids, ascending."""
        self._check_open()
        with self._rconn_lock:
            return np.array([r[0] for r in self._rconn.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def sample_ids(self, n: int, seed: int | None = None) -> np.ndarray:
        """Up to ``n`` distinct ids drawn uniformly at random (reproducible with ``seed``)."""
        non_negative_int("n", n)
        all_ids = self.ids()
        rng = np.random.default_rng(seed)
        if n >= len(all_ids):
            return rng.permutation(all_ids)
        return rng.choice(all_ids, size=int(n), replace=False)
