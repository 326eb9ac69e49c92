"""Index folders as wholes: a completed folder built beside its target is renamed into place
(never a half-written folder at the target), under the writer locks of both."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from infomax.atomic import fsync_dir, temp_dir_beside
from infomax.index.locks import REPLACE_FIX, IndexLockedError, WriterLock


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse to write a folder over a file, or over a non-empty folder without ``overwrite``
    (build and save(path) alike), before any work is done."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} is not empty (pass overwrite=True to replace the index there)")


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
        raise PermissionError(
            f"{folder}: cannot {doing}: no permission to write there ({e.strerror}); open it "
            f"read-only (read_only=True; `infomax serve --read-only`) or fix the folder's "
            f"permissions"
        ) from None


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
