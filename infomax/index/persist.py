"""Saving: the checkpoint of a bound index (new snapshot, then the log it holds pruned) and the
export of a complete folder elsewhere (built in a temp folder, renamed into place)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
from pathlib import Path

from infomax.atomic import atomic_write_json, fsync_dir, fsync_file, temp_dir_beside
from infomax.index.folders import check_target, folder_id, install_as_writer, same_path
from infomax.index.record import RECORD_FILE, now_iso
from infomax.index.snapshot import INDEX_FILE, write_snapshot_tmp
from infomax.index.state import IndexState
from infomax.index.store import (
    METADATA_FILE,
    connect,
    kv_get,
    kv_set,
    last_seq,
    transaction,
)

log = logging.getLogger(__name__)


class Saving(IndexState):
    """EmbeddingIndex's save / checkpoint (a mixin: the state it uses is set by
    ``EmbeddingIndex.__init__``)."""

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
            if self._path is not None and same_path(target, self._path):
                self._checkpoint_locked()
                return self._path
            self._export_locked(target, overwrite=overwrite, bind=self._path is None)
            return target

    def _record_for_disk(self, seq: int, file_bytes: int | None) -> dict:
        rec = self.info
        rec["updated_at"] = now_iso()
        rec["snapshot_seq"] = int(seq)
        rec["index_file_bytes"] = file_bytes
        return rec

    def _checkpoint_locked(self) -> None:
        assert self._path is not None
        folder = self._path
        conn = self._conn
        if self._mmapped:
            with self._conn_lock:
                if last_seq(conn) <= self._applied_seq:
                    # snapshot on disk is current; just refresh the record
                    atomic_write_json(
                        folder / RECORD_FILE, self._record_for_disk(self._applied_seq, (folder / INDEX_FILE).stat().st_size)
                    )
                    return
            self._materialize()
        with self._conn_lock, transaction(conn, "DEFERRED"):
            plan = self._plan(conn)
        self._apply_plan(plan)
        seq = self._applied_seq
        dest = folder / INDEX_FILE
        tmp = write_snapshot_tmp(self._index, dest, seq)  # searches continue meanwhile
        try:
            with self._conn_lock, transaction(conn):
                if kv_get(conn, "snapshot_seq") > seq:
                    log.info("index %s: a newer snapshot was saved by another writer; keeping it", folder)
                    return
                os.replace(tmp, dest)
                fsync_dir(folder)
                kv_set(conn, "snapshot_seq", seq)
                conn.execute("DELETE FROM oplog WHERE seq <= ?", (seq,))
                kv_set(conn, "pruned_through", max(seq, kv_get(conn, "pruned_through")))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        atomic_write_json(folder / RECORD_FILE, self._record_for_disk(seq, dest.stat().st_size))
        with self._conn_lock, contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _export_locked(self, target: Path, *, overwrite: bool, bind: bool) -> None:
        """Write a complete folder at ``target`` (built in a temp dir, then renamed
        into place)."""
        check_target(target, overwrite)
        self._materialize()
        if self._logging:
            with self._conn_lock, transaction(self._conn, "DEFERRED"):
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
                with transaction(dst):
                    kv_set(dst, "snapshot_seq", seq)
                    dst.execute("DELETE FROM oplog WHERE seq <= ?", (seq,))
                    kv_set(dst, "pruned_through", max(seq, kv_get(dst, "pruned_through")))
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                dst.close()
            fsync_file(db_path)
            snap = write_snapshot_tmp(self._index, tmpdir / INDEX_FILE, seq)
            os.replace(snap, tmpdir / INDEX_FILE)
            atomic_write_json(tmpdir / RECORD_FILE, self._record_for_disk(seq, (tmpdir / INDEX_FILE).stat().st_size))
            fsync_dir(tmpdir)
            lock = install_as_writer(tmpdir, target, bind=bind)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        if bind:
            self._lock = lock
            self._folder_id = folder_id(target)
            conn = connect(target / METADATA_FILE, read_only=False, durable=self._durable)
            rconn = connect(target / METADATA_FILE, read_only=False, durable=self._durable)
            with self._conn_lock:
                old = self._conn
                self._conn, self._rconn = conn, rconn
                self._rconn_lock = threading.Lock()
                self._path = target
                self._logging = True
            old.close()
