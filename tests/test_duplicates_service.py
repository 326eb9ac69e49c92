"""GET /v1/items/{item_id}/duplicates: the item's group as the library finds it, in the OpenAPI
schema, 4xx (never 5xx) for every bad id, threshold and limit, served read-only too; and against
a real `infomax serve`: Schemathesis on the operation and the traversal strings of
tests/stress/security.py in its path parameter (docs/RELIABILITY.md promises 1 and 5c)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from stress.harness import ServerProcess, build_index

from infomax.duplicates import DEFAULT_THRESHOLD, duplicates_of
from infomax.imagestore import ImageStore
from infomax.index import EmbeddingIndex
from service.app import create_app
from service.settings import Settings

COPIES_OF_0 = [1000, 1001, 1002]
COPY_OF_7 = 1003


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_artifact) -> Path:
    """60 CIFAR-10 test images (ids 0..59) and exact copies: three of item 0, one of item 7."""
    built = build_index(tmp_path_factory.mktemp("dups-svc") / "index", tiny_artifact, n=60)
    path = built["folder"]
    index = EmbeddingIndex.load(path)
    store = ImageStore(path)
    try:
        v0, v7 = index.vector(0), index.vector(7)
        new = COPIES_OF_0 + [COPY_OF_7]
        store.put_many((i, built["pngs"][0 if i != COPY_OF_7 else 7], "image/png") for i in new)
        index.add(
            np.stack([v0, v0, v0, v7]), ids=new, metadata=[{"source": f"copy-{i}.png", "label": 3, "album": "x"} for i in new]
        )
    finally:
        index.close()
        store.close()
    return path


@pytest.fixture(scope="module")
def client(folder, tiny_artifact):
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder, read_only=True))) as c:
        yield c


def test_the_group_of_an_item_is_the_librarys(client, folder):
    # The random-init test encoder's codes are close to collapsed (random pairs score 0.975-0.9995):
    # exact copies are told apart only just below 1.
    assert client.get("/v1/items/1001/duplicates").json()["threshold"] == DEFAULT_THRESHOLD
    r = client.get("/v1/items/1001/duplicates", params={"threshold": 0.99999})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == 1001 and body["threshold"] == 0.99999 and not body["truncated"]
    assert body["size"] == 4 and {d["id"] for d in body["duplicates"]} == {0, 1000, 1002}
    for d in body["duplicates"]:
        assert d["similarity"] == pytest.approx(1.0, abs=1e-5) and d["image_url"] == f"/v1/items/{d['id']}/image"
    assert {(p["a"], p["b"]) for p in body["pairs"]} == {
        (0, 1000),
        (0, 1001),
        (0, 1002),
        (1000, 1001),
        (1000, 1002),
        (1001, 1002),
    }
    meta = {d["id"]: d for d in body["duplicates"]}
    assert meta[1000]["source"] == "copy-1000.png" and meta[1000]["label"] == 3 and meta[1000]["meta"] == {"album": "x"}
    assert meta[0]["source"] == "cifar10:test:0"
    assert client.get(meta[0]["image_url"]).content == client.get("/v1/items/1001/image").content

    index = EmbeddingIndex.load(folder, read_only=True)
    try:
        for item, t in ((7, 0.99999), (3, 0.999), (3, 0.9985), (11, 0.998), (1003, 0.9), (1003, 1.0)):
            r = client.get(f"/v1/items/{item}/duplicates", params={"threshold": t})
            assert r.status_code == 200, r.text
            group, truncated = duplicates_of(index, item, t)
            got = r.json()
            assert got["size"] == group.size and got["truncated"] == truncated
            assert [d["id"] for d in got["duplicates"]] == [m.id for m in group.members[1:]]
            np.testing.assert_allclose(
                [d["similarity"] for d in got["duplicates"]], [m.similarity for m in group.members[1:]], atol=1e-6
            )
        r = client.get("/v1/items/3/duplicates", params={"threshold": 0.9, "limit": 5}).json()
        assert r["truncated"] and r["size"] == 5 and len(r["duplicates"]) == 4
    finally:
        index.close()
    alone = client.get("/v1/items/8/duplicates", params={"threshold": 0.99999}).json()
    assert alone["size"] == 1 and alone["duplicates"] == [] and alone["pairs"] == []


def test_the_operation_is_documented(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/items/{item_id}/duplicates"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"item_id", "threshold", "limit"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/DuplicatesResponse")
    assert {"404", "422"} <= set(op["responses"])


BAD = [
    ("/v1/items/-1/duplicates", {}, 422),
    ("/v1/items/9223372036854775808/duplicates", {}, 422),
    ("/v1/items/abc/duplicates", {}, 422),
    ("/v1/items/1.5/duplicates", {}, 422),
    ("/v1/items/%00/duplicates", {}, 422),
    ("/v1/items/sample/duplicates", {}, 422),
    ("/v1/items/999999/duplicates", {}, 404),
    ("/v1/items/9223372036854775807/duplicates", {}, 404),
    ("/v1/items/0/duplicates", {"threshold": "2"}, 422),
    ("/v1/items/0/duplicates", {"threshold": "-1"}, 422),
    ("/v1/items/0/duplicates", {"threshold": "nan"}, 422),
    ("/v1/items/0/duplicates", {"threshold": "inf"}, 422),
    ("/v1/items/0/duplicates", {"threshold": "-inf"}, 422),
    ("/v1/items/0/duplicates", {"threshold": "x"}, 422),
    ("/v1/items/0/duplicates", {"threshold": ""}, 422),
    ("/v1/items/0/duplicates", {"limit": "0"}, 422),
    ("/v1/items/0/duplicates", {"limit": "1001"}, 422),
    ("/v1/items/0/duplicates", {"limit": "1e3"}, 422),
    ("/v1/items/0/duplicates", {"limit": str(2**70)}, 422),
]


@pytest.mark.parametrize("path,params,status", BAD)
def test_bad_ids_thresholds_and_limits_get_4xx(client, path, params, status):
    r = client.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["code"] in ("invalid_request", "not_found")


def test_writable_server_and_deleted_items(folder, tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(folder, copy)
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=copy))) as c:
        q = {"threshold": 0.99999}
        assert c.get("/v1/items/0/duplicates", params=q).json()["size"] == 4
        assert c.delete("/v1/items/1002").status_code == 200
        body = c.get("/v1/items/0/duplicates", params=q).json()
        assert body["size"] == 3 and {d["id"] for d in body["duplicates"]} == {1000, 1001}
        assert c.get("/v1/items/1002/duplicates").status_code == 404


@pytest.mark.slow
def test_real_server_fuzzed_and_path_traversal(folder, tiny_artifact, tmp_path):
    from stress.fuzz import run_schemathesis
    from stress.security import PASSWD_MARKERS, SOURCE_MARKERS, TRAVERSALS, raw_request

    with ServerProcess(tiny_artifact, folder, tmp_path / "server.log", args=["--read-only"]) as srv:
        bad = []
        for t in TRAVERSALS + ["0/../../../etc/passwd", "..", "%2e%2e"]:
            for target in (f"/v1/items/{t}/duplicates", f"/v1/items/0/duplicates?threshold={t}&limit={t}"):
                status, body = raw_request("127.0.0.1", srv.port, "GET", target)
                if status is None or not 400 <= status < 500 or any(m in body for m in PASSWD_MARKERS + SOURCE_MARKERS):
                    bad.append((target, status, body[:100]))
        assert bad == []
        out = tmp_path / "fuzz"
        figures = run_schemathesis(srv.url, out, examples=40, seed=3, include_path="/v1/items/{item_id}/duplicates", timeout=600)
        assert "Traceback" not in srv.log()
    assert figures["requests"] >= 40, figures
    assert figures["server_errors"] == 0 and figures["exit_code"] == 0, (figures, (out / "st-output.txt").read_text()[-3000:])
