"""The stored form of a folder's image files (infomax.pictures.file_picture): large photos become
small thumbnails without being decoded whole."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from infomax.pictures import file_picture

REPO = Path(__file__).resolve().parents[1]


def _photo(path: Path, w: int, h: int, orientation: int | None = None) -> Path:
    # smooth gradients: a realistic JPEG size, and orientation visible in the pixels
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    pixels = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 60, np.float32)], axis=2
    ).astype(np.uint8)
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(path, format="JPEG", quality=90, exif=exif)
    return path


def test_a_large_photo_becomes_a_thumbnail_the_right_way_up(tmp_path):
    data, mime = file_picture(_photo(tmp_path / "p.jpg", 4000, 3000, orientation=6), max_side=256)
    assert mime == "image/jpeg"
    thumb = Image.open(io.BytesIO(data))
    assert thumb.size == (192, 256)  # 4000x3000 turned a quarter by EXIF 6, longest side 256


def test_a_50_mp_photo_is_not_decoded_whole(tmp_path):
    """Peak memory of the process making the thumbnail (VmHWM) grows by far less than the
    150 MB a whole 8660x5774 RGB decode takes: the JPEG is decoded at reduced scale (draft), also
    when its EXIF orientation must be applied (which loads the image before the thumbnail would)."""
    photo = _photo(tmp_path / "big.jpg", 8660, 5774, orientation=6)
    child = textwrap.dedent("""
        import sys
        from pathlib import Path
        from infomax.pictures import file_picture

        def kb(field):
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident size, to the current size
        before = kb("VmRSS")
        data, _ = file_picture(Path(sys.argv[1]))
        print((kb("VmHWM") - before) // 1024, len(data))
    """)
    out = subprocess.run(
        [sys.executable, "-c", child, str(photo)], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    grown_mb, size = int(out[0]), int(out[1])
    assert size > 0
    assert grown_mb < 40, f"making the thumbnail of a 50 MP photo grew the process by {grown_mb} MB"
