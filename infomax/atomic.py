"""Crash-safe file writes: temporary file + fsync + rename + fsync of the directory.

Every writer in the project that replaces a file other code may read (the FAISS
index snapshot, its build record, exported encoder artifacts, ...) goes through
this module, so that a reader sees either the complete old file or the complete
new one, never a partial write, and so that the new content survives a power
loss once the call returns.

    with atomic_path("out/model.safetensors") as tmp:
        save_file(tensors, tmp)          # any writer that takes a path
    atomic_write_json("out/index.json", record)

Temporary files are created in the destination's directory (``rename`` is only
atomic within one file system) and are named ``.<name>.tmp-<pid>-<random>``, so
a crash before the rename leaves the previous file untouched and a stray temp
file that readers ignore; :func:`remove_stale_temps` deletes such leftovers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
    "fsync_file",
    "remove_stale_temps",
    "temp_name_for",
]

_TMP_MARK = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename/creation inside it is durable.

    No-op on platforms where directories cannot be opened (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except (PermissionError, IsADirectoryError):  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on dirs
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync the contents of a regular file written by someone else (e.g. a library
    that only takes a path)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name_for(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary path in the same directory as ``path``."""
    p = Path(path)
    return p.with_name(f".{p.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit fsync it, rename it
    over ``path`` and fsync the directory; on an exception remove it.

    The temp file does not exist when the block starts (the writer creates it);
    if the block exits normally without creating it, ``FileNotFoundError`` is
    raised rather than silently keeping the old file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name_for(dest)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file {tmp} for {dest}")
        fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Atomically replace ``path`` with ``data``. Returns the path."""
    dest = Path(path)
    with atomic_path(dest) as tmp:
        # O_EXCL: the name is fresh; never follow a planted file/symlink.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` (encoded with ``encoding``)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Atomically replace ``path`` with ``obj`` serialised as JSON (UTF-8, trailing
    newline). Non-finite floats are rejected (they are not valid JSON)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def remove_stale_temps(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete temp files left in ``directory`` by writers that crashed before the
    rename (optionally only those for destination ``name``). Only call this when
    no other process is writing into the directory. Returns what was removed."""
    removed = []
    prefix = f".{name}{_TMP_MARK}" if name else "."
    for p in Path(directory).glob(f"{prefix}*"):
        if _TMP_MARK in p.name and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# Convenience for callers that need a scratch directory on the same file system
# as a destination (e.g. to build a whole folder and swap it in).
def temp_dir_beside(path: str | os.PathLike[str]) -> Path:
    """Create and return a fresh temporary directory next to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{p.name}{_TMP_MARK}", dir=p.parent))
