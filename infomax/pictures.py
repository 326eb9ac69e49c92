"""The pictures of an index's items, for its image store (``infomax index build --images``).

Items name their image by source: ``cifar10:test:17`` (a data set, split and position) or a path
relative to the embedded folder. Data-set images are stored as lossless PNGs of their true pixels;
a folder's files are stored as they are when they are small and in a format browsers show, and
otherwise as a JPEG thumbnail (longest side ``max_side``), so an index of large photos stays small.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from infomax.errors import DataError
from infomax.imagestore import FORMATS


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (C, H, W) with C in {1, 3} -> PNG bytes (grey stays grey)."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"expected uint8 pixels of shape (1|3, H, W), got {a.dtype} {a.shape}")
    img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def file_picture(path: Path, *, max_side: int = 256, max_bytes: int = 512 << 10) -> tuple[bytes, str]:
    """The stored form of an image file: its own bytes when the format is one browsers show and it
    is at most ``max_bytes`` and ``max_side``; otherwise a JPEG thumbnail (EXIF orientation applied)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        if fmt in FORMATS and len(data) <= max_bytes and max(img.size) <= max_side:
            return data, FORMATS[fmt]
        from PIL import ImageOps

        # A phone photo of 50-200 MP is decoded at 1/2-1/8 scale straight from the JPEG's DCT (a
        # thumbnail needs no more): tens of ms and MB instead of seconds and gigabytes.
        img.draft("RGB", (max_side, max_side))
        thumb = ImageOps.exif_transpose(img)
        thumb.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        thumb.convert("RGB").save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"


def item_pictures(
    manifest: dict, ids: Sequence[int], sources: Sequence[str], *, data_dir: str | Path | None = None, max_side: int = 256
) -> Iterator[tuple[int, bytes, str]]:
    """(id, bytes, mime) for every item of an embeddings folder (its ``manifest``, ids and sources).
    A folder's file that is gone or unreadable is skipped (its item then has no picture)."""
    if manifest.get("kind") == "dataset":
        from infomax.data import load_dataset

        name, split = manifest["data"], manifest["split"]
        images, _ = load_dataset(name, data_dir, split)
        prefix = f"{name}:{split}:"
        for id_, src in zip(ids, sources):
            if not src.startswith(prefix):
                raise DataError(f"item {id_}: source {src!r} is not an image of {name} {split}")
            yield int(id_), png_bytes(images[int(src[len(prefix) :])].numpy()), "image/png"
        return
    from infomax.data.folder import UNREADABLE_ERRORS  # what embedding skips, the picture skips too

    root = Path(manifest["data"])
    for id_, src in zip(ids, sources):
        try:
            data, mime = file_picture(root / src, max_side=max_side)
        except UNREADABLE_ERRORS:
            continue
        yield int(id_), data, mime
