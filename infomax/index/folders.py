"""Index folders as wholes: a completed folder built beside its target is renamed into place
(never a half-written folder at the target), under the writer locks of both."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from infomax.atomic import fsync_dir, temp_dir_beside
from infomax.index.locks import REPLACE_FIX, IndexLockedError, WriterLock
from infomax.index.record import RECORD_FILE
from infomax.index.snapshot import INDEX_FILE


def same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def lock_for_writing(folder: Path, doing: str, fix: str | None = None) -> WriterLock:
    """The folder's writer lock, or a one-line refusal naming the holder (or the permission missing)."""
    try:
        return WriterLock.acquire(folder, doing=doing, **({"fix": fix} if fix else {}))
    except IndexLockedError:
        raise
    except PermissionError as e:
        raise PermissionError(f"{folder}: cannot {doing}: no permission to write there ({e.strerror}); open it "
                              f"read-only (read_only=True; `infomax serve --read-only`) or fix the folder's "
                              f"permissions") from None


def install_as_writer(tmpdir: Path, target: Path, *, bind: bool) -> WriterLock | None:
    """Move the completed folder ``tmpdir`` to ``target``, refused while a writer has ``target`` open.

    The old folder's lock is held across the swap, so no writer can open it in between; with
    ``bind`` the new folder's lock is taken on ``tmpdir`` before the rename (it moves with the
    folder) and returned, so no other writer can open the new folder before its builder does."""
    new_lock = WriterLock.acquire(tmpdir, doing="bind it") if bind else None
    old_lock = None
    try:
        if target.is_dir():
            old_lock = lock_for_writing(target, "replace it", REPLACE_FIX)
        _install_dir(tmpdir, target)
    except BaseException:
        if new_lock is not None:
            new_lock.release()
        raise
    finally:
        if old_lock is not None:
            old_lock.release()
    return new_lock


def folder_id(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder: a rebuild renames a new folder into place, which changes it."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _install_dir(tmpdir: Path, target: Path) -> None:
    """Move a completed folder into place; an existing target is swapped out and
    deleted (not atomic as a whole, but at no moment is a half-written folder at
    ``target``)."""
    if target.exists():
        old = temp_dir_beside(target)
        os.rmdir(old)
        os.replace(target, old)
        os.replace(tmpdir, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmpdir, target)
        fsync_dir(target.parent)


def remove_old_temps(folder: Path, min_age_s: float = 3600.0) -> None:
    """Delete snapshot/record temp files left by writers that crashed before their
    rename (only old ones: a live writer may be about to rename a fresh one)."""
    now = time.time()
    for name in (INDEX_FILE, RECORD_FILE):
        for p in folder.glob(f".{name}.tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > min_age_s:
                    p.unlink()
