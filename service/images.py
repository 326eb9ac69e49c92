"""Safe decoding of uploaded images.

* Only raster formats a browser can show are opened (PNG, JPEG, GIF, WebP, BMP): PIL's other
  plugins (EPS runs Ghostscript, for one) are never reached with request bytes.
* ``Image.open`` parses the header only; the pixels that decoding would hold are checked against
  ``max_image_pixels`` before a single one is decoded (``infomax.imageio.plan_decode``), so a small
  file that claims 50000 x 50000 pixels (a decompression bomb) is refused at once (413). A baseline
  JPEG is decoded reduced to what the model needs (a 50 MP phone photo holds ~0.8 M pixels), so
  phone photos pass; every image is refused over ``MAX_HEADER_PIXELS`` (250 M) whatever its format.
* Empty, truncated, corrupt or non-image bytes raise :class:`ApiError` 400 naming the file.
* Pixels go through ``infomax.data.load_image``: the same conversion and resize as training.

The size of the upload itself is bounded before this runs (see :mod:`service.limits`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from infomax.imageio import ImageTooLargeError, load_image, plan_decode
from infomax.imagestore import FORMATS  # format -> MIME type of what is stored and served back
from service.errors import ApiError

ACCEPTED = ", ".join(f.lower() for f in FORMATS)
# What PIL raises for damaged data, depending on the plugin.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, TypeError, MemoryError)
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.ASCII)


@dataclass(frozen=True)
class DecodedImage:
    pixels: torch.Tensor  # uint8 (C, S, S), ready for the encoder
    data: bytes  # the uploaded bytes (stored as is: the format was checked)
    mime: str
    width: int
    height: int


def decode_image(data: bytes, *, name: str, size: int, channels: int, max_pixels: int) -> DecodedImage:
    """Uploaded bytes -> pixels for the encoder; refuses anything unsafe or unreadable."""
    if not data:
        raise ApiError(400, "empty_image", f"{name} is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except UnidentifiedImageError:
        raise ApiError(400, "not_an_image", f"{name} is not an image in an accepted format ({ACCEPTED})") from None
    except Image.DecompressionBombError as e:
        raise ApiError(413, "image_too_large", f"{name}: {e}") from None
    except _DECODE_ERRORS as e:
        raise ApiError(400, "corrupt_image", f"{name} cannot be read: its header is damaged or truncated ({e})") from None
    with img:
        width, height = img.size
        fmt = img.format or ""
        try:
            plan_decode(img, size, channels, max_pixels)
        except ImageTooLargeError as e:
            raise ApiError(413, "image_too_large", f"{name} is {e}") from None
        if width == 0 or height == 0:
            raise ApiError(400, "corrupt_image", f"{name} has no pixels ({width}x{height})")
        if fmt not in FORMATS:  # pragma: no cover - Image.open(formats=...) already guarantees it
            raise ApiError(400, "not_an_image", f"{name} is {fmt}, not one of {ACCEPTED}")
        try:
            pixels = load_image(img, size, channels)
        except Image.DecompressionBombError as e:
            raise ApiError(413, "image_too_large", f"{name}: {e}") from None
        except _DECODE_ERRORS as e:
            raise ApiError(400, "corrupt_image", f"{name} cannot be decoded: it is truncated or corrupt ({e})") from None
    return DecodedImage(pixels=pixels, data=data, mime=FORMATS[fmt], width=width, height=height)


def decode_base64(text: object, *, name: str) -> bytes:
    """Standard base64 (a ``data:image/...;base64,`` prefix is accepted) -> bytes."""
    if not isinstance(text, str):
        raise ApiError(422, "invalid_request", f"{name} must be a base64 string, got {type(text).__name__}")
    text = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "invalid_base64", f"{name} is not valid base64 ({e})") from None
