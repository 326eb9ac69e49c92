"""End-to-end check of a running infomax service over HTTP (the container of scripts/docker-e2e.sh).

    BASE_URL=http://127.0.0.1:8000 E2E_QUERIES=OUT/queries python -m pytest -q tests/e2e/http_check.py

The server must serve what tests/e2e/prepare.py wrote (OUT/data/model, OUT/data/index) and be
writable. The file name does not start with ``test_``: ``make test`` does not collect it (it needs a
server); pytest runs it when it is named on the command line. Tests run in file order and the later
ones depend on the item added by ``test_add_item``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

BASE_URL = os.environ.get("BASE_URL", "")
QUERIES = Path(os.environ.get("E2E_QUERIES", ""))
K = 5

if not BASE_URL or not (QUERIES / "manifest.json").is_file():
    pytest.fail("set BASE_URL (a running service) and E2E_QUERIES (the queries/ folder of tests/e2e/prepare.py)", pytrace=False)

MANIFEST = json.loads((QUERIES / "manifest.json").read_text())
STATE: dict = {}


@pytest.fixture(scope="module")
def client():
    with httpx.Client(base_url=BASE_URL, timeout=60.0) as c:
        yield c


def png(name: str) -> bytes:
    return (QUERIES / name).read_bytes()


def search_png(client: httpx.Client, data: bytes, k: int = K) -> dict:
    r = client.post("/v1/search", files={"file": ("query.png", data, "image/png")}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()


def check_neighbors(body: dict, k: int) -> list[dict]:
    assert body["k"] == k and body["query"] == "image" and body["model"] == MANIFEST["model"], body
    neighbors = body["neighbors"]
    assert len(neighbors) == k, body
    scores = [n["score"] for n in neighbors]
    assert all(isinstance(n["id"], int) and n["id"] >= 0 for n in neighbors), neighbors
    assert all(isinstance(s, float) and -1.0001 <= s <= 1.0001 for s in scores), scores
    assert scores == sorted(scores, reverse=True), f"not best first: {scores}"
    assert len({n["id"] for n in neighbors}) == k, "duplicate ids"
    return neighbors


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text


def test_readyz(client):
    deadline = time.monotonic() + 120  # a server started with INFOMAX_BACKGROUND_LOAD answers 503 meanwhile
    while (r := client.get("/readyz")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["model"] == MANIFEST["model"], body
    assert body["items"] == MANIFEST["count"] and body["read_only"] is False, body


def test_info(client):
    r = client.get("/v1/info")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["z_dim"] == MANIFEST["dim"] and body["items"] == MANIFEST["count"], body


@pytest.mark.parametrize("item_id", sorted(MANIFEST["queries"], key=int))
def test_search_finds_indexed_image(client, item_id):
    """Uploading an indexed picture finds it first, at cosine ~1: the container's encoder (its own
    torch build) gives the codes the host's `infomax embed` put in the index."""
    neighbors = check_neighbors(search_png(client, png(MANIFEST["queries"][item_id])), K)
    top = neighbors[0]
    assert top["id"] == int(item_id), neighbors
    assert top["score"] > 0.999, neighbors
    assert item_id in top["source"] and top["image_url"] == f"/v1/items/{item_id}/image", top
    assert all(0 <= n["id"] < MANIFEST["count"] for n in neighbors), neighbors


def test_stored_image_of_result(client):
    item_id = next(iter(MANIFEST["queries"]))
    r = client.get(f"/v1/items/{item_id}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.content == png(MANIFEST["queries"][item_id])


def test_add_item(client):
    data = png(MANIFEST["new"])
    before = search_png(client, data)["neighbors"]
    r = client.post(
        "/v1/items",
        files={"file": ("new.png", data, "image/png")},
        data={"metadata": json.dumps({"source": "e2e:new", "label": 3, "note": "docker"})},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["ids"]) == 1, body
    new_id = body["ids"][0]
    assert new_id >= MANIFEST["count"], f"id {new_id} reuses an id of the built index"
    assert new_id not in {n["id"] for n in before}
    STATE["new_id"] = new_id


def test_search_finds_added_item(client):
    new_id = STATE.get("new_id")
    assert new_id is not None, "test_add_item did not pass"
    neighbors = check_neighbors(search_png(client, png(MANIFEST["new"])), K)
    assert neighbors[0]["id"] == new_id and neighbors[0]["score"] > 0.999, neighbors
    assert neighbors[0]["source"] == "e2e:new" and neighbors[0]["label"] == 3, neighbors[0]
    r = client.get(f"/v1/items/{new_id}")
    assert r.status_code == 200 and r.json()["meta"] == {"note": "docker"}, r.text
    r = client.get(f"/v1/items/{new_id}/image")
    assert r.status_code == 200 and r.content == png(MANIFEST["new"])
    r = client.get("/readyz")
    assert r.json()["items"] == MANIFEST["count"] + 1, r.text


def test_search_by_id(client):
    new_id = STATE.get("new_id")
    assert new_id is not None, "test_add_item did not pass"
    r = client.post("/v1/search", json={"id": new_id, "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "id" and len(body["neighbors"]) == 3, body
    assert new_id not in {n["id"] for n in body["neighbors"]}, "search by id must leave the item itself out"


def test_client_mistakes_are_json_4xx(client):
    r = client.post("/v1/search", files={"file": ("x.png", b"not an image", "image/png")})
    assert 400 <= r.status_code < 500 and r.json().get("detail"), (r.status_code, r.text)
    r = client.post("/v1/search", json={"k": 3})
    assert r.status_code == 422 and r.json().get("detail"), r.text
    r = client.get("/v1/items/999999999")
    assert r.status_code == 404 and r.json().get("detail"), r.text


def test_web_page(client):
    """The page and its static files come from the installed package (package data of the wheel)."""
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    r = client.get("/static/app.js")
    assert r.status_code == 200 and "/v1/" in r.text, r.text[:200]


def test_metrics(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and "# TYPE" in r.text, r.text[:200]
