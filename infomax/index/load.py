"""Opening a folder: the writer lock first, then the record, the snapshot and the store checked
against each other, then the log replayed (and a full reconciliation if they still disagree)."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import faiss

from infomax.atomic import remove_stale_temps
from infomax.index.errors import IndexLoadError, IndexMismatchError
from infomax.index.folders import lock_for_writing
from infomax.index.locks import WriterLock
from infomax.index.record import RECORD_FILE, read_record
from infomax.index.snapshot import INDEX_FILE, read_snapshot
from infomax.index.state import IndexState
from infomax.index.store import (
    FILTER_INDEXES,
    METADATA_FILE,
    SCHEMA_VERSION,
    connect,
    kv_get,
    last_seq,
    transaction,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # EmbeddingIndex, which mixes this class in


log = logging.getLogger(__name__)


class Loading(IndexState):
    """EmbeddingIndex.load (a mixin: ``cls`` is EmbeddingIndex)."""

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        mmap: bool = True,
        expected_dim: int | None = None,
        expected_artifact_id: str | None = None,
        read_only: bool = False,
        durable: bool = True,
        verify: bool | None = None,
    ) -> Self:
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
            raise IndexLoadError(
                f"{folder}: not an index folder (expected a directory with {INDEX_FILE}, {RECORD_FILE}, {METADATA_FILE})"
            )
        # The lock first: what is read below must not be swapped by a rebuild meanwhile.
        lock = None if read_only else lock_for_writing(folder, "open it for writing")
        try:
            self = cls._open_folder(
                folder,
                mmap=mmap,
                expected_dim=expected_dim,
                expected_artifact_id=expected_artifact_id,
                read_only=read_only,
                durable=durable,
                verify=verify,
                lock=lock,
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return self

    @classmethod
    def _open_folder(
        cls,
        folder: Path,
        *,
        mmap: bool,
        expected_dim: int | None,
        expected_artifact_id: str | None,
        read_only: bool,
        durable: bool,
        verify: bool | None,
        lock: WriterLock | None,
    ) -> Self:
        rec = read_record(folder / RECORD_FILE)
        dim = int(rec["dim"])
        if expected_dim is not None and int(expected_dim) != dim:
            raise IndexMismatchError(
                f"dimension mismatch: the encoder produces {int(expected_dim)}-dimensional embeddings but the index at "
                f"{folder} holds {dim}-dimensional vectors (expected {int(expected_dim)}, found {dim})"
            )
        if expected_artifact_id is not None:
            art = rec.get("artifact")
            found = art.get("id") if isinstance(art, dict) else None
            if found != expected_artifact_id:
                raise IndexMismatchError(
                    f"artifact mismatch: the index at {folder} was built with encoder artifact "
                    f"{found!r} but the encoder in use is {expected_artifact_id!r} (expected {expected_artifact_id!r}, found {found!r})"
                )
        index, seq, mmapped = read_snapshot(folder, mmap=mmap, verify=verify)
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
            conn = connect(db, read_only=read_only, durable=durable)
            conns.append(conn)
            rconn = connect(db, read_only=read_only, durable=durable)
            conns.append(rconn)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            missing = {"items", "oplog", "kv"} - tables
            if missing:
                raise IndexLoadError(f"{db}: not an infomax metadata store (missing tables: {', '.join(sorted(missing))})")
            db_dim = kv_get(conn, "dim", dim)
            if db_dim != dim:
                raise IndexLoadError(f"{db}: dim {db_dim} does not match {RECORD_FILE} ({dim})")
            if kv_get(conn, "schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
                raise IndexLoadError(f"{db}: written by a newer infomax (schema version {kv_get(conn, 'schema_version')})")
            if not read_only:
                conn.executescript(FILTER_INDEXES)  # a store written before them (once: IF NOT EXISTS)
        except BaseException as e:
            for c in conns:
                c.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise IndexLoadError(f"{db}: corrupt or unreadable SQLite database: {e}") from None
            raise
        if not read_only:
            # Temp snapshots/records of writers that died before their rename. Any age may go:
            # the writer lock taken in load() means no live writer is about to rename one.
            for name in (INDEX_FILE, RECORD_FILE):
                remove_stale_temps(folder, name)
        self = cls(
            index=index,
            info=rec,
            path=folder,
            conn=conn,
            read_conn=rconn,
            read_only=read_only,
            durable=durable,
            mmapped=mmapped,
            applied_seq=seq,
            logging_enabled=True,
        )
        self._lock = lock
        try:
            self._recover(folder)
        except BaseException:
            self.close()
            raise
        return self

    def _recover(self, folder: Path) -> None:
        """Replay log entries newer than the snapshot of ``folder`` (the one just opened); reconcile
        fully if the counts still disagree."""
        with self._wmutex:
            conn, lock = (self._rconn, self._rconn_lock) if self._read_only else (self._conn, self._conn_lock)
            try:
                if self._mmapped:
                    with lock:
                        behind = last_seq(conn) > self._applied_seq
                    if behind:
                        self._materialize()
                with lock, transaction(conn, "DEFERRED"):
                    plan = self._plan(conn)
                    stored = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
                self._apply_plan(plan)
                if plan is not None:
                    log.info(
                        "index %s: replayed log after snapshot %d (%d ids re-synchronised)",
                        self._path,
                        self._applied_seq,
                        len(plan.remove) + len(plan.add_ids),
                    )
                if stored != len(self):
                    self._materialize()
                    with lock, transaction(conn, "DEFERRED"):
                        plan = self._plan(conn, force_full=True)
                    self._apply_plan(plan)
                    if int(len(self)) != stored:
                        raise IndexLoadError(
                            f"{folder / INDEX_FILE}: holds {len(self)} items but {METADATA_FILE} holds {stored} and they cannot be reconciled"
                        )
            except sqlite3.DatabaseError as e:
                raise IndexLoadError(f"{folder / METADATA_FILE}: corrupt or unreadable: {e}") from None
