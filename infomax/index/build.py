"""Building: choose the factory, train on a sample, add, tune the search parameter on held-out
queries, and (with a path) write the folder beside its target and rename it into place."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from infomax.atomic import atomic_write_json, fsync_dir, fsync_file, temp_dir_beside
from infomax.errors import DataError, SettingError
from infomax.index.factory import choose_factory, parse_memory, safe_estimate
from infomax.index.folders import check_target, folder_id, install_as_writer
from infomax.index.inputs import metadata_rows, new_ids
from infomax.index.record import RECORD_FILE, check_artifact
from infomax.index.snapshot import INDEX_FILE, write_snapshot_tmp
from infomax.index.state import IndexState
from infomax.index.store import METADATA_FILE, connect, kv_set, transaction

if TYPE_CHECKING:
    from typing_extensions import Self  # EmbeddingIndex, which mixes this class in


class Building(IndexState):
    """EmbeddingIndex.build (a mixin: ``cls`` is EmbeddingIndex)."""

    @classmethod
    def build(
        cls,
        vectors: Any,
        *,
        ids: Any = None,
        metadata: list[dict] | None = None,
        factory: str | None = None,
        memory_budget: int | str = "4GB",
        recall_target: float = 0.95,
        artifact: dict | None = None,
        path: str | os.PathLike | None = None,
        seed: int = 0,
        overwrite: bool = False,
        tune_queries: int = 1000,
        k: int = 10,
        durable: bool = True,
        prepare: Any = None,
    ) -> Self:
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
            raise SettingError(f"recall_target must be in (0, 1], got {recall_target!r}", setting="recall_target")
        check_artifact(artifact)
        try:
            raw = np.asarray(vectors)
        except Exception as e:
            raise DataError(f"vectors must be a numeric array of shape (n, dim): {e}") from None
        if raw.ndim != 2 or raw.shape[1] == 0:
            raise DataError(f"vectors must have shape (n, dim), got shape {raw.shape}")
        n, dim = raw.shape
        budget = parse_memory(memory_budget)
        if factory is None:
            factory = choose_factory(n, dim, budget)
        target = Path(path) if path is not None else None
        if target is not None:
            check_target(target, overwrite)
        tmpdir = temp_dir_beside(target) if target is not None else None
        try:
            self = cls._new(int(dim), factory, artifact, durable, tmpdir / METADATA_FILE if tmpdir else ":memory:")
            try:
                self._build_into(raw, ids, metadata, budget, float(recall_target), int(seed), int(tune_queries), int(k), t_start)
                if tmpdir is not None and target is not None:
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
        with transaction(conn):
            kv_set(conn, "snapshot_seq", 0)
            kv_set(conn, "pruned_through", 0)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        fsync_file(tmpdir / METADATA_FILE)
        snap = write_snapshot_tmp(self._index, tmpdir / INDEX_FILE, 0)
        os.replace(snap, tmpdir / INDEX_FILE)
        atomic_write_json(tmpdir / RECORD_FILE, self._record_for_disk(0, (tmpdir / INDEX_FILE).stat().st_size))
        if prepare is not None:
            prepare(tmpdir)  # e.g. the pictures: in place before the folder can be opened
        fsync_dir(tmpdir)
        self._lock = install_as_writer(tmpdir, target, bind=True)
        self._conn = connect(target / METADATA_FILE, read_only=False, durable=self._durable)
        self._rconn = connect(target / METADATA_FILE, read_only=False, durable=self._durable)
        self._rconn_lock = threading.Lock()
        self._path = target
        self._folder_id = folder_id(target)
        self._logging = True

    def _build_into(
        self,
        raw: np.ndarray,
        ids: Any,
        metadata: Any,
        budget: int,
        recall_target: float,
        seed: int,
        tune_queries: int,
        k: int,
        t_start: float,
    ) -> None:
        n, dim = raw.shape
        factory = self.factory
        x = self._prepare(raw, "vectors")
        ids_a = np.arange(n, dtype=np.int64) if ids is None else new_ids(ids, n)
        rows = metadata_rows(metadata, ids_a, n)
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
                    raise SettingError(f"{factory!r} needs at least {ivf.nlist} vectors to train, got {n}", setting="factory")
            try:
                with self._rw.write():
                    self._index.train(x[train_pos])
            except RuntimeError as e:
                raise SettingError(
                    f"cannot train {factory!r} on {len(train_pos)} vectors: {str(e).strip().splitlines()[-1]}"
                ) from None
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
            "estimated_memory_bytes": safe_estimate(factory, n, dim),
        }

    def _add_positions(self, x: np.ndarray, ids: np.ndarray, rows: list, positions: np.ndarray, step: int = 65536) -> None:
        """Adds the build's vectors at ``positions`` (in chunks, unlogged: the build is one snapshot)."""
        for s in range(0, len(positions), step):
            pos = positions[s : s + step]
            self._add_locked(x[pos], ids[pos], [rows[i] for i in pos.tolist()], log_op=False)
