"""IndexState: the state EmbeddingIndex's mixins share, set in one place.

``EmbeddingIndex`` (``embedding_index.py``) is one class split into files by purpose: loading,
saving, building, tuning, searching and item reads are mixins that read the state set here and
call each other's methods. Each mixin derives from this class, so mypy checks every such use
against one ``__init__`` and one set of declarations, and every definition against them too (a
mixin's method must keep the signature declared here).

The methods one mixin calls on another are declared under ``TYPE_CHECKING`` only, so a method no
class defines raises AttributeError as before instead of silently returning None from a stub.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss

from infomax.index.faiss_ops import count_tombstones, index_kind
from infomax.index.folders import folder_id
from infomax.index.locks import RWLock, WriterLock
from infomax.index.matches import MatchCache

if TYPE_CHECKING:
    import _thread
    import os

    import numpy as np
    from typing_extensions import Self

    from infomax.index.filters import Filter
    from infomax.index.matches import Match
    from infomax.index.oplog import Plan


class IndexState:
    """The state of an EmbeddingIndex and the methods one mixin calls on another."""

    def __init__(
        self,
        *,
        index: Any,
        info: dict[str, Any],
        path: Path | None,
        conn: sqlite3.Connection,
        read_conn: sqlite3.Connection | None,
        read_only: bool,
        durable: bool,
        mmapped: bool,
        applied_seq: int,
        logging_enabled: bool,
    ) -> None:
        # Private: use EmbeddingIndex.create(), build() or load().
        self._index: Any = index  # the FAISS index (an IndexIDMap2 around the chosen type)
        self._kind: str = index_kind(index)  # "flat", "ivf", "hnsw", ...
        self._info = info  # the build record, index.json's content
        self._dim = int(info["dim"])
        self._path = path  # the bound folder; None for an index in memory
        self._conn = conn  # the writer's connection
        self._rconn = read_conn if read_conn is not None else conn  # the readers' (the writer's in memory)
        self._read_only = read_only
        self._durable = durable
        self._mmapped = mmapped
        self._applied_seq = int(applied_seq)  # the last log entry the FAISS structure holds
        self._logging = logging_enabled
        self._tombstones = count_tombstones(index, self._kind)
        self._rw = RWLock()
        self._wmutex = threading.RLock()
        self._conn_lock = threading.RLock()
        self._rconn_lock: threading.RLock | _thread.LockType = self._conn_lock if self._rconn is conn else threading.Lock()
        self._closed = False
        self._lock: WriterLock | None = None  # held by a writable instance bound to a folder
        self._folder_id: tuple[int, int] | None = folder_id(path) if path is not None else None
        self._params_cache: dict[Any, Any] = {}
        # Filtered search: resolved filters are kept while _generation stays (each change of the
        # FAISS structure bumps it, under the write lock).
        self._generation = 0
        self._matches = MatchCache()
        self._no_selectors = False  # set when the FAISS type's search refuses an id selector
        self._quantizer_hnsw = False
        if self._kind == "ivf":
            ivf = faiss.extract_index_ivf(index)
            self._quantizer_hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)

    if TYPE_CHECKING:

        def __len__(self) -> int: ...

        # embedding_index.py
        @classmethod
        def _new(cls, dim: int, factory: str, artifact: dict | None, durable: bool, db: Path | str) -> Self: ...
        @property
        def factory(self) -> str: ...
        @property
        def info(self) -> dict: ...
        def _check_open(self) -> None: ...
        def _check_writable(self) -> None: ...
        def _prepare(self, vectors: Any, what: str) -> np.ndarray: ...
        def _apply_plan(self, plan: Plan | None) -> None: ...
        def _plan(self, conn: sqlite3.Connection, *, force_full: bool = False) -> Plan | None: ...
        def _materialize(self) -> None: ...
        def _add_locked(
            self, x: np.ndarray, ids_a: np.ndarray | None, rows: list, *, log_op: bool | None = None
        ) -> np.ndarray: ...
        def close(self) -> None: ...

        # persist.py
        def save(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path: ...
        def _record_for_disk(self, seq: int, file_bytes: int | None) -> dict: ...

        # tuning.py
        def _tune(self, x: np.ndarray, ids: np.ndarray, q: np.ndarray, qids: np.ndarray, target: float, k: int) -> dict: ...

        # search.py
        def search(
            self,
            queries: Any,
            k: int = 10,
            *,
            filter: Filter | dict | str | None = None,  # noqa: A002
        ) -> tuple[np.ndarray, np.ndarray]: ...
        def _param_value(self) -> int | None: ...
        def _search_locked(
            self, q: np.ndarray, k: int, value: int | None, match: Match | None = None
        ) -> tuple[np.ndarray, np.ndarray]: ...

        # items.py
        def vector(self, id: int) -> np.ndarray | None: ...
        def ids(self) -> np.ndarray: ...
