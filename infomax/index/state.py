"""IndexState: what EmbeddingIndex's mixins share, declared once for the type checker.

``EmbeddingIndex`` (``embedding_index.py``) is one class split into files by purpose: loading,
saving, building, tuning, searching and item reads are mixins that read the state its
``__init__`` sets and call each other's methods. Each mixin derives from this class, so mypy
checks every such use against one declaration, and every definition against it too (a mixin's
method must keep the signature declared here).

Nothing here exists at run time: the attributes are bare annotations (no class attribute is
created) and the methods are declared under ``TYPE_CHECKING`` only, so a method no class defines
raises AttributeError as before instead of silently returning None from a stub.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import _thread
    import os
    import threading

    import numpy as np
    from typing_extensions import Self

    from infomax.index.filtered import Match, MatchCache
    from infomax.index.filters import Filter
    from infomax.index.locks import RWLock, WriterLock
    from infomax.index.oplog import Plan


class IndexState:
    """The state ``EmbeddingIndex.__init__`` sets (see there for what each holds) and the methods
    one mixin calls on another."""

    _index: Any  # the FAISS index (an IndexIDMap2 around the chosen type)
    _kind: str  # "flat", "ivf", "hnsw", ...: faiss_ops.index_kind
    _info: dict[str, Any]  # the build record, index.json's content
    _dim: int
    _path: Path | None  # the bound folder; None for an index in memory
    _conn: sqlite3.Connection  # the writer's connection
    _rconn: sqlite3.Connection  # the readers' connection (the writer's when in memory)
    _read_only: bool
    _durable: bool
    _mmapped: bool
    _applied_seq: int  # the last log entry the FAISS structure holds
    _logging: bool
    _tombstones: int
    _rw: RWLock
    _wmutex: threading.RLock
    _conn_lock: threading.RLock
    _rconn_lock: threading.RLock | _thread.LockType
    _closed: bool
    _lock: WriterLock | None
    _folder_id: tuple[int, int] | None
    _params_cache: dict[Any, Any]
    _generation: int
    _matches: MatchCache
    _no_selectors: bool
    _quantizer_hnsw: bool

    if TYPE_CHECKING:

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
        ) -> None: ...

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
