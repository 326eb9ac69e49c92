"""The filter of POST /v1/search over HTTP: by vector, by id, by image (JSON and multipart) the
answer is the library's filtered search; k results whenever k items match; documented in the
OpenAPI schema and /v1/info; every bad filter gets a 4xx naming it (the hostile filters of
tests/hostile.py), never a 5xx; and against a real `infomax serve`: the hostile filters over raw
HTTP and Schemathesis on the operation (docs/RELIABILITY.md promises 1 and 2)."""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile import filter_corpus
from test_service import copy_index, index_template  # noqa: F401 (fixture)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from infomax.index import EmbeddingIndex
from infomax.index.filters import MAX_IN_VALUES
from service.app import create_app
from service.settings import Settings


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(index_template, tmp_path_factory) -> Path:  # noqa: F811
    """The 300 CIFAR-10 test images of test_service, 10 of them given meta keys to filter on."""
    path = copy_index(index_template, tmp_path_factory.mktemp("filtered") / "index")
    index = EmbeddingIndex.load(path)
    try:
        extra = [index.vector(i) for i in range(10)]
        index.add(
            np.stack(extra),
            ids=list(range(1000, 1010)),
            metadata=[
                {
                    "source": f"holidays/{'beach' if i < 6 else 'city'}/{i}.jpg",
                    "label": 3,
                    "camera": "x100" if i % 2 else "a7",
                    "iso": 100 * (i % 3),
                }
                for i in range(10)
            ],
        )
    finally:
        index.close()
    return path


@pytest.fixture(scope="module")
def client(folder, tiny_artifact):
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder, read_only=True, max_k=100))) as c:
        yield c


@pytest.fixture(scope="module")
def library(folder):
    index = EmbeddingIndex.load(folder, read_only=True)
    yield index
    index.close()


FILTERS = [
    {"label": 3},
    {"label": {"in": [1, 7]}},
    {"source": {"prefix": "holidays/beach/"}},
    {"source": {"in": ["cifar10:test:5", "cifar10:test:9", "holidays/city/7.jpg"]}},
    {"meta.camera": "x100", "label": 3},
    {"meta.iso": {"in": [0, 200]}},
    {"label": {"in": []}},
    {},
]


def _ids(body: dict) -> list[int]:
    return [n["id"] for n in body["neighbors"]]


def test_every_query_kind_answers_the_librarys_filtered_search(client, library, index_template):
    png = index_template["pngs"][42]
    for spec in FILTERS:
        want = library.matching_ids(spec)
        for k in (5, 40):
            v = library.vector(42)
            r = client.post("/v1/search", json={"vector": v.tolist(), "k": k, "filter": spec})
            assert r.status_code == 200, r.text
            body = r.json()
            _, I = library.search(v, k, filter=spec)
            assert _ids(body) == [i for i in I[0].tolist() if i >= 0], spec
            assert len(body["neighbors"]) == min(k, len(want)), (spec, k)  # k whenever k match
            assert all(n["id"] in set(want.tolist()) for n in body["neighbors"])
            assert body["filter"] == (json.loads(json.dumps(spec)) or None)
            r = client.post("/v1/search", json={"id": 42, "k": k, "filter": spec})
            _, I = library.search_by_id(42, k, filter=spec)
            assert r.status_code == 200 and _ids(r.json()) == [i for i in I[0].tolist() if i >= 0], spec
            # an image: through the batch, JSON (base64) and multipart (the filter as JSON text)
            by_json = client.post("/v1/search", json={"image": base64.b64encode(png).decode(), "k": k, "filter": spec})
            by_form = client.post(
                "/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": str(k), "filter": json.dumps(spec)}
            )
            assert by_json.status_code == by_form.status_code == 200, (by_json.text, by_form.text)
            assert _ids(by_json.json()) == _ids(by_form.json())
            assert set(_ids(by_json.json())) <= set(want.tolist()) and len(_ids(by_json.json())) == min(k, len(want))
    # the labels a class filter can pick: every item with label 3, the 10 added ones included
    labelled = client.post("/v1/search", json={"id": 1000, "k": 100, "filter": {"label": 3}}).json()
    assert {1001, 1002, 1009} <= set(_ids(labelled)) and all(n["label"] == 3 for n in labelled["neighbors"])


def test_concurrent_image_searches_with_different_filters_each_get_their_own(client, index_template):
    """Searches by image are gathered into batches: each keeps its own filter."""
    import concurrent.futures

    pngs = index_template["pngs"]
    specs = [{"label": lab} for lab in range(10)] + [None, {"source": {"prefix": "holidays/"}}]

    def one(i: int):
        spec = specs[i % len(specs)]
        body = {"image": base64.b64encode(pngs[i]).decode(), "k": 8} | ({"filter": spec} if spec else {})
        return spec, client.post("/v1/search", json=body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(48)))
    for spec, r in answers:
        assert r.status_code == 200, r.text
        n = r.json()["neighbors"]
        assert len(n) == 8
        if spec and "label" in spec:
            assert all(x["label"] == spec["label"] for x in n), (spec, n)
        elif spec:
            assert all(x["source"].startswith("holidays/") for x in n)


def test_bad_filters_get_4xx_naming_the_problem_never_5xx(client):
    for case in filter_corpus():
        for how in ("json", "form"):
            if how == "json":
                r = client.post("/v1/search", content=case.json_body(dim=32), headers={"content-type": "application/json"})
            else:
                r = client.post("/v1/search", files={"file": ("q.png", _png(), "image/png")}, data={"filter": case.form_text()})
            status, code = case.expect(how)
            assert r.status_code == status, (case.name, how, r.status_code, r.text[:300])
            if status != 200:
                body = r.json()
                assert body["code"] == code, (case.name, how, body)
                assert case.expected_fragment(how) in body["detail"], (case.name, how, body["detail"][:300])
            elif case.max_results is not None:
                assert len(r.json()["neighbors"]) <= case.max_results, (case.name, how)
    r = client.post(
        "/v1/search", files={"file": ("q.png", _png(), "image/png")}, data={"filter": ['{"label": 1}', '{"label": 2}']}
    )
    assert r.status_code == 422 and "2 filter fields" in r.json()["detail"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_the_filter_is_documented_and_info_says_what_to_filter_on(client):
    spec = client.get("/openapi.json").json()
    schema = spec["components"]["schemas"]["SearchRequest"]["properties"]["filter"]
    obj = schema["anyOf"][0]
    assert set(obj["properties"]) == {"label", "source"} and obj["additionalProperties"] is False
    assert list(obj["patternProperties"])[0].startswith("^meta")
    assert obj["maxProperties"] == 16 and '"in"' in schema["description"]
    label_in = obj["properties"]["label"]["anyOf"][1]["properties"]["in"]
    assert label_in["maxItems"] == MAX_IN_VALUES
    form = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["filter"]["type"] == "string"
    assert "filter" in spec["components"]["schemas"]["SearchResponse"]["properties"]
    info = client.get("/v1/info").json()
    assert info["filters"] == {
        "keys": ["label", "source", "meta.<key>"],
        "labels": list(range(10)),
        "max_in_values": MAX_IN_VALUES,
        "max_keys": 16,
    }


@pytest.mark.slow
def test_real_server_hostile_filters_and_fuzzing(folder, tiny_artifact, tmp_path):
    """A real read-only `infomax serve`: every hostile filter over raw HTTP (JSON and multipart)
    gets its documented answer, and Schemathesis on POST /v1/search (the hook gives about half
    the bodies a real image, so that generated filters reach the FAISS search): no 5xx, every
    answer valid against the schema."""

    from stress.fuzz import har_entries, run_schemathesis
    from stress.harness import ServerProcess
    from stress.hostile_run import send_filters

    with ServerProcess(tiny_artifact, folder, tmp_path / "server.log", args=["--read-only"]) as srv:
        sent = send_filters(srv, dim=32)
        assert sent["mismatches"] == [], sent["mismatches"]
        assert sent["requests"] >= 2 * len(filter_corpus())
        out = tmp_path / "fuzz"
        figures = run_schemathesis(srv.url, out, examples=60, seed=5, include_path="/v1/search", timeout=900)
        har = har_entries(out)
        assert "Traceback" not in srv.log()
    with_filter = [
        e
        for e in har
        if '"filter"' in (e["request"].get("postData") or {}).get("text", "")
        or 'name="filter"' in (e["request"].get("postData") or {}).get("text", "")
    ]
    filtered_ok = [e for e in with_filter if e["response"]["status"] == 200]
    assert figures["requests"] >= 60 and len(with_filter) >= 20 and filtered_ok, (figures["requests"], len(with_filter))
    assert figures["server_errors"] == 0 and figures["exit_code"] == 0, (figures, (out / "st-output.txt").read_text()[-3000:])
