"""The search page marks an item's near-duplicates (GET /v1/items/{id}/duplicates) among its
results: headless Chromium against uvicorn, as tests/test_web.py drives it. The index holds
synthetic codes (the random-init test encoder's are nearly collapsed: every pair of its codes
scores above the default threshold): 20 random directions, and three near-copies of item 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stress.harness import png_bytes
from test_web import LiveServer, _keep_torch_threads, _wait, browser, screenshot  # noqa: F401 (fixtures)

from infomax.artifact import load_encoder
from infomax.duplicates import DEFAULT_THRESHOLD
from infomax.imagestore import ImageStore
from infomax.index import EmbeddingIndex
from service.settings import Settings

COPIES = [1000, 1001, 1002]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_artifact) -> Path:
    from infomax.data import load_cifar10

    enc = load_encoder(tiny_artifact)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((20, enc.z_dim)).astype(np.float32)
    copies = v[0] + 0.02 * rng.standard_normal((3, enc.z_dim)).astype(np.float32)  # cosine ~0.9998 to item 0
    ids = list(range(20)) + COPIES
    images, _ = load_cifar10(None, "test")
    pngs = [png_bytes(images[i if i < 20 else 0].permute(1, 2, 0).numpy()) for i in ids]
    path = tmp_path_factory.mktemp("dups-web") / "index"
    index = EmbeddingIndex.create(enc.z_dim, path=path, artifact={"id": enc.id, "path": str(tiny_artifact), "z_dim": enc.z_dim})
    store = ImageStore(path)
    try:
        store.put_many((i, p, "image/png") for i, p in zip(ids, pngs))
        index.add(np.concatenate([v, copies]), ids=ids, metadata=[{"source": f"pic-{i}.png"} for i in ids])
    finally:
        index.close()
        store.close()
    return path


def _marked(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .hit.dup')]"
        ".filter(e => e.querySelector('.dup-mark')).map(e => Number(e.dataset.id));"
    )


def _hits(driver) -> list[int]:
    return driver.execute_script("return [...document.querySelectorAll('#results .hit')].map(e => Number(e.dataset.id));")


def test_clicking_an_item_marks_its_near_duplicates(browser, folder, tiny_artifact, tmp_path):  # noqa: F811
    by = "css selector"
    with LiveServer(Settings(artifact=tiny_artifact, index=folder, read_only=True)) as live:
        browser.get(live.url + "/")
        _wait(browser, lambda d: len(d.find_elements(by, "#sample .card")) == 23)
        browser.find_element(by, '#sample .card[data-id="1001"]').click()
        _wait(browser, lambda d: sorted(_marked(d)) == [0, 1000, 1002])
        assert _hits(browser)[:3] and set(_hits(browser)[:3]) == {0, 1000, 1002}
        caption = browser.find_element("id", "query-caption").text
        assert caption == f"item #1001 · 3 near-duplicates (cosine ≥ {DEFAULT_THRESHOLD})", caption
        first = browser.find_elements(by, "#results .hit.dup")[0]
        assert first.find_element(by, ".dup-mark").text == "near-duplicate"
        screenshot(browser, tmp_path, "web-duplicates.png")

        # an item without near-duplicates: no marks, the plain caption; the marks of the last
        # search are gone
        browser.find_element(by, '#sample .card[data-id="7"]').click()
        _wait(
            browser,
            lambda d: d.find_element("id", "query-caption").text == "item #7" and 7 not in _hits(d) and len(_hits(d)) == 12,
        )
        assert _marked(browser) == []
        assert browser.find_elements(by, "#results .dup-mark") == []
