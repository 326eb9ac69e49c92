"""Real photos (issue 13 item 5): phones make 12-200 M pixel JPEGs. A baseline JPEG is decoded
reduced to what the model needs, so its cost is its decoded size; decompression bombs (every file
of tests/hostile.py) keep their documented answers. Real JPEGs written here with PIL; no mocks."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import corpus, jpeg_claiming, phone_photo_jpeg  # noqa: E402

from infomax.artifact import load_encoder  # noqa: E402
from infomax.imageio import MAX_HEADER_PIXELS, ImageTooLargeError, load_image  # noqa: E402
from service.errors import ApiError  # noqa: E402
from service.images import decode_image  # noqa: E402
from service.settings import Settings  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # Starlette's suggestion of httpx2
    from fastapi.testclient import TestClient  # noqa: E402

from service.app import create_app  # noqa: E402

DEFAULT_MAX_PIXELS = Settings.model_fields["max_image_pixels"].default


@pytest.fixture(scope="module")
def photo_50mp() -> bytes:
    return phone_photo_jpeg(8660, 5774)


def test_every_hostile_file_gets_its_documented_answer_from_the_decoder():
    """The corpus through the service's decoder with the default limit: 200 or the documented 4xx
    (the same answers test_reliability checks over HTTP, here in a second)."""
    wrong = []
    for case in corpus():
        try:
            decode_image(case.data, name=case.filename, size=32, channels=3, max_pixels=DEFAULT_MAX_PIXELS)
            got = (200, None)
        except ApiError as e:
            got = (e.status, e.code)
        if got != (case.status, case.code):
            wrong.append(f"{case.name}: {got}, documented {(case.status, case.code)}")
    assert not wrong


def test_a_50_megapixel_phone_photo_is_decoded_reduced_and_close_to_its_full_decode(photo_50mp):
    """Refused before ('8660x5774 = 50002840 pixels, over the limit of 24000000')."""
    decoded = decode_image(photo_50mp, name="IMG_5000.JPG", size=32, channels=3, max_pixels=DEFAULT_MAX_PIXELS)
    assert (decoded.width, decoded.height) == (8660, 5774) and decoded.pixels.shape == (3, 32, 32)
    with Image.open(io.BytesIO(photo_50mp)) as full:  # every pixel decoded, then the same resize
        reference = load_image(full.convert("RGB"), 32, 3)
    difference = (decoded.pixels.float() - reference.float()).abs().mean().item()
    assert difference < 2.0, f"reduced decode differs by {difference:.2f} grey levels on average"


def test_a_progressive_or_huge_jpeg_is_still_refused_before_decoding(photo_50mp):
    claiming = jpeg_claiming(photo_50mp, 20000, 20000)
    with (
        pytest.raises(
            ApiError, match=f"claim.jpg is 20000x20000 = 400000000 pixels, over the limit of {MAX_HEADER_PIXELS} for any image"
        ) as e,
        pytest.warns(Image.DecompressionBombWarning),
    ):  # PIL's warning, at open(), between 1 and 2 x its limit
        decode_image(claiming, name="claim.jpg", size=32, channels=3, max_pixels=DEFAULT_MAX_PIXELS)
    assert (e.value.status, e.value.code) == (413, "image_too_large")
    with pytest.raises(ApiError, match="4225000000 pixels") as e:  # over twice that: PIL's own check, at open()
        decode_image(jpeg_claiming(photo_50mp, 65000, 65000), name="c.jpg", size=32, channels=3, max_pixels=DEFAULT_MAX_PIXELS)
    assert (e.value.status, e.value.code) == (413, "image_too_large")
    progressive = phone_photo_jpeg(6000, 5000, progressive=True)
    with pytest.raises(ApiError, match="a progressive JPEG is decoded whole"):
        decode_image(progressive, name="prog.jpg", size=32, channels=3, max_pixels=DEFAULT_MAX_PIXELS)


def test_a_200_megapixel_photo_in_a_folder_is_read(tmp_path):
    """PIL's own bomb check refused anything over 179 M pixels at open(), so a 200 MP phone photo
    in a folder was skipped as a decompression bomb."""
    path = tmp_path / "IMG_200MP.JPG"
    gradient = Image.linear_gradient("L").resize((16320, 12240), Image.Resampling.BILINEAR)
    gradient.save(path, quality=85)
    del gradient
    pixels = load_image(path, 32, 1)
    assert pixels.shape == (1, 32, 32) and 100 < pixels.float().mean().item() < 155
    with (
        pytest.raises(ImageTooLargeError, match="20000x20000 = 400000000 pixels, over the limit of 250000000"),
        pytest.warns(Image.DecompressionBombWarning),
    ):
        load_image(jpeg_claiming(path.read_bytes(), 20000, 20000), 32, 1)


def test_the_service_embeds_a_50mp_photo(tmp_path, tiny_artifact, photo_50mp):
    settings = Settings(artifact=tiny_artifact, index=tmp_path / "index", create_index=True, max_upload_bytes=16 << 20)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/embed", files={"file": ("IMG_5000.JPG", photo_50mp, "image/jpeg")})
    assert r.status_code == 200, r.text
    expected = load_encoder(tiny_artifact).embed(load_image(photo_50mp, 32, 3)[None])[0]
    np.testing.assert_allclose(np.asarray(r.json()["codes"][0]), expected.numpy(), atol=1e-4)


def test_a_detailed_12_mp_phone_photo_is_taken_at_the_default_limits(tmp_path, tiny_artifact):
    """A 4000x3000 JPEG full of fine detail is ~10 MB: the default request limit (8 MiB before)
    answered it 413 payload_too_large."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    photo = buf.getvalue()
    assert len(photo) > 9 << 20
    settings = Settings(artifact=tiny_artifact, index=tmp_path / "index", create_index=True)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/embed", files={"file": ("IMG_0001.JPG", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
