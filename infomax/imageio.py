"""Decoding one image into the uint8 tensor an encoder takes: shared by the data modules, the
artifact's ``embed`` and the HTTP service. Kept free of Lightning so that serving does not pay for
importing it."""

from __future__ import annotations

import io
import logging
import os
import struct
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = ["ImageSource", "load_image"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ImageSource = Union[PathLike, BinaryIO, bytes, bytearray, memoryview, Image.Image]


def _check_size_channels(size: int, channels: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float greyscale images to 8-bit "L".

    PIL's own convert("L") clips (it does not rescale) 16-bit values, which turns most 16-bit
    photos white; we rescale instead.
    """
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        finite_max = np.nanmax(arr) if arr.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0  # float images are usually in [0, 1]
    elif img.mode == "I" and arr.size and arr.max() <= 255:
        scale = 1.0  # an "I" image that holds 8-bit values (e.g. made by PIL from "L")
    else:
        scale = 255.0 / 65535.0  # 16-bit range
    out = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to "RGB" (channels=3) or "L" (channels=1).

    Transparent images are composited on white, because fully transparent pixels often hold
    arbitrary colours that a plain convert would expose.
    """
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)  # CMYK, YCbCr, LAB, HSV, 1, L<->RGB
    return img


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and center-crop to ``size`` x ``size``.

    Done as one resample of the central square (``box=``), which is the same geometry but
    never materialises a huge intermediate image for extreme aspect ratios.
    """
    width, height = img.size
    if width == 0 or height == 0:
        raise ValueError("image has zero width or height")
    if width == height == size:
        return img
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return img.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0
    )


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.array(img, dtype=np.uint8)  # copy: writable, owned by the tensor
    if array.ndim == 2:
        return torch.from_numpy(array).unsqueeze(0)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _prepare(img: Image.Image, size: int, channels: int) -> torch.Tensor:
    img.load()  # decode now, so a broken file fails here with PIL's own error
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, TypeError, KeyError, SyntaxError, struct.error) as exc:
        # A malformed EXIF block should not make otherwise readable pixels unusable.
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    img = _to_mode(img, channels)
    return _pil_to_tensor(_resize_center_crop(img, size))


def load_image(source: ImageSource, size: int, channels: int = 3) -> torch.Tensor:
    """Load one image as uint8 [channels, size, size].

    ``source`` is a path, a binary file object, raw bytes or a PIL image. The image is
    EXIF-rotated, converted to RGB or L (palette, alpha, CMYK and 16-bit handled), its shorter
    side resized to ``size`` (bicubic, antialiased) and center-cropped. PIL's errors
    (``UnidentifiedImageError``, ``OSError`` for truncated files...) propagate.
    """
    _check_size_channels(size, channels)
    if isinstance(source, Image.Image):
        return _prepare(source, size, channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        if img.format == "JPEG":
            # Let libjpeg decode at a reduced scale that still covers size x size: much
            # faster for large photos, and the later bicubic resize hides the difference.
            img.draft("L" if channels == 1 else None, (size, size))
        return _prepare(img, size, channels)
