"""The hostile-file corpus: uploads a public image service must survive, generated in code (no
binary fixtures in the repository), each with the answer the service documents for it.

    from hostile import corpus, stream_upload
    for case in corpus():          # Case(name, filename, mime, data, status, code, note)
        ...

Valid-but-odd images (1x1, 16-bit, CMYK, palette with transparency, LA/RGBA, many GIF frames, a
huge EXIF block, a real decompression bomb *under* the pixel limit, a 50 M pixel phone photo) must
be accepted (200/201);
everything else gets its specific 4xx (service/images.py, service/limits.py):

* 400 ``empty_image``: zero bytes
* 400 ``not_an_image``: text or SVG named .png, TIFF (not an accepted format)
* 400 ``corrupt_image``: truncated PNG / JPEG, damaged pixel data, a zTXt chunk inflating to 64 MiB
  (PIL refuses text chunks over 1 MiB)
* 400 ``not_an_image`` also for a 3-byte JPEG start (too short to identify)
* 413 ``image_too_large``: a header claiming 30000x30000 with almost no data, and a *real*
  30000x30000 PNG (900 M pixels, ~110 kB of zlib), a JPEG claiming 65000x65000, a progressive
  30 M pixel JPEG (decoded whole): refused from the header, before decoding
* 413 ``payload_too_large``: a 200 MB upload, generated while it is sent (:func:`stream_upload`)

The expensive members (the real bombs) are built once per process and cached.
"""

from __future__ import annotations

import functools
import io
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    mime: str
    data: bytes
    status: int  # the documented answer of POST /v1/embed (201 instead of 200 for POST /v1/items)
    code: str | None  # the error code of a 4xx (None for a success)
    note: str = ""


# ----------------------------------------------------------------------------- building blocks


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) followed by a few bytes of pixel data:
    decoding it would fail (truncated); only a check of the header refuses it with 413."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def png_real_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A complete, valid greyscale PNG of width x height pixels, all black, written row by row
    through a zlib stream (never holding the raw pixels): at 1 bit per pixel a 30000x30000 image
    is 112 MB raw, ~110 kB compressed, and 900 MB once a decoder expands it to 8-bit."""
    row_bytes = (width * bit_depth + 7) // 8
    row = b"\0" * (1 + row_bytes)  # filter byte 0 + zero pixels
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    full, rest = divmod(height, 256)
    for _ in range(full):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * rest))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png_16bit_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, which PIL cannot write itself."""
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\0" + px[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def png_with_chunk(base: bytes, kind: bytes, data: bytes) -> bytes:
    """``base`` (a PNG) with one more chunk inserted right after IHDR."""
    ihdr_end = 8 + 8 + 13 + 4
    return base[:ihdr_end] + _chunk(kind, data) + base[ihdr_end:]


def png_bad_crc(base: bytes) -> bytes:
    """``base`` with the CRC of its first IDAT chunk wrong."""
    i = base.index(b"IDAT") - 4
    n = struct.unpack(">I", base[i : i + 4])[0]
    crc_at = i + 8 + n
    return base[:crc_at] + bytes([base[crc_at] ^ 0xFF]) + base[crc_at + 1 :]


def png_corrupt_idat(base: bytes) -> bytes:
    """``base`` with bytes in the middle of its compressed pixel data inverted (CRC fixed up, so
    only the zlib stream is broken)."""
    i = base.index(b"IDAT") - 4
    n = struct.unpack(">I", base[i : i + 4])[0]
    data = bytearray(base[i + 8 : i + 8 + n])
    for j in range(n // 2, min(n // 2 + 32, n)):
        data[j] ^= 0xFF
    return base[:i] + _chunk(b"IDAT", bytes(data)) + base[i + 12 + n :]


def exif_block(size: int) -> bytes:
    """A TIFF/EXIF block of about ``size`` bytes: an orientation tag and a huge MakerNote."""
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: normal
    exif[0x927C] = b"M" * size  # MakerNote: opaque bytes
    return exif.tobytes()


def jpeg_with_app_segments(base: bytes, payload: bytes, marker: int = 0xE1, count: int = 1) -> bytes:
    """``base`` (a JPEG) with ``count`` APPn segments of ``payload`` (each at most 65533 bytes)
    right after SOI."""
    assert len(payload) <= 65533
    seg = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return base[:2] + seg * count + base[2:]


def exif_loop_jpeg(base: bytes) -> bytes:
    """A JPEG whose EXIF IFD0 links to itself as the next IFD (an endless chain)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08"
    # IFD0 at offset 8: one entry (orientation = 6, i.e. rotate), next-IFD offset = 8 (itself)
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 8)
    return jpeg_with_app_segments(base, b"Exif\x00\x00" + tiff + ifd)


def phone_photo_jpeg(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A large photo-like baseline (or progressive) JPEG: smooth colour fields, 12 pixels a byte at
    quality 85, so that 50 M pixels fit in a 4.3 MB upload (built in ~1 s)."""
    small = Image.fromarray(_noise(width // 48, height // 48, 3, seed=9))
    big = small.resize((width, height), Image.Resampling.BILINEAR)
    return _save(big, "JPEG", quality=85, progressive=progressive)


def jpeg_claiming(base: bytes, width: int, height: int) -> bytes:
    """``base`` (a baseline JPEG) with its SOF0 header claiming width x height: refused from the
    header, since the scan holds only the original few blocks."""
    i = base.index(b"\xff\xc0")
    return base[: i + 5] + struct.pack(">HH", height, width) + base[i + 9 :]


def gif_many_frames(frames: int, size: int = 48) -> bytes:
    palette = list(np.random.default_rng(0).integers(0, 256, 16 * 3, dtype=np.uint8).tolist())
    imgs = []
    for i in range(frames):
        im = Image.fromarray((_noise(size, size, 1, seed=i) % 16).astype(np.uint8), mode="P")
        im.putpalette(palette)
        imgs.append(im)
    return _save(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=10, loop=0)


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen and first image claim width x height, with one byte of data."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return head + image + b"\x3b"


def bmp_claiming(width: int, height: int) -> bytes:
    """A BMP header claiming width x height 24-bit pixels, with none of them."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\0" * 16


# ----------------------------------------------------------------------------- the corpus


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[Case, ...]:
    rgb = _noise(64, 48, 3, seed=1)
    png = _save(Image.fromarray(rgb), "PNG")
    jpg = _save(Image.fromarray(rgb), "JPEG", quality=90)

    palette = Image.fromarray(_noise(40, 40, 3, seed=2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    rgba = np.dstack([_noise(40, 40, 3, seed=3), _noise(40, 40, 1, seed=4)])
    la = np.dstack([_noise(40, 40, 1, seed=5), _noise(40, 40, 1, seed=6)])
    i16 = Image.fromarray(np.random.default_rng(7).integers(0, 65536, (40, 40), dtype=np.uint16))
    cmyk = Image.fromarray(_noise(48, 48, 4, seed=8), mode="CMYK")
    p_rgba = Image.fromarray(rgba, "RGBA").convert("P", palette=Image.Palette.ADAPTIVE)  # alpha lost: re-add via tRNS
    big_exif = exif_block(4 << 20)

    text = b"this is not an image, only text pretending to be one\n" * 20
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="30000" height="30000">'
        b'<rect width="100%" height="100%"/></svg>'
    )
    ztxt_bomb = png_with_chunk(png, b"zTXt", b"comment\0\0" + zlib.compress(b"A" * (64 << 20), 9))

    ok, bad = 200, None
    return (
        # ---- accepted: valid, if odd, images
        Case("1x1", "one.png", "image/png", _save(Image.fromarray(_noise(1, 1, 3)), "PNG"), ok, bad),
        Case("1x1-grey-jpeg", "one.jpg", "image/jpeg", _save(Image.fromarray(_noise(1, 1, 1)), "JPEG"), ok, bad),
        Case(
            "1x3000-strip",
            "strip.png",
            "image/png",
            _save(Image.fromarray(_noise(1, 3000, 3)), "PNG"),
            ok,
            bad,
            "aspect ratio 3000:1",
        ),
        Case("16bit-grey-png", "i16.png", "image/png", _save(i16, "PNG"), ok, bad, "mode I;16"),
        Case("16bit-rgb-png", "rgb48.png", "image/png", png_16bit_rgb(40, 30), ok, bad, "48 bits per pixel"),
        Case("cmyk-jpeg", "cmyk.jpg", "image/jpeg", _save(cmyk, "JPEG"), ok, bad),
        Case(
            "palette-tRNS", "pal.png", "image/png", _save(palette, "PNG", transparency=0), ok, bad, "P with a transparent index"
        ),
        Case(
            "palette-alpha",
            "palrgba.png",
            "image/png",
            _save(p_rgba, "PNG", transparency=bytes(range(0, 256, 1))[: len(p_rgba.getpalette() or []) // 3]),
            ok,
            bad,
            "P with a tRNS alpha per entry",
        ),
        Case("LA", "la.png", "image/png", _save(Image.fromarray(la, "LA"), "PNG"), ok, bad),
        Case("RGBA", "rgba.png", "image/png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), ok, bad),
        Case("1bit", "bw.png", "image/png", _save(Image.fromarray(_noise(33, 21, 1)).convert("1"), "PNG"), ok, bad),
        Case("gif-500-frames", "anim.gif", "image/gif", gif_many_frames(500), ok, bad, "only frame 0 is decoded"),
        Case("webp", "x.webp", "image/webp", _save(Image.fromarray(rgb), "WEBP"), ok, bad),
        Case("bmp", "x.bmp", "image/bmp", _save(Image.fromarray(rgb), "BMP"), ok, bad),
        Case(
            "huge-exif-png",
            "exif.png",
            "image/png",
            _save(Image.fromarray(rgb), "PNG", exif=big_exif),
            ok,
            bad,
            f"{len(big_exif) >> 20} MiB eXIf chunk",
        ),
        Case(
            "huge-exif-jpeg",
            "exif.jpg",
            "image/jpeg",
            jpeg_with_app_segments(jpg, b"Exif\x00\x00" + exif_block(65000)[:65527], count=60),
            ok,
            bad,
            "60 APP1 segments of 64 kB",
        ),
        Case("exif-ifd-loop", "loop.jpg", "image/jpeg", exif_loop_jpeg(jpg), ok, bad, "IFD0 links to itself"),
        Case(
            "png-bad-idat-crc",
            "crc.png",
            "image/png",
            png_bad_crc(png),
            ok,
            bad,
            "IDAT checksum wrong, pixels intact (PIL does not verify IDAT CRCs)",
        ),
        Case(
            "bomb-under-limit",
            "bomb4800.png",
            "image/png",
            png_real_bomb(4800, 4800, bit_depth=8),
            ok,
            bad,
            "real 4800x4800 PNG: 23 M pixels, under the 24 M limit, decoded",
        ),
        Case(
            "phone-50mp-jpeg",
            "IMG_5000.JPG",
            "image/jpeg",
            phone_photo_jpeg(8660, 5774),
            ok,
            bad,
            "a 50 M pixel baseline JPEG (4.3 MB): decoded at 1/8 scale, 0.8 M pixels",
        ),
        # ---- refused
        Case("zero-bytes", "empty.png", "image/png", b"", 400, "empty_image"),
        Case("text-named-png", "text.png", "image/png", text, 400, "not_an_image"),
        Case("svg-named-png", "svg.png", "image/png", svg, 400, "not_an_image"),
        Case("tiff", "x.tif", "image/tiff", _save(Image.fromarray(rgb), "TIFF"), 400, "not_an_image", "not an accepted format"),
        Case("truncated-png", "trunc.png", "image/png", png[: len(png) * 2 // 3], 400, "corrupt_image"),
        Case("truncated-png-header", "trunc2.png", "image/png", png[:20], 400, "corrupt_image"),
        Case("truncated-jpeg", "trunc.jpg", "image/jpeg", jpg[: len(jpg) // 2], 400, "corrupt_image"),
        Case("jpeg-soi-only", "soi.jpg", "image/jpeg", b"\xff\xd8\xff", 400, "not_an_image", "3 bytes: too short to identify"),
        Case(
            "png-corrupt-idat",
            "idat.png",
            "image/png",
            png_corrupt_idat(png),
            400,
            "corrupt_image",
            "zlib stream of the pixels damaged",
        ),
        Case(
            "ztxt-bomb",
            "ztxt.png",
            "image/png",
            ztxt_bomb,
            400,
            "corrupt_image",
            "zTXt chunk inflating to 64 MiB: PIL refuses text chunks over 1 MiB (MAX_TEXT_CHUNK)",
        ),
        Case(
            "header-30000x30000",
            "claim.png",
            "image/png",
            png_header_only(30000, 30000),
            413,
            "image_too_large",
            "IHDR claims 900 M pixels, 100 bytes of data",
        ),
        Case(
            "bomb-30000x30000",
            "bomb.png",
            "image/png",
            png_real_bomb(30000, 30000),
            413,
            "image_too_large",
            "real PNG, 900 M pixels",
        ),
        Case("gif-claiming-65535", "claim.gif", "image/gif", gif_claiming(65535, 65535), 413, "image_too_large"),
        Case(
            "jpeg-claiming-65000",
            "claim.jpg",
            "image/jpeg",
            jpeg_claiming(jpg, 65000, 65000),
            413,
            "image_too_large",
            "SOF0 claims 4.2 G pixels: over the 250 M limit of any header",
        ),
        Case(
            "progressive-30mp-jpeg",
            "prog.jpg",
            "image/jpeg",
            phone_photo_jpeg(6000, 5000, progressive=True),
            413,
            "image_too_large",
            "progressive: libjpeg holds all 30 M pixels' coefficients, over the 24 M limit",
        ),
        Case("bmp-claiming-30000", "claim.bmp", "image/bmp", bmp_claiming(30000, 30000), 413, "image_too_large"),
    )


def corpus() -> list[Case]:
    return list(_corpus())


# ----------------------------------------------------------------------------- the 200 MB upload


@dataclass
class StreamResult:
    status: int | None
    body: bytes
    bytes_sent: int  # body bytes written before the answer arrived (or the server closed)
    total_bytes: int
    seconds: float
    error: str | None = None


def multipart_stream(
    total: int, *, field: str = "file", filename: str = "huge.png", boundary: str = "hostile-boundary-7c1e", chunk: int = 64 << 10
) -> tuple[bytes, Iterator[bytes], bytes, int]:
    """(head, body chunks, tail, length) of a multipart upload whose file part is ``total``
    bytes: a PNG signature followed by filler, produced chunk by chunk (never held in memory)."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + PNG_SIGNATURE
    tail = f"\r\n--{boundary}--\r\n".encode()
    fill = total - len(PNG_SIGNATURE)
    block = b"\x00" * chunk

    def gen() -> Iterator[bytes]:
        left = fill
        while left > 0:
            n = min(chunk, left)
            yield block if n == chunk else block[:n]
            left -= n

    return head, gen(), tail, len(head) + fill + len(tail)


def stream_upload(
    host: str,
    port: int,
    path: str,
    total: int = 200 * 10**6,
    *,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> StreamResult:
    """POST a ``total``-byte multipart upload over a raw socket, generated while it is sent, and
    stop sending as soon as the server answers (or closes). ``chunked``: Transfer-Encoding:
    chunked, no Content-Length, so the server cannot refuse from the header and must count bytes
    as they arrive. Returns how many body bytes had been sent when the answer came."""
    boundary = "hostile-boundary-7c1e"
    head, chunks, tail, length = multipart_stream(total, boundary=boundary)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: multipart/form-data; boundary={boundary}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    request_head = ("\r\n".join(lines) + "\r\n\r\n").encode()

    def frame(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data

    sent = 0
    received = b""
    error = None
    t0 = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(request_head)

        def pieces() -> Iterator[bytes]:
            yield head
            yield from chunks
            yield tail
            if chunked:
                yield b""  # the last-chunk marker comes from frame(b"") below

        answered = False
        for piece in pieces():
            # an answer (or a close) already waiting? then stop sending
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answered = True
                break
            try:
                sock.sendall(frame(piece) if piece or not chunked else b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError) as e:
                error = type(e).__name__
                answered = True
                break
            sent += len(piece)
        # read the answer (whatever is there until the server closes or the response is complete)
        sock.settimeout(timeout)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if _complete(received):
                    break
        except (TimeoutError, ConnectionResetError) as e:
            error = error or type(e).__name__
        del answered
    finally:
        sock.close()
    status = None
    body = b""
    if received.startswith(b"HTTP/1.1 "):
        status = int(received[9:12])
        body = received.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in received else b""
    return StreamResult(status, body, sent, length, time.monotonic() - t0, error)


def _complete(raw: bytes) -> bool:
    if b"\r\n\r\n" not in raw:
        return False
    head, body = raw.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


# ----------------------------------------------------------------------------- hostile filters


@dataclass(frozen=True)
class FilterCase:
    """A filter for ``POST /v1/search`` and the documented answer: in a JSON body (beside a
    vector) and as the multipart field ``filter`` (JSON text, beside an image). ``spec`` is the
    filter as Python data, or ``raw`` its exact JSON text (NaN, lone surrogates, malformed,
    nested past the parser's limit). ``max_results``: a 200 must hold at most this many neighbours
    (0: an injection attempt that must match nothing)."""

    name: str
    spec: object = None
    raw: str | None = None
    status: int = 422
    code: str | None = "invalid_filter"
    fragment: str = ""
    form_status: int | None = None  # when the multipart answer differs
    form_code: str | None = None
    form_fragment: str | None = None
    max_results: int | None = None

    def text(self) -> str:
        return self.raw if self.raw is not None else json.dumps(self.spec)

    def json_body(self, dim: int, k: int = 5) -> bytes:
        head = json.dumps({"vector": [0.1] * dim, "k": k})[:-1]
        return (head + ', "filter": ' + self.text() + "}").encode("utf-8", "surrogatepass")

    def form_text(self) -> str:
        return self.text()

    def expect(self, how: str) -> tuple[int, str | None]:
        if how == "form" and self.form_status is not None:
            return self.form_status, self.form_code
        return self.status, (self.code if self.status != 200 else None)

    def expected_fragment(self, how: str) -> str:
        return self.form_fragment if how == "form" and self.form_fragment is not None else self.fragment


def filter_corpus() -> list[FilterCase]:
    """Bad, hostile and heavy-but-valid filters with their documented answers (service/filters.py,
    infomax/index/filters.py): 422 ``invalid_filter`` naming the key for every bad filter, never 5xx."""
    nested = "[" * 50 + "1" + "]" * 50
    too_deep = "[" * 100_000 + "]" * 100_000
    F = FilterCase
    return [
        F("unknown key", {"colour": "red"}, fragment="'colour' is not filterable"),
        F("meta without a key", {"meta": {"camera": "x"}}, fragment="meta.<key>"),
        F("id is not filterable", {"id": 3}, fragment="not filterable"),
        F("SQL in a key", {"label; DROP TABLE items; --": 1}, fragment="not filterable"),
        F("empty key", {"": 1}, fragment="not filterable"),
        F("meta. alone", {"meta.": 1}, fragment="each name after 'meta.'"),
        F("quote in a meta key", {'meta.a"b': 1}, fragment="other than"),
        F("backslash in a meta key", {"meta.a\\b": 1}, fragment="other than"),
        F("NUL in a meta key", {"meta.a\u0000b": 1}, fragment="printable"),
        F("meta key of 10,000 characters", {"meta." + "a" * 10_000: 1}, fragment="1 to 128"),
        F("meta key 9 deep", {"meta." + ".".join("abcdefghi"): 1}, fragment="at most 8 nested"),
        F("17 keys", {f"meta.k{i}": i for i in range(17)}, fragment="at most 16"),
        F("label a string", {"label": "cat"}, fragment="integer label"),
        F("label a float", {"label": 2.5}, fragment="integer label"),
        F("label a boolean", {"label": True}, fragment="integer label"),
        F("label beyond int64", {"label": 2**70}, fragment="beyond int64"),
        F("label null", {"label": None}, fragment="got null"),
        F("label prefix", {"label": {"prefix": "1"}}, fragment='"prefix" applies to strings'),
        F("source a number", {"source": 7}, fragment="must be a string"),
        F("source prefix a number", {"source": {"prefix": 7}}, fragment='"prefix" takes a string'),
        F("meta null", {"meta.camera": None}, fragment="got null"),
        F("meta a list", {"meta.camera": ["x100"]}, fragment="string, number or boolean"),
        F("meta beyond int64", {"meta.iso": -(2**64)}, fragment="beyond int64"),
        F("unknown operator", {"meta.iso": {"gt": 100}}, fragment="unknown operator 'gt'"),
        F("two operators", {"source": {"in": ["a"], "prefix": "b"}}, fragment="exactly one operator"),
        F("no operator", {"source": {}}, fragment="exactly one operator"),
        F("in not a list", {"label": {"in": 3}}, fragment='"in" takes a list'),
        F("in with a wrong type", {"label": {"in": [1, "2"]}}, fragment="in[1] must be an integer"),
        F("in of lists", {"meta.a": {"in": json.loads(nested)}}, fragment="in[0] must be a string"),
        F("in of 1,001 values", {"label": {"in": list(range(1001))}}, fragment="at most 1000"),
        F("in of 100,000 values", {"label": {"in": list(range(100_000))}}, fragment="holds 100000 values"),
        F(
            "in of 300,000 values",
            {"label": {"in": list(range(300_000))}},
            fragment="holds 300000 values",
            form_status=400,
            form_code="invalid_multipart",
            form_fragment="maximum size",
        ),  # a 2 MB form field
        F("string of 5,000 characters", {"source": "x" * 5000}, fragment="at most 4096"),
        F("NaN", raw='{"meta.x": NaN}', fragment="finite"),
        F("Infinity", raw='{"meta.x": {"in": [1, -Infinity]}}', fragment="finite"),
        F("lone surrogate", raw='{"meta.camera": "\\ud800"}', fragment="lone surrogate"),
        F("filter a string", raw='"label=3"', fragment="must be a JSON object"),
        F(
            "filter text not an object",
            raw="label=3",
            status=400,
            code="invalid_json",
            fragment="malformed JSON",
            form_status=422,
            form_code="invalid_filter",
            form_fragment="not valid JSON",
        ),
        F("filter a list", [{"label": 3}], fragment="must be a JSON object"),
        F(
            "filter text not JSON",
            raw='{"label": 3',
            status=400,
            code="invalid_json",
            fragment="malformed JSON",
            form_status=422,
            form_code="invalid_filter",
            form_fragment="not valid JSON",
        ),
        F(
            "nested past the parser",
            raw=too_deep,
            status=400,
            code="invalid_json",
            fragment="nested too deeply",
            form_status=422,
            form_code="invalid_filter",
            form_fragment="nested too deeply",
        ),
        F("null", raw="null", status=200, form_status=422, form_code="invalid_filter", form_fragment="must be a JSON object"),
        # valid, if odd or heavy: answered, and injections match nothing
        F("empty object", {}, status=200),
        F("empty in list", {"label": {"in": []}}, status=200, max_results=0),
        F("empty prefix", {"source": {"prefix": ""}}, status=200),
        F("SQL in a value", {"source": "x' OR 1=1 --"}, status=200, max_results=0),
        F("SQL in a meta key", {"meta.a') OR 1=1 --": 1}, status=200, max_results=0),
        F("JSON path syntax in a meta key", {"meta.$[0]": 1, "meta.*": 1}, status=200, max_results=0),
        F("LIKE wildcards in a prefix", {"source": {"prefix": "%"}}, status=200, max_results=0),
        F("emoji", {"meta.camera": "\U0001f4f7", "source": {"prefix": "\U0001f4f7/"}}, status=200, max_results=0),
        F(
            "1,000 values of 500 characters",
            {"meta.camera": {"in": ["y" * 499 + str(i % 10) for i in range(1000)]}},
            status=200,
            max_results=0,
        ),
        F("every type in one list", {"meta.iso": {"in": [1, 1.5, "1", True, False, -0.0, 1e308]}}, status=200),
    ]


# ----------------------------------------------------------------------------- hostile explain values


@dataclass(frozen=True)
class ExplainCase:
    """A value of ``explain`` for ``POST /v1/search`` and its documented answer: ``json``, the exact
    JSON text of the value in a body beside a vector; ``form``, the multipart field's values beside
    an image (several: the field repeated). None: not sent that way. Every refusal is 422
    ``invalid_request`` naming ``explain``; the valid ones are answered 200 with heat maps (409
    ``explain_unavailable`` on a model without a local critic)."""

    name: str
    json: str | None = None
    form: tuple[str, ...] | None = None
    status: int = 422
    form_status: int = 422
    code: str = "invalid_request"


def explain_corpus() -> list[ExplainCase]:
    E = ExplainCase
    return [
        E("a string 'true'", json='"true"'),
        E("a word", json='"yes"', form=("yes",)),
        E("1 in JSON", json="1"),
        E("0 in JSON", json="0"),
        E("a float", json="1.0", form=("1.0",)),
        E("null", json="null", form=("null",)),
        E("a list", json="[true]", form=("[true]",)),
        E("an object", json='{"on": true}', form=('{"on": true}',)),
        E("NaN", json="NaN", form=("NaN",)),
        E("a lone surrogate", json='"\\ud800"'),
        E("10,000 characters", json=json.dumps("t" * 10_000), form=("t" * 10_000,)),
        E("empty", form=("",)),
        E("2", form=("2",)),
        E("-1", form=("-1",)),
        E("a checkbox's 'on'", form=("on",)),
        E("NUL", form=("\x00",)),
        E("true twice", form=("true", "true")),
        E("true and false", form=("true", "false")),
        # valid
        E("true", json="true", form=("true",), status=200, form_status=200),
        E("false", json="false", form=("false",), status=200, form_status=200),
        E("1 as text", form=("1",), form_status=200),
        E("upper case, spaces", form=(" TRUE ",), form_status=200),
    ]
