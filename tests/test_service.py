"""The HTTP service in process: every route through ``TestClient(create_app(settings))``, on a real
index of CIFAR-10 test images encoded by a real (random-init) artifact. No mocks.

The helpers at the top (index building, PNG encoding, a `infomax serve` subprocess) are shared
with test_service_http.py and test_web.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

with warnings.catch_warnings():
    # Starlette 1.x suggests "httpx2" for its TestClient; httpx is what the project pins.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from infomax.artifact import load_encoder
from infomax.data import load_cifar10
from infomax.imagestore import ImageStore
from infomax.index import INDEX_FILE, EmbeddingIndex
from service.app import create_app
from service.batching import Batcher
from service.errors import ApiError
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 300


# ----------------------------------------------------------------------------- shared helpers


def png_bytes(pixels: torch.Tensor | np.ndarray) -> bytes:
    """uint8 (3, H, W) tensor -> PNG file bytes."""
    arr = pixels.permute(1, 2, 0).numpy() if isinstance(pixels, torch.Tensor) else pixels
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG")
    return buf.getvalue()


def build_index(folder: Path, artifact: Path, data_dir: Path, n: int = N_ITEMS) -> dict:
    """An index folder of the first ``n`` CIFAR-10 test images (ids 0..n-1, their PNGs stored)."""
    enc = load_encoder(artifact)
    images, labels = load_cifar10(data_dir, "test")
    images, labels = images[:n], labels[:n]
    pngs = [png_bytes(t) for t in images]
    index = EmbeddingIndex.create(enc.z_dim, path=folder, artifact={"id": enc.id, "path": str(artifact)})
    store = ImageStore(folder)
    store.put_many((i, pngs[i], "image/png") for i in range(n))
    index.add(
        enc.embed(images).numpy(),
        ids=np.arange(n),
        metadata=[{"source": f"cifar10:test:{i}", "label": int(labels[i])} for i in range(n)],
    )
    index.save()
    index.close()
    store.close()
    return {"folder": folder, "pngs": pngs, "labels": labels.tolist(), "pixels": images}


def copy_index(template: dict, dest: Path) -> Path:
    shutil.copytree(template["folder"], dest)
    return dest


@pytest.fixture(scope="session")
def index_template(tmp_path_factory, tiny_artifact, data_dir) -> dict:
    return build_index(tmp_path_factory.mktemp("svc") / "template", tiny_artifact, data_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ``infomax serve`` process on 127.0.0.1."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "infomax.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"infomax serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"infomax serve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextmanager
def serve(args: list[str], log: Path, env: dict | None = None):
    server = Server(args, log, env)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """An app sets torch's (process-wide) thread count; later test modules keep their own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shared_index(index_template, tmp_path_factory) -> Path:
    return copy_index(index_template, tmp_path_factory.mktemp("svc-shared") / "index")


@pytest.fixture(scope="module")
def client(tiny_artifact, shared_index):
    """One app for the tests that only read (and the bad-input tests, which must change nothing)."""
    settings = Settings(
        artifact=tiny_artifact,
        index=shared_index,
        max_k=50,
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
        max_images_per_request=4,
        max_sample=100,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def writable(tiny_artifact, index_template, tmp_path):
    """A fresh copy of the index and an app over it, per test."""
    folder = copy_index(index_template, tmp_path / "index")

    def make(**kw) -> TestClient:
        return TestClient(create_app(Settings(artifact=tiny_artifact, index=folder, **kw)))

    return folder, make


@pytest.fixture(scope="session")
def encoder(tiny_artifact):
    return load_encoder(tiny_artifact)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_file(size=(40, 30), mode="RGB", fmt="PNG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds almost no pixel data: decoding
    it would fail as truncated, so a 413 proves the size was refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- search


def test_search_by_upload_finds_the_image_itself_first(client, index_template):
    for i in (5, 123):
        r = client.post("/v1/search", files={"file": ("q.png", index_template["pngs"][i], "image/png")}, data={"k": "7"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"] == "image" and body["k"] == 7 and len(body["neighbors"]) == 7
        top = body["neighbors"][0]
        assert top["id"] == i and top["score"] == pytest.approx(1.0, abs=1e-4)
        assert top["label"] == index_template["labels"][i] and top["source"] == f"cifar10:test:{i}"
        assert top["image_url"] == f"/v1/items/{i}/image"
        scores = [n["score"] for n in body["neighbors"]]
        assert scores == sorted(scores, reverse=True)


def test_search_by_base64_vector_and_id_agree(client, index_template, encoder):
    png = index_template["pngs"][42]
    by_image = client.post("/v1/search", json={"image": b64(png), "k": 6}).json()
    code = encoder.embed(index_template["pixels"][42:43])[0].tolist()
    by_vector = client.post("/v1/search", json={"vector": code, "k": 6}).json()
    assert by_vector["query"] == "vector"
    assert [n["id"] for n in by_image["neighbors"]] == [n["id"] for n in by_vector["neighbors"]]
    assert by_image["neighbors"][0]["id"] == 42
    # by id: the item itself is left out, the rest is the same ranking
    by_id = client.post("/v1/search", json={"id": 42, "k": 5}).json()
    assert by_id["query"] == "id"
    assert [n["id"] for n in by_id["neighbors"]] == [n["id"] for n in by_vector["neighbors"][1:6]]


def test_search_default_k_and_data_url_prefix(client, index_template):
    r = client.post("/v1/search", json={"image": "data:image/png;base64," + b64(index_template["pngs"][3])})
    assert r.status_code == 200 and r.json()["k"] == 10 and len(r.json()["neighbors"]) == 10


# ----------------------------------------------------------------------------- embed


def test_embed_gives_the_artifact_codes_in_upload_order(client, index_template, encoder):
    ids = [7, 0, 99]
    expected = encoder.embed(index_template["pixels"][ids]).numpy()
    r = client.post("/v1/embed", files=[("file", (f"{i}.png", index_template["pngs"][i], "image/png")) for i in ids])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == encoder.id and body["dim"] == encoder.z_dim
    np.testing.assert_allclose(np.array(body["codes"]), expected, rtol=1e-4, atol=1e-5)
    r = client.post("/v1/embed", json={"images": [b64(index_template["pngs"][i]) for i in ids]})
    np.testing.assert_allclose(np.array(r.json()["codes"]), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "size,mode,fmt",
    [
        ((100, 60), "RGBA", "PNG"),
        ((50, 80), "L", "JPEG"),
        ((33, 33), "RGB", "GIF"),
        ((64, 48), "RGB", "WEBP"),
        ((20, 20), "RGB", "BMP"),
    ],
)
def test_embed_accepts_any_size_mode_and_web_format(client, encoder, size, mode, fmt):
    data = image_file(size, mode, fmt)
    r = client.post("/v1/embed", files={"file": ("x", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    # the same preprocessing as the library (resize, mode conversion) gives the same code
    expected = encoder.embed(Image.open(io.BytesIO(data)))[0].numpy()
    np.testing.assert_allclose(np.array(r.json()["codes"][0]), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- items


def test_add_read_image_search_delete_roundtrip(writable, index_template):
    folder, make = writable
    png = image_file((32, 32), seed=7)
    with make() as c:
        r = c.post(
            "/v1/items",
            files={"file": ("new.png", png, "image/png")},
            data={"metadata": json.dumps({"source": "upload:new.png", "label": 4, "photographer": "ann"})},
        )
        assert r.status_code == 201, r.text
        (new_id,) = r.json()["ids"]
        assert new_id == N_ITEMS  # the next free id
        item = c.get(f"/v1/items/{new_id}").json()
        assert item == {
            "id": new_id,
            "source": "upload:new.png",
            "label": 4,
            "meta": {"photographer": "ann"},
            "image_url": f"/v1/items/{new_id}/image",
        }
        img = c.get(f"/v1/items/{new_id}/image")
        assert img.status_code == 200 and img.content == png and img.headers["content-type"] == "image/png"
        assert img.headers["x-content-type-options"] == "nosniff"
        hit = c.post("/v1/search", files={"file": ("q.png", png, "image/png")}).json()["neighbors"][0]
        assert hit["id"] == new_id and hit["score"] == pytest.approx(1.0, abs=1e-4)
        assert c.get("/readyz").json()["items"] == N_ITEMS + 1

        r = c.delete(f"/v1/items/{new_id}")
        assert r.status_code == 200 and r.json() == {"id": new_id, "deleted": True}
        assert c.get(f"/v1/items/{new_id}").status_code == 404
        gone = c.get(f"/v1/items/{new_id}/image")
        assert gone.status_code == 404 and gone.json()["code"] == "not_found"
        ids = [n["id"] for n in c.post("/v1/search", files={"file": ("q.png", png, "image/png")}).json()["neighbors"]]
        assert new_id not in ids
        assert c.delete(f"/v1/items/{new_id}").status_code == 404
        # an id is never handed out twice, even after its item was deleted
        again = c.post("/v1/items", files={"file": ("b.png", png, "image/png")}).json()["ids"]
        assert again == [new_id + 1]
    assert ImageStore(folder, read_only=True).get(new_id) is None


def test_add_items_json_with_ids_and_conflicts_change_nothing(writable, index_template):
    _, make = writable
    a, b = image_file(seed=1), image_file(seed=2)
    with make() as c:
        r = c.post(
            "/v1/items", json={"items": [{"image": b64(a), "id": 5000, "metadata": {"label": 1}}, {"image": b64(b), "id": 5001}]}
        )
        assert r.status_code == 201, r.text
        assert r.json()["ids"] == [5000, 5001]
        assert c.get("/v1/items/5000").json()["label"] == 1
        # an id already taken: 409, and neither item of the request is added
        r = c.post("/v1/items", json={"items": [{"image": b64(a), "id": 6000}, {"image": b64(b), "id": 5001}]})
        assert r.status_code == 409 and r.json()["code"] == "id_exists" and "5001" in r.json()["detail"]
        assert c.get("/v1/items/6000").status_code == 404
        assert c.get("/readyz").json()["items"] == N_ITEMS + 2
        # multipart with ids, one per file
        r = c.post(
            "/v1/items", files=[("file", ("a", a, "image/png")), ("file", ("b", b, "image/png"))], data={"id": ["7000", "7001"]}
        )
        assert r.status_code == 201 and r.json()["ids"] == [7000, 7001]
        # ids allocated afterwards continue after the largest one
        r = c.post("/v1/items", files={"file": ("a", a, "image/png")})
        assert r.json()["ids"] == [7002]


def test_sample_returns_distinct_indexed_items(client):
    r = client.get("/v1/items/sample", params={"n": 24})
    assert r.status_code == 200
    ids = [it["id"] for it in r.json()["items"]]
    assert len(ids) == len(set(ids)) == 24 and all(0 <= i < N_ITEMS for i in ids)
    assert len(client.get("/v1/items/sample", params={"n": 100}).json()["items"]) == 100


# ----------------------------------------------------------------------------- bad input


def _cases(pngs: list[bytes]):
    png = pngs[0]
    dim = 32
    text = ("x.txt", b"this is not an image, just some text", "text/plain")
    return [
        # name, request kwargs, status, code, fragment of the message
        ("not an image", dict(files={"file": text}), 400, "not_an_image", "not an image"),
        (
            "truncated image",
            dict(files={"file": ("t.png", png[: len(png) * 2 // 3], "image/png")}),
            400,
            "corrupt_image",
            "truncated",
        ),
        ("cut inside header", dict(files={"file": ("t.png", png[:20], "image/png")}), 400, None, "t.png"),
        ("empty file", dict(files={"file": ("e.png", b"", "image/png")}), 400, "empty_image", "empty"),
        (
            "tiff not accepted",
            dict(files={"file": ("x.tif", image_file(fmt="TIFF"), "image/tiff")}),
            400,
            "not_an_image",
            "accepted format",
        ),
        (
            "over the pixel limit",
            dict(files={"file": ("big.png", png_claiming(2000, 1000), "image/png")}),
            413,
            "image_too_large",
            "2000x1000 = 2000000 pixels",
        ),
        (
            "decompression bomb",
            dict(files={"file": ("bomb.png", png_claiming(100_000, 100_000), "image/png")}),
            413,
            "image_too_large",
            "bomb.png",
        ),
        (
            "upload over the size limit",
            dict(files={"file": ("huge.png", png + b"\0" * 250_000, "image/png")}),
            413,
            "payload_too_large",
            "200000 bytes",
        ),
        (
            "chunked upload over the size limit",
            dict(content=iter([b"{" + b" " * 50_000] * 6), headers={"content-type": "application/json"}),
            413,
            "payload_too_large",
            "200000 bytes",
        ),
        ("bad base64", dict(json={"image": "###not base64###"}), 400, "invalid_base64", "base64"),
        ("base64 of text", dict(json={"image": b64(b"hello world")}), 400, "not_an_image", "image"),
        ("vector of wrong dimension", dict(json={"vector": [0.1] * (dim - 1)}), 422, "invalid_vector", "dimension 31"),
        (
            "vector with NaN",
            dict(
                content=json.dumps({"vector": [0.1] * (dim - 1) + [float("nan")]}), headers={"content-type": "application/json"}
            ),
            422,
            "invalid_vector",
            "NaN",
        ),
        (
            "vector with inf",
            dict(
                content='{"vector": [' + ",".join(["1e999"] + ["0.5"] * (dim - 1)) + "]}",
                headers={"content-type": "application/json"},
            ),
            422,
            "invalid_vector",
            "inf",
        ),
        ("vector beyond float32", dict(json={"vector": [1e39] + [0.5] * (dim - 1)}), 422, "invalid_vector", "float32"),
        ("vector of zeros", dict(json={"vector": [0.0] * dim}), 422, "invalid_vector", "zeros"),
        ("vector of strings", dict(json={"vector": ["a"] * dim}), 422, "invalid_request", "vector.0"),
        ("k = 0", dict(json={"id": 1, "k": 0}), 422, "invalid_k", "from 1 to 50"),
        ("k over max_k", dict(json={"id": 1, "k": 51}), 422, "invalid_k", "got 51"),
        ("k not an integer", dict(json={"id": 1, "k": 2.5}), 422, "invalid_request", "k"),
        (
            "k not a number (multipart)",
            dict(files={"file": ("a.png", png, "image/png")}, data={"k": "ten"}),
            422,
            "invalid_request",
            "k must be an integer",
        ),
        (
            "k over max_k (multipart)",
            dict(files={"file": ("a.png", png, "image/png")}, data={"k": "1000"}),
            422,
            "invalid_k",
            "got 1000",
        ),
        ("unknown id", dict(json={"id": 987654}), 404, "not_found", "987654"),
        ("negative id", dict(json={"id": -1}), 422, "invalid_request", "id"),
        (
            "malformed JSON",
            dict(content=b'{"id": 3,', headers={"content-type": "application/json"}),
            400,
            "invalid_json",
            "malformed JSON",
        ),
        (
            "JSON not UTF-8",
            dict(content=b'{"id": "\xff"}', headers={"content-type": "application/json"}),
            400,
            "invalid_json",
            "UTF-8",
        ),
        ("empty JSON body", dict(content=b"", headers={"content-type": "application/json"}), 400, "invalid_json", "empty"),
        ("JSON array", dict(json=[1, 2]), 422, "invalid_request", "object"),
        ("no query", dict(json={"k": 3}), 422, "invalid_request", "exactly one of"),
        ("two queries", dict(json={"id": 3, "vector": [1.0] * dim}), 422, "invalid_request", "exactly one of"),
        ("unknown field", dict(json={"id": 3, "kk": 4}), 422, "invalid_request", "kk"),
        (
            "wrong content type",
            dict(content=b"id=3", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            "multipart without the file field",
            dict(files={"image": ("a.png", png, "image/png")}),
            422,
            "invalid_request",
            "'file'",
        ),
        (
            "multipart without boundary",
            dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
            400,
            "invalid_multipart",
            "boundary",
        ),
        (
            "two files for one search",
            dict(files=[("file", ("a", png, "image/png")), ("file", ("b", png, "image/png"))]),
            400,
            "invalid_multipart",
            "files",
        ),
    ]


def test_every_bad_search_input_gets_a_4xx_json_error_naming_it(client, index_template):
    before = client.get("/readyz").json()["items"]
    for name, kwargs, status, code, fragment in _cases(index_template["pngs"]):
        r = client.post("/v1/search", **kwargs)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text}"
        body = r.json()
        assert set(body) >= {"detail", "code"}, name
        if code:
            assert body["code"] == code, f"{name}: {body}"
        assert fragment in body["detail"], f"{name}: {body['detail']!r} lacks {fragment!r}"
        assert "Traceback" not in r.text
    assert client.get("/readyz").json()["items"] == before


def _item_cases(png: bytes):
    many = [("file", (f"{i}.png", png, "image/png")) for i in range(5)]
    return [
        ("post", "/v1/embed", dict(files=many), 400, "Too many files"),
        ("post", "/v1/embed", dict(json={"images": [b64(png)] * 5}), 422, "limit is 4"),
        ("post", "/v1/embed", dict(json={"images": []}), 422, "images"),
        ("post", "/v1/embed", dict(files={"file": ("x.txt", b"plain text", "text/plain")}), 400, "not an image"),
        (
            "post",
            "/v1/items",
            dict(files={"file": ("a.png", png, "image/png")}, data={"metadata": "{not json"}),
            400,
            "metadata[0] is not valid JSON",
        ),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"metadata": "[1]"}), 422, "JSON object"),
        (
            "post",
            "/v1/items",
            dict(files={"file": ("a.png", png, "image/png")}, data={"metadata": '{"label": "cat"}'}),
            422,
            "label",
        ),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"metadata": '{"x": NaN}'}), 422, "NaN"),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"metadata": '{"id": 4}'}), 422, "'id'"),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"id": ["1", "2"]}), 422, "one per file"),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"id": "-3"}), 422, "ids must"),
        ("post", "/v1/items", dict(files={"file": ("a.png", png, "image/png")}, data={"id": "x"}), 422, "integer"),
        (
            "post",
            "/v1/items",
            dict(json={"items": [{"image": b64(png), "id": 1}, {"image": b64(png), "id": 1}]}),
            422,
            "duplicate ids",
        ),
        (
            "post",
            "/v1/items",
            dict(json={"items": [{"image": b64(png), "id": 9000}, {"image": b64(png)}]}),
            422,
            "every item or for none",
        ),
        ("post", "/v1/items", dict(json={"items": [{"image": b64(png), "id": 3}]}), 409, "already"),
        ("post", "/v1/items", dict(json={"items": [{"image": b64(png[:100])}]}), 400, "truncated"),
        (
            "post",
            "/v1/items",
            dict(files=[("file", ("a", png, "image/png")), ("file", ("b", b"", "image/png"))]),
            400,
            "file[1] ('b') is empty",
        ),
        ("get", "/v1/items/424242", {}, 404, "no item with id 424242"),
        ("get", "/v1/items/abc", {}, 422, "item_id"),
        ("get", f"/v1/items/{2**63}", {}, 422, "item_id"),
        ("get", "/v1/items/424242/image", {}, 404, "424242"),
        ("delete", "/v1/items/424242", {}, 404, "424242"),
        ("get", "/v1/items/sample?n=0", {}, 422, "n"),
        ("get", "/v1/items/sample?n=101", {}, 422, "max_sample"),
        ("get", "/v1/items/sample?n=many", {}, 422, "n"),
        ("put", "/v1/items", {}, 405, "Method Not Allowed"),
        ("get", "/v2/search", {}, 404, "no route"),
    ]


def test_bad_embed_and_item_inputs(client, index_template):
    before = client.get("/readyz").json()["items"]
    for method, path, kwargs, status, fragment in _item_cases(index_template["pngs"][0]):
        r = client.request(method.upper(), path, **kwargs)
        assert r.status_code == status, f"{method} {path} {kwargs.get('data')}: {r.status_code} {r.text}"
        assert fragment in r.json()["detail"], f"{path}: {r.json()}"
        assert r.json()["code"]
    assert client.get("/readyz").json()["items"] == before


def test_no_input_above_produced_a_500(writable, index_template):
    """Every bad input above, sent to an app of its own (so the test stands alone, in any order):
    its metrics count each answer, and none is a 5xx."""
    _, make = writable
    with make(max_k=50, max_upload_bytes=200_000, max_image_pixels=1_000_000, max_images_per_request=4, max_sample=100) as c:
        sent = 0
        for _, kwargs, *_ in _cases(index_template["pngs"]):
            c.post("/v1/search", **kwargs)
            sent += 1
        for method, path, kwargs, *_ in _item_cases(index_template["pngs"][0]):
            c.request(method.upper(), path, **kwargs)
            sent += 1
        text = c.get("/metrics").text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("infomax_http_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    assert sum(counts.values()) >= sent, (counts, sent)  # every answer above is counted ...
    assert not any(s.startswith("5") for s in counts), counts  # ... and none was a server error
    assert 'code="invalid_vector"' in text and 'code="payload_too_large"' in text


def test_unexpected_errors_are_json_500_without_traceback(tiny_artifact, shared_index):
    # read-only: the module's `client` app is the folder's one writer
    app = create_app(Settings(artifact=tiny_artifact, index=shared_index, read_only=True))

    def boom():
        raise RuntimeError("secret internal detail")

    app.add_api_route("/boom", boom)  # a route that fails the way a bug would
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "code": "internal_error"}
    assert "secret" not in r.text and "Traceback" not in r.text


# ----------------------------------------------------------------------------- security, modes


def test_api_key_guards_writes_and_optionally_reads(writable, index_template, caplog):
    _, make = writable
    key = "k3y-that-must-never-be-logged"
    png = index_template["pngs"][1]
    caplog.set_level(logging.DEBUG)
    with make(api_key=key) as c:
        assert c.post("/v1/search", json={"id": 1}).status_code == 200  # reads are open
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            r = c.post("/v1/items", files={"file": ("a.png", png, "image/png")}, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", headers
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.delete("/v1/items/1", headers=headers).status_code == 401
        assert c.get("/readyz").json()["items"] == N_ITEMS
        r = c.post("/v1/items", files={"file": ("a.png", png, "image/png")}, headers={"X-API-Key": key})
        assert r.status_code == 201
        r = c.delete(f"/v1/items/{r.json()['ids'][0]}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    with make(api_key=key, api_key_for_reads=True) as c:
        for path in ("/v1/info", "/metrics", "/v1/items/1", "/v1/items/1/image", "/v1/items/sample"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": key}).status_code == 200, path
        assert c.post("/v1/search", json={"id": 1}).status_code == 401
        assert c.post("/v1/search", json={"id": 1}, headers={"X-API-Key": key}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200  # the page itself; it asks for the key
        assert c.get("/v1/info", headers={"X-API-Key": key}).json()["key_required_for_reads"] is True
    assert key not in caplog.text


def test_read_only_refuses_writes_and_leaves_files_untouched(writable, index_template):
    folder, make = writable
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with make(read_only=True) as c:
        r = c.post("/v1/items", files={"file": ("a.png", index_template["pngs"][0], "image/png")})
        assert r.status_code == 403 and r.json()["code"] == "read_only"
        assert c.delete("/v1/items/3").status_code == 403
        assert c.post("/v1/search", json={"id": 3}).status_code == 200
        assert c.get("/v1/items/3/image").content == index_template["pngs"][3]
        assert c.get("/v1/info").json()["read_only"] is True
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert {name: after[name] for name in before} == before
    # SQLite readers of a WAL database may create its -shm/-wal side files, but write no frames
    assert all(name.endswith(("-shm", "-wal")) for name in set(after) - set(before))
    assert all(len(after[name]) == 0 for name in set(after) - set(before) if name.endswith("-wal"))


def test_read_only_instance_picks_up_the_writers_items(writable, index_template):
    folder, make = writable
    png = image_file(seed=11)
    with make() as writer, make(read_only=True, refresh_s=0.05) as reader:
        new_id = writer.post("/v1/items", files={"file": ("a.png", png, "image/png")}).json()["ids"][0]
        # Readers are eventually consistent: the refresh loop applies the writer's log every refresh_s.
        deadline = time.monotonic() + 10
        while True:
            hit = reader.post("/v1/search", files={"file": ("q.png", png, "image/png")}).json()["neighbors"][0]
            if hit["id"] == new_id or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert hit["id"] == new_id
        assert reader.get(f"/v1/items/{new_id}/image").content == png


def test_readiness_before_load_and_after_a_failed_load(tiny_artifact, writable):
    folder, _ = writable
    app = create_app(Settings(artifact=tiny_artifact, index=folder))
    c = TestClient(app)  # not entered: the lifespan has not loaded anything
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "not_ready"
    r = c.post("/v1/search", json={"id": 1})
    assert r.status_code == 503 and r.json()["code"] == "not_ready"
    # What is served is not there yet: reaching for it is the same 503, never a None to trip on.
    for name in ("model", "index", "batcher", "decode_limiter"):
        with pytest.raises(ApiError) as e:
            getattr(app.state.service, name)
        assert (e.value.status, e.value.code, e.value.message) == (503, "not_ready", "model and index are loading")

    (folder / INDEX_FILE).write_bytes(b"garbage, not a FAISS index")
    app = create_app(Settings(artifact=tiny_artifact, index=folder, background_load=True))
    with TestClient(app) as c:
        deadline = time.monotonic() + 20
        while "failed" not in c.get("/readyz").text and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get("/readyz")
        assert r.status_code == 503 and INDEX_FILE in r.json()["detail"]
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/search", json={"id": 1}).status_code == 503
        with pytest.raises(ApiError, match=f"failed to load: .*{INDEX_FILE}"):
            _ = app.state.service.index


def test_startup_refuses_an_index_of_another_encoder(tiny_grey_artifact, writable):
    folder, _ = writable
    from infomax.index import IndexMismatchError

    with pytest.raises(IndexMismatchError, match="artifact mismatch"):
        with TestClient(create_app(Settings(artifact=tiny_grey_artifact, index=folder))):
            pass


def test_create_index_starts_empty_and_bound_to_the_artifact(tiny_artifact, tmp_path, encoder):
    folder = tmp_path / "fresh"
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder, create_index=True))) as c:
        assert c.get("/readyz").json()["items"] == 0
        assert c.post("/v1/search", json={"vector": [1.0] * 32}).json()["neighbors"] == []
        assert c.get("/v1/items/sample").json()["items"] == []
        png = image_file(seed=3)
        r = c.post("/v1/items", files={"file": ("a.png", png, "image/png")})
        assert r.status_code == 201 and r.json()["ids"] == [0]
    assert EmbeddingIndex.load(folder).info["artifact"]["id"] == encoder.id
    with pytest.raises(FileNotFoundError, match="--create-index"):
        with TestClient(create_app(Settings(artifact=tiny_artifact, index=tmp_path / "missing"))):
            pass


# ----------------------------------------------------------------------------- metrics, OpenAPI, page


def test_metrics_per_app_registry(writable, tiny_artifact, shared_index, index_template):
    _, make = writable
    # b reads the module's shared folder, whose writer is the `client` app
    with make() as a, TestClient(create_app(Settings(artifact=tiny_artifact, index=shared_index, read_only=True))) as b:
        a.get("/v1/items/3")
        a.get("/v1/items/4")
        a.get("/v1/items/999999")
        a.post("/v1/search", files={"file": ("q.png", index_template["pngs"][2], "image/png")})
        a.post("/v1/items", files={"file": ("q.png", image_file(seed=5), "image/png")})
        text = a.get("/metrics").text
        other = b.get("/metrics").text
    assert 'infomax_http_requests_total{method="GET",route="/v1/items/{item_id}",status="200"} 2.0' in text
    assert 'infomax_http_requests_total{method="GET",route="/v1/items/{item_id}",status="404"} 1.0' in text
    assert 'infomax_http_errors_total{code="not_found",route="/v1/items/{item_id}"} 1.0' in text
    assert 'infomax_http_request_duration_seconds_count{method="POST",route="/v1/search"} 1.0' in text
    assert "infomax_encode_batch_images_count 2.0" in text  # one search, one add
    assert f"infomax_index_items {float(N_ITEMS + 1)}" in text
    assert "infomax_ready 1.0" in text
    assert "/v1/items/{item_id}" not in other  # the second app counted nothing of the first's
    assert f"infomax_index_items {float(N_ITEMS)}" in other


def test_openapi_documents_the_v1_api(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/embed",
        "/v1/search",
        "/v1/items",
        "/v1/items/{item_id}",
        "/v1/items/{item_id}/image",
        "/v1/items/sample",
        "/v1/info",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    content = paths["/v1/search"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert content["application/json"]["schema"]["$ref"] == "#/components/schemas/SearchRequest"
    schemas = spec["components"]["schemas"]
    assert {"SearchRequest", "EmbedRequest", "AddItemsRequest", "NewItem", "SearchResponse", "ErrorBody"} <= set(schemas)
    assert "413" in paths["/v1/search"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def test_web_page_and_assets_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text
    assert "/v1/search" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/nope.js").status_code == 404


# ----------------------------------------------------------------------------- batching


def test_batcher_gathers_concurrent_jobs_and_keeps_their_order():
    """The first job holds the worker (inside fn) while 19 more queue up: then they run as batches
    of at most 8, in arrival order. Each step waits for an event (fn entered, the jobs queued),
    not for time, so the batches are exactly [0], [1..8], [9..16], [17..19] on any machine."""
    seen: list[list[int]] = []
    entered, gate = threading.Event(), threading.Event()

    def fn(payloads):
        entered.set()
        assert gate.wait(60), "the test never opened the gate"
        seen.append(list(payloads))
        return [p * 10 for p in payloads]

    async def run(enabled: bool) -> list[int]:
        batcher = Batcher(fn, max_batch_size=8, max_wait_ms=0, enabled=enabled)
        try:
            first = asyncio.ensure_future(batcher.submit(0))
            assert await asyncio.to_thread(entered.wait, 60), "the first job never reached fn"
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 20)]
            while batcher._queue.qsize() < 19:  # each task queues its job at its first step
                await asyncio.sleep(0)
            gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            gate.set()
            batcher.close()

    assert asyncio.run(run(True)) == [i * 10 for i in range(20)]
    assert seen == [[0], list(range(1, 9)), list(range(9, 17)), list(range(17, 20))]
    seen.clear()
    entered.clear()
    gate.clear()
    assert asyncio.run(run(False)) == [i * 10 for i in range(20)]
    assert seen == [[i] for i in range(20)]


def test_batcher_waits_for_company_on_its_way_and_reports_errors():
    """While pending() says a request is on its way, the worker waits (up to max_wait_ms) for it
    instead of running a batch of one: the second job is submitted only once the worker has asked
    (an event, not a sleep), and the two run together."""
    batches: list[list[int]] = []
    coming = [1]
    asked = threading.Event()

    def pending() -> int:
        asked.set()
        return coming[0]

    def fn(payloads):
        batches.append(list(payloads))
        if any(p < 0 for p in payloads):
            raise ValueError("negative")
        return payloads

    async def run() -> None:
        batcher = Batcher(fn, max_batch_size=64, max_wait_ms=600_000, pending=pending)
        try:
            first = asyncio.ensure_future(batcher.submit(1))
            assert await asyncio.to_thread(asked.wait, 60), "the worker never looked for company"
            coming[0] = 0  # the awaited request arrives; no other is on its way
            assert await asyncio.wait_for(asyncio.gather(first, batcher.submit(2)), 60) == [1, 2]
            with pytest.raises(ValueError, match="negative"):
                await asyncio.wait_for(batcher.submit(-1), 60)
        finally:
            batcher.close()

    asyncio.run(run())
    assert batches == [[1, 2], [-1]]


def test_batcher_does_not_make_a_lone_request_wait_and_bounds_the_wait():
    """pending() = 0 (no other request on its way): a job runs at once even with max_wait_ms of ten
    minutes (it answers within the 60 s the test allows). pending() = 1 and nobody comes: the batch
    runs after max_wait_ms, not before (a lower bound, which load cannot break)."""
    coming = [0]

    async def run() -> float:
        batcher = Batcher(lambda p: p, max_batch_size=64, max_wait_ms=600_000, pending=lambda: coming[0])
        try:
            assert await asyncio.wait_for(batcher.submit(1), 60) == 1
        finally:
            batcher.close()
        coming[0] = 1
        batcher = Batcher(lambda p: p, max_batch_size=64, max_wait_ms=300, pending=lambda: coming[0])
        try:
            t0 = time.monotonic()
            assert await asyncio.wait_for(batcher.submit(2), 60) == 2
            return time.monotonic() - t0
        finally:
            batcher.close()

    assert asyncio.run(run()) >= 0.3


@pytest.mark.parametrize(
    "line,expected",
    [
        ('"POST /v1/items?api_key=s3cr3t HTTP/1.1" 401', '"POST /v1/items?api_key=*** HTTP/1.1" 401'),
        ("GET /v1/search?k=3&access_token=abc;x=1&Signature=zz", "GET /v1/search?k=3&access_token=***;x=1&Signature=***"),
        ("GET /v1/items/3?k=5", "GET /v1/items/3?k=5"),  # nothing secret: unchanged
        ("the key is THE-KEY, twice THE-KEY", "the key is ***, twice ***"),
    ],
)
def test_log_lines_are_redacted(line, expected):
    from service.serve import redact

    assert redact(line, "THE-KEY") == expected
