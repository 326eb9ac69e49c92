"""Where an item came from and what it is (issue 13 item 4): an uploaded file's name is kept as the
source of the item it adds, /v1/info names the classes of an index of a known data set, and the web
page shows source and class under each picture (not only ``#2906``). A real index of CIFAR-10 test
images, real uploads, a real browser."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_web import LiveServer, _wait, browser, screenshot  # noqa: F401 (fixture)

from infomax.artifact import load_encoder
from infomax.data import load_cifar10
from infomax.data.registry import CLASS_NAMES
from infomax.imagestore import ImageStore
from infomax.index import EmbeddingIndex
from service.inputs import source_name
from service.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # Starlette's suggestion of httpx2
    from fastapi.testclient import TestClient

from service.app import create_app  # noqa: E402

N = 12


def _png(pixels) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buf, "PNG")
    return buf.getvalue()


def _index(folder: Path, artifact: Path, data_dir: Path, record: dict) -> tuple[Path, list[bytes], list[int]]:
    """An index of the first N CIFAR-10 test images as `infomax index build` writes it (source and
    label per item, no class name stored), its artifact record extended by ``record``."""
    enc = load_encoder(artifact)
    images, labels = load_cifar10(data_dir, "test")
    images, labels = images[:N], labels[:N].tolist()
    index = EmbeddingIndex.create(enc.z_dim, path=folder, artifact={"id": enc.id, "path": str(artifact), **record})
    pngs = [_png(im) for im in images]
    store = ImageStore(folder)
    store.put_many((i, pngs[i], "image/png") for i in range(N))
    store.close()
    index.add(
        enc.embed(images).numpy(),
        ids=np.arange(N),
        metadata=[{"source": f"cifar10:test:{i}", "label": labels[i]} for i in range(N)],
    )
    index.save()
    index.close()
    return folder, pngs, labels


@pytest.fixture
def cifar_index(tmp_path, tiny_artifact, data_dir):
    return _index(tmp_path / "index", tiny_artifact, data_dir, {"data": "cifar10", "split": "test"})


@pytest.mark.parametrize(
    "sent,kept",
    [
        ("IMG_7.JPG", "IMG_7.JPG"),
        ("C:\\Users\\me\\Pictures\\IMG_8.JPG", "IMG_8.JPG"),
        ("../../../etc/passwd.png", "passwd.png"),
        ("bad\x00name\n.png", "badname.png"),
        ("..", None),
        ("", None),
    ],
)
def test_an_uploaded_file_name_is_reduced_to_its_base_name(sent, kept):
    assert source_name(sent) == kept


def test_an_upload_without_metadata_keeps_its_file_name_as_source(cifar_index, tiny_artifact):
    """Before: "source": null, so an item added from the page or with curl could not be told apart."""
    folder, pngs, _ = cifar_index
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder))) as client:
        r = client.post(
            "/v1/items",
            files=[("file", ("C:\\phone\\IMG_2012.JPG", pngs[0], "image/png")), ("file", ("b.png", pngs[1], "image/png"))],
        )
        assert r.status_code == 201, r.text
        assert [it["source"] for it in r.json()["items"]] == ["IMG_2012.JPG", "b.png"]
        stored = client.get(f"/v1/items/{r.json()['ids'][0]}").json()
        assert stored["source"] == "IMG_2012.JPG" and stored["label"] is None
        # metadata without a source: the file name fills it in, the rest is kept
        r = client.post(
            "/v1/items",
            files={"file": ("dog.png", pngs[2], "image/png")},
            data={"metadata": json.dumps({"label": 5, "album": "holiday"})},
        )
        assert r.json()["items"][0] | {"id": 0, "image_url": ""} == {
            "id": 0,
            "source": "dog.png",
            "label": 5,
            "meta": {"album": "holiday"},
            "image_url": "",
        }
        # a source given by the caller wins over the file name
        r = client.post(
            "/v1/items",
            files={"file": ("x.png", pngs[3], "image/png")},
            data={"metadata": json.dumps({"source": "camera:roll:17"})},
        )
        assert r.json()["items"][0]["source"] == "camera:roll:17"


def test_info_names_the_classes_of_the_data_set_the_index_records(cifar_index, tmp_path, tiny_artifact, data_dir):
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=cifar_index[0]))) as client:
        assert client.get("/v1/info").json()["classes"] == CLASS_NAMES["cifar10"]
    folder_index = _index(tmp_path / "folder-index", tiny_artifact, data_dir, {"data": "/photos", "classes": ["cats", "dogs"]})[0]
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder_index))) as client:
        assert client.get("/v1/info").json()["classes"] == ["cats", "dogs"]
    unknown = _index(tmp_path / "bare", tiny_artifact, data_dir, {})[0]
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=unknown))) as client:
        assert client.get("/v1/info").json()["classes"] is None


def test_the_page_shows_source_and_class_under_each_picture(browser, cifar_index, tiny_artifact, tmp_path):  # noqa: F811
    folder, pngs, labels = cifar_index
    with LiveServer(Settings(artifact=tiny_artifact, index=folder)) as live:
        import httpx

        added = httpx.post(live.url + "/v1/items", files={"file": ("IMG_2906.JPG", pngs[4], "image/png")}).json()
        browser.get(live.url + "/")
        _wait(browser, lambda d: len(d.find_elements("css selector", "#sample .card")) == N + 1)
        captions = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#sample .card')].map("
            "c => [c.dataset.id, [...c.querySelectorAll('figcaption div')].map(d => d.textContent)]));"
        )
        screenshot(browser, tmp_path, "web-captions.png")
    names = CLASS_NAMES["cifar10"]
    for i in range(N):
        assert captions[str(i)] == [f"cifar10:test:{i}", names[labels[i]]], captions[str(i)]
    assert captions[str(added["ids"][0])] == ["IMG_2906.JPG"]
