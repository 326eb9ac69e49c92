"""The index's locks: one writer per index folder, enforced by the operating system (between
processes), and the readers-writer lock that keeps searches off a FAISS structure while it changes
(between the threads of one process, ``RWLock`` at the end).

A writer (``EmbeddingIndex`` opened writable, or a build about to replace a folder) holds an
exclusive ``flock`` on ``<folder>/writer.lock`` for its whole lifetime. The kernel drops the
lock when the holder closes it or dies in any way (crash, ``kill -9``), so a stale lock never
needs cleaning up by hand. The file also says who holds it (pid, command, since when), which is
what a refused second writer is told.

Why a lock and not "several writers catch up on each other's log": a second writer's in-memory
FAISS index only sees the first one's items when it writes itself, so two writable servers on one
folder answer searches differently; and a rebuild that swaps the folder leaves a running writer
appending to files that no longer exist (its acknowledged writes are lost at the next restart).
Readers (``read_only=True``) take no lock.

The lock lives inside the folder so it moves with it: a folder renamed into place (a build)
carries the lock its builder took on the temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from infomax.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one writer is then on trust
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "READ_ONLY_FIX", "REPLACE_FIX", "IndexLockedError", "RWLock", "WriterLock", "holder_of"]

LOCK_FILE = "writer.lock"
# What a refused writer can do instead (the end of the refusal message).
READ_ONLY_FIX = "open the index read-only (read_only=True; `infomax serve --read-only`)"
REPLACE_FIX = "build into another folder and point the server at it when it restarts"


class IndexLockedError(UserError, PermissionError):
    """Another process (or another open instance in this one) writes this index folder."""

    def __init__(self, folder: Path, holder: dict | None, doing: str, fix: str = READ_ONLY_FIX) -> None:
        self.folder = folder
        self.holder = holder
        super().__init__(
            f"{folder}: cannot {doing}: {describe(holder)} has it open for writing, and an index "
            f"folder has one writer at a time. Stop that process first, or {fix}"
        )


def describe(holder: dict | None) -> str:
    """'pid 123 (infomax serve --index x, since 2026-...)', or what is known of the holder."""
    if not holder or not isinstance(holder.get("pid"), int):
        return "another process (not yet named in its lock file)"
    where = f"pid {holder['pid']}"
    if holder.get("pid") == os.getpid():
        where += ", this very process"
    details = ", ".join(x for x in (holder.get("command"), f"since {holder['since']}" if holder.get("since") else None) if x)
    return f"{where} ({details})" if details else where


def holder_of(folder: str | os.PathLike) -> dict | None:
    """Who holds (or last held) the writer lock of ``folder``, as the lock file says; None if unknown."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class WriterLock:
    """An exclusive lock on ``folder/writer.lock``, held until :meth:`release` (or process exit).

    ``WriterLock.acquire(folder, doing="open it for writing")`` raises :class:`IndexLockedError`
    at once when someone else holds it (never waits: a writer that waited for a server to stop
    would hang a command forever)."""

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd

    @classmethod
    def acquire(cls, folder: str | os.PathLike, *, doing: str = "open it for writing", fix: str = READ_ONLY_FIX) -> WriterLock:
        folder = Path(folder)
        if fcntl is None:  # pragma: no cover
            return cls(folder, None)
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexLockedError(folder, holder_of(folder), doing, fix) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            me = {"pid": os.getpid(), "command": _command(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            data = json.dumps(me).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            pass  # who holds it is only information; the lock itself is what protects the folder
        return cls(folder, fd)

    @classmethod
    def probe(cls, folder: str | os.PathLike, *, doing: str = "open it for writing", fix: str = READ_ONLY_FIX) -> None:
        """Raise :class:`IndexLockedError` if a writer holds ``folder`` now; take nothing.

        A check before a slow start (the service loading its model), not a guarantee: the
        guarantee is :meth:`acquire` by the one who writes."""
        folder = Path(folder)
        if fcntl is None or not (folder / LOCK_FILE).exists():
            return
        try:
            fd = os.open(folder / LOCK_FILE, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexLockedError(folder, holder_of(folder), doing, fix) from None
        except OSError:
            return
        finally:
            os.close(fd)  # closing drops the probe's own lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor is what releases a flock

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class RWLock:
    """Writer-preferring readers-writer lock (not re-entrant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_SECRET = re.compile(r"key|token|secret|passw|auth", re.IGNORECASE)


def _command() -> str:
    """This process's command line for the lock file, with the values of secret-like flags masked
    (``--api-key K``): the lock file and the refusal messages are read by others."""
    argv = [os.path.basename(sys.argv[0])] + sys.argv[1:] if sys.argv and sys.argv[0] else ["python"]
    shown: list[str] = []
    for arg in argv:
        if shown and shown[-1].startswith("-") and "=" not in shown[-1] and _SECRET.search(shown[-1]):
            arg = "***"
        elif arg.startswith("-") and "=" in arg and _SECRET.search(arg.split("=", 1)[0]):
            arg = arg.split("=", 1)[0] + "=***"
        shown.append(arg)
    text = " ".join(shown)
    return text if len(text) <= 300 else text[:297] + "..."
