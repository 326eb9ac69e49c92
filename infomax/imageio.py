"""Decoding one image into the uint8 tensor an encoder takes: shared by the data modules, the
artifact's ``embed`` and the HTTP service. Kept free of Lightning so that serving does not pay for
importing it."""

from __future__ import annotations

import io
import logging
import os
import struct
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from infomax.errors import SettingError
from infomax.validate import positive_int

__all__ = ["ImageSource", "ImageTooLargeError", "MAX_DECODED_PIXELS", "MAX_HEADER_PIXELS", "load_image", "plan_decode"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
ImageSource = PathLike | BinaryIO | bytes | bytearray | memoryview | Image.Image

# Decompression bombs. What an image costs is what is decoded, not what its header claims: a
# baseline JPEG is decoded reduced (libjpeg's 1/2, 1/4 or 1/8 scale, down to no less than the
# model's input), so a 200 M pixel phone photo decodes to ~3 M pixels in 0.2 s, and a 250 M pixel
# JPEG of one colour (3.9 MB) decodes in 0.19 s (measured on 2 cores). Every other image costs its
# full size; so does a progressive JPEG, whose coefficients libjpeg holds whole (2 bytes a pixel)
# at any scale. Checked from the header, before a pixel is decoded.
MAX_HEADER_PIXELS = 250_000_000  # any image: 200 MP phones fit; bounds the entropy decoding of a JPEG
MAX_DECODED_PIXELS = 2 * 89_478_485  # what is decoded: PIL's own bomb limit, which folders had before

# PIL refuses at open() whatever claims over twice its MAX_IMAGE_PIXELS (179 M by default), which
# would refuse the 200 MP photos decoded reduced above; the limits above take its place.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_HEADER_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_HEADER_PIXELS


class ImageTooLargeError(Image.DecompressionBombError):
    """An image over a pixel limit, refused before decoding: says its size and the limit."""


def _check_size_channels(size: int, channels: int) -> None:
    positive_int("size", size)
    if channels not in (1, 3):
        raise SettingError(f"channels must be 1 or 3, got {channels!r}", setting="channels")


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
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0)


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


def _reducible(img: Image.Image) -> bool:
    """Whether libjpeg can decode ``img`` at a reduced scale without holding it whole."""
    return img.format == "JPEG" and not img.info.get("progressive") and not img.info.get("progression")


def plan_decode(img: Image.Image, size: int, channels: int, max_pixels: int = MAX_DECODED_PIXELS) -> tuple[int, int]:
    """Sets up the decoding of a freshly opened ``img`` (header read, no pixels yet): a baseline
    JPEG at the smallest scale that still covers ``size`` x ``size``. Returns the size that will be
    decoded; raises :class:`ImageTooLargeError` when the header claims more than
    ``MAX_HEADER_PIXELS`` or the decoded image would hold more than ``max_pixels``."""
    width, height = img.size
    if width * height > MAX_HEADER_PIXELS:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height} pixels, over the limit of "
            f"{MAX_HEADER_PIXELS} for any image (refused before decoding)"
        )
    if _reducible(img):
        # Much faster for large photos; the later bicubic resize hides the difference.
        img.draft("L" if channels == 1 else None, (size, size))
    dw, dh = img.size
    if dw * dh > max_pixels:
        reduced = f", decoded at {dw}x{dh}" if (dw, dh) != (width, height) else ""
        whole = "; a progressive JPEG is decoded whole" if img.format == "JPEG" and not _reducible(img) else ""
        raise ImageTooLargeError(
            f"{width}x{height}{reduced} = {dw * dh} pixels, over the limit of {max_pixels} (refused before decoding{whole})"
        )
    return dw, dh


def load_image(source: ImageSource, size: int, channels: int = 3, *, max_pixels: int = MAX_DECODED_PIXELS) -> torch.Tensor:
    """Load one image as uint8 [channels, size, size].

    ``source`` is a path, a binary file object, raw bytes or a PIL image. The image is
    EXIF-rotated, converted to RGB or L (palette, alpha, CMYK and 16-bit handled), its shorter
    side resized to ``size`` (bicubic, antialiased) and center-cropped. A file is checked against
    the pixel limits before decoding (:func:`plan_decode`: large baseline JPEGs are decoded
    reduced, ``max_pixels`` bounds what is decoded). PIL's errors (``UnidentifiedImageError``,
    ``OSError`` for truncated files...) and :class:`ImageTooLargeError` propagate.
    """
    _check_size_channels(size, channels)
    if isinstance(source, Image.Image):
        return _prepare(source, size, channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    with Image.open(source) as img:
        plan_decode(img, size, channels, max_pixels)
        return _prepare(img, size, channels)
