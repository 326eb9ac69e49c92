"""``index.faiss``: the FAISS index followed by a 32-byte trailer (magic, payload length, last
applied log sequence number, CRC-32). Writing one (to a temp file the caller renames) and reading
one back, refusing truncated, foreign or corrupt files before FAISS sees them."""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import faiss

from infomax.atomic import temp_name_for
from infomax.index.errors import IndexLoadError

INDEX_FILE = "index.faiss"

_TRAILER = struct.Struct("<8sQqII")
_TRAILER_MAGIC = b"IMXSNAP1"

_VERIFY_CRC_MAX_BYTES = 2 << 30  # load(verify=None) checks the CRC of files up to 2 GiB


def _is_faiss_header(head: bytes) -> bool:
    # Every FAISS index fourcc starts with 'I' ("IxM2", "IwFl", "IHNf", "IBxF", ...)
    return len(head) == 4 and head[:1] == b"I" and all(0x20 <= c < 0x7F for c in head)


def _file_crc(path: Path, length: int) -> int:
    crc = 0
    with open(path, "rb") as f:
        remaining = length
        while remaining:
            chunk = f.read(min(remaining, 8 << 20))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
    return crc & 0xFFFFFFFF


def _check_snapshot_file(p: Path, verify: bool | None) -> tuple[int, int]:
    """Validate ``index.faiss`` before FAISS sees it. Returns (payload_len, seq)."""
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise IndexLoadError(f"{p}: missing (the index folder has no {INDEX_FILE})") from None
    except OSError as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    if size < 4 + _TRAILER.size:
        raise IndexLoadError(f"{p}: truncated or empty ({size} bytes, not a FAISS index)")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
            f.seek(size - _TRAILER.size)
            trailer = f.read(_TRAILER.size)
    except OSError as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    if not _is_faiss_header(head):
        raise IndexLoadError(f"{p}: not a FAISS index (file starts with {head!r})")
    magic, payload_len, seq, crc, _ = _TRAILER.unpack(trailer)
    if magic != _TRAILER_MAGIC:
        raise IndexLoadError(
            f"{p}: truncated or not written by infomax (the {len(_TRAILER_MAGIC)}-byte snapshot trailer "
            f"{_TRAILER_MAGIC!r} is missing at the end of the {size}-byte file)"
        )
    if payload_len != size - _TRAILER.size:
        raise IndexLoadError(
            f"{p}: size mismatch: the trailer says {payload_len} bytes of index data but the file holds "
            f"{size - _TRAILER.size} (truncated or spliced)"
        )
    if seq < 0:
        raise IndexLoadError(f"{p}: corrupt snapshot trailer (sequence number {seq})")
    if verify is None:
        verify = size <= _VERIFY_CRC_MAX_BYTES
    if verify:
        actual = _file_crc(p, payload_len)
        if actual != crc:
            raise IndexLoadError(f"{p}: checksum mismatch (CRC-32 {actual:08x}, trailer says {crc:08x}): the file is corrupt")
    return payload_len, seq


def _read_faiss(p: Path, *, mmap: bool) -> tuple[Any, bool]:
    """faiss.read_index with memory mapping where the type allows it. Returns
    (index, mmapped)."""
    with open(p, "rb") as f:
        head = f.read(4)
    attempts: list[int] = []
    if mmap:
        # IVF: inverted lists mapped as (read-only) OnDiskInvertedLists; flat codes
        # (Flat, HNSW storage): IO_FLAG_MMAP_IFC.
        if head[:2] in (b"Iw", b"IW") and hasattr(faiss, "IO_FLAG_MMAP"):
            attempts.append(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
            attempts.append(faiss.IO_FLAG_MMAP_IFC)
    attempts.append(0)
    last: Exception | None = None
    for flags in attempts:
        try:
            return faiss.read_index(str(p), flags), flags != 0
        except (RuntimeError, MemoryError, ValueError) as e:
            last = e
            continue
    detail = str(last).strip().splitlines()[-1] if last and str(last).strip() else repr(last)
    raise IndexLoadError(f"{p}: FAISS cannot read it (corrupt or truncated): {detail}")


def write_snapshot_tmp(index: Any, dest: Path, seq: int) -> Path:
    """Write ``index`` + trailer to a fresh temp file beside ``dest`` and fsync it.
    The caller renames it (or removes it)."""
    tmp = temp_name_for(dest)
    try:
        faiss.write_index(index, str(tmp))
        payload_len = tmp.stat().st_size
        crc = _file_crc(tmp, payload_len)
        with open(tmp, "ab") as f:
            f.write(_TRAILER.pack(_TRAILER_MAGIC, payload_len, int(seq), crc, 0))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp


def read_snapshot(folder: Path, *, mmap: bool, verify: bool | None) -> tuple[Any, int, bool]:
    """Read index.faiss consistently even if another writer renames a new
    snapshot over it meanwhile. Returns (index, seq, mmapped)."""
    p = folder / INDEX_FILE
    for _ in range(5):
        try:
            st1 = p.stat()
        except FileNotFoundError:
            raise IndexLoadError(f"{p}: missing (the index folder has no {INDEX_FILE})") from None
        _, seq = _check_snapshot_file(p, verify)
        index, mmapped = _read_faiss(p, mmap=mmap)
        st2 = p.stat()
        if (st1.st_ino, st1.st_size, st1.st_mtime_ns) == (st2.st_ino, st2.st_size, st2.st_mtime_ns):
            return index, seq, mmapped
    raise IndexLoadError(f"{p}: keeps changing while being read")
