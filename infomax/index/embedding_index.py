"""EmbeddingIndex, the front: construction, state, writes (train, add, remove, refresh,
compact) and close. Loading, saving, building, tuning, searching and item reads are its
mixins, one file each; the package docstring (``infomax/index/__init__.py``) is the contract."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from infomax.errors import DataError, SettingError
from infomax.index.build import Building
from infomax.index.faiss_ops import (
    TOMBSTONE,
    count_tombstones,
    id_map_view,
    new_faiss_index,
)
from infomax.index.folders import folder_id
from infomax.index.inputs import MAX_ID, as_id_array, metadata_rows, new_ids, normalized
from infomax.index.items import Items
from infomax.index.load import Loading
from infomax.index.oplog import Plan, catch_up, log_entry
from infomax.index.persist import Saving
from infomax.index.record import base_record, check_artifact
from infomax.index.search import Searching
from infomax.index.snapshot import read_snapshot
from infomax.index.store import (
    SCHEMA,
    SCHEMA_VERSION,
    chunks,
    connect,
    existing_ids,
    fetch_vectors,
    first_free_id,
    kv_get,
    kv_set,
    last_seq,
    transaction,
)
from infomax.index.tuning import Tuning
from infomax.validate import positive_int

log = logging.getLogger(__name__)


class EmbeddingIndex(Loading, Saving, Building, Tuning, Searching, Items):
    """Cosine-similarity index of embeddings with stable int64 ids and metadata.

    Build with :meth:`create` (empty) or :meth:`build` (chooses, trains and tunes
    the FAISS index), open with :meth:`load`. See the package docstring for the
    folder layout, durability and thread-safety guarantees.
    """

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        dim: int,
        factory: str | None = None,
        *,
        path: str | os.PathLike | None = None,
        artifact: dict | None = None,
        overwrite: bool = False,
        durable: bool = True,
    ) -> EmbeddingIndex:
        """An empty index of dimension ``dim`` (``factory`` None -> ``"Flat"``).

        With ``path`` the folder is written immediately (it must not already hold
        an index unless ``overwrite``) and the index is bound to it: later
        ``add``/``remove`` are logged durably. IVF/PQ factories need :meth:`train`
        before vectors can be added (or use :meth:`build`)."""
        positive_int("dim", dim)
        check_artifact(artifact)
        self = cls._new(int(dim), factory or "Flat", artifact, durable, ":memory:")
        if path is not None:
            self.save(path, overwrite=overwrite)
        return self

    @classmethod
    def _new(cls, dim: int, factory: str, artifact: dict | None, durable: bool, db: Path | str) -> EmbeddingIndex:
        index = new_faiss_index(dim, factory)
        info = base_record(dim, factory, dict(artifact) if artifact is not None else None)
        conn = connect(db, read_only=False, durable=False)
        if db != ":memory:":
            conn.execute("PRAGMA synchronous=OFF")  # bulk build in a temp folder, fsync'd once at the end
        conn.executescript(SCHEMA)
        with transaction(conn):
            kv_set(conn, "schema_version", SCHEMA_VERSION)
            kv_set(conn, "dim", dim)
        return cls(
            index=index,
            info=info,
            path=None,
            conn=conn,
            read_conn=None,
            read_only=False,
            durable=durable,
            mmapped=False,
            applied_seq=0,
            logging_enabled=False,
        )

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
                raise SettingError(
                    f"search parameter {key!r} does not apply to a {self.factory!r} index (allowed: {sorted(allowed)})",
                    setting="search_params",
                )
            positive_int(key, value, what="a positive integer (a search parameter)")
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
        if not (0 <= int(id) <= MAX_ID):
            return False
        self._check_open()
        with self._rconn_lock:
            return self._rconn.execute("SELECT 1 FROM items WHERE id=?", (int(id),)).fetchone() is not None

    def __repr__(self) -> str:
        where = str(self._path) if self._path else "in memory"
        return f"<EmbeddingIndex {self.factory!r} dim={self._dim} n={len(self)} {where}>"

    def __enter__(self) -> EmbeddingIndex:
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
        return normalized(vectors, self._dim, what)

    # ------------------------------------------------------------------ FAISS mutation (callers hold _wmutex)

    def _faiss_add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids) == 0:
            return
        with self._rw.write():
            self._index.add_with_ids(vecs, ids)
            self._generation += 1

    def _faiss_remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        with self._rw.write():
            if self._kind == "hnsw":
                view = id_map_view(self._index)
                hit = np.isin(view, ids)
                count = int(np.count_nonzero(hit))
                if count:
                    self._generation += 1
                    view[hit] = TOMBSTONE
                    self._index.construct_rev_map()
                    self._tombstones += count
                    self._params_cache.clear()
                return count
            self._generation += 1
            return int(self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def _apply_plan(self, plan: Plan | None) -> None:
        if plan is None:
            return
        if plan.full:
            log.warning(
                "index %s: FAISS snapshot and metadata store disagreed; reconciled %d removals and %d additions",
                self._path,
                len(plan.remove),
                len(plan.add_ids),
            )
        self._faiss_remove(plan.remove)
        self._faiss_add(plan.add_ids, plan.add_vecs)
        self._applied_seq = max(self._applied_seq, plan.seq)

    def _plan(self, conn: sqlite3.Connection, *, force_full: bool = False) -> Plan | None:
        """Inside a transaction on ``conn``: what to apply to catch up with the log."""
        return catch_up(conn, self._applied_seq, self._index, self._kind, self._dim, force_full=force_full)

    def _materialize(self) -> None:
        """Replace a memory-mapped (immutable) FAISS index by an in-memory copy of
        the current snapshot before the first mutation."""
        if not self._mmapped:
            return
        assert self._path is not None
        index, seq = read_snapshot(self._path, mmap=False, verify=False)[:2]
        with self._rw.write():
            self._index = index
            self._generation += 1
            self._mmapped = False
            self._applied_seq = seq
            self._tombstones = count_tombstones(index, self._kind)
            self._params_cache.clear()

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
        ids_a = new_ids(ids, n) if ids is not None else None
        rows = metadata_rows(metadata, ids_a, n)
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
                with transaction(conn):
                    plan = self._plan(conn) if self._logging else None
                    next_id = kv_get(conn, "next_id")
                    if ids_a is None:
                        start = first_free_id(conn)
                        if start + n - 1 > MAX_ID:
                            raise ValueError("id space exhausted")
                        ids_a = np.arange(start, start + n, dtype=np.int64)
                    if n == 0:
                        new_seq = None
                    else:
                        new_seq = 0
                        if log_op:
                            new_seq = log_entry(conn, "add", ids_a)
                        le = x.astype("<f4", copy=False)
                        conn.executemany(
                            "INSERT INTO items(id, source, label, meta, vector, seq) VALUES(?, ?, ?, ?, ?, ?)",
                            (
                                (int(i), s, lab, m, le[r].tobytes(), new_seq)
                                for r, (i, (s, lab, m)) in enumerate(zip(ids_a.tolist(), rows))
                            ),
                        )
                        kv_set(conn, "next_id", max(next_id, int(ids_a.max()) + 1))
            except sqlite3.IntegrityError:
                dups = existing_ids(conn, ids_a) if ids_a is not None else np.zeros(0, np.int64)
                raise DataError(
                    f"ids already present in the index: {dups[:10].tolist()}"
                    + (f" (and {len(dups) - 10} more)" if len(dups) > 10 else "")
                ) from None
        self._apply_plan(plan)
        if n:
            self._faiss_add(ids_a, x)
            if new_seq:
                self._applied_seq = new_seq
        return ids_a

    def remove(self, ids: Any) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many were removed."""
        self._check_writable()
        ids_a = np.unique(as_id_array(ids))
        ids_a = ids_a[ids_a >= 0]
        with self._wmutex:
            self._check_writable()
            self._materialize()
            conn = self._conn
            with self._conn_lock, transaction(conn):
                plan = self._plan(conn) if self._logging else None
                present = existing_ids(conn, ids_a)
                new_seq = None
                if len(present):
                    if self._logging:
                        new_seq = log_entry(conn, "remove", present)
                    for chunk in chunks(present):
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
                    if last_seq(self._rconn) <= self._applied_seq:
                        return 0
                self._materialize()
            conn = self._conn if not self._read_only else self._rconn
            lock = self._conn_lock if not self._read_only else self._rconn_lock
            with lock, transaction(conn, "DEFERRED"):
                plan = self._plan(conn)
            self._apply_plan(plan)
            return 0 if plan is None else int(len(np.union1d(plan.remove, plan.add_ids)))

    def folder_replaced(self) -> bool:
        """True when the folder this index was opened from is no longer at its path (a rebuild
        renamed a new folder into place, or it was moved or deleted): a reader then serves a
        snapshot nobody writes any more, and should open the path again."""
        self._check_open()
        return self._path is not None and self._folder_id is not None and folder_id(self._path) != self._folder_id

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
            with self._conn_lock, transaction(conn, "DEFERRED"):
                plan = self._plan(conn) if self._logging else None
                seq = max(self._applied_seq, plan.seq if plan else 0)
                ids = np.array([r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)
                ids, vecs = fetch_vectors(conn, ids, self._dim)
            new = new_faiss_index(self._dim, self.factory)
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
                self._generation += 1
                self._tombstones = 0
                self._applied_seq = seq
                self._params_cache.clear()
            return dropped

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
