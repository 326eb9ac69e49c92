"""Why two images match, over HTTP: ``POST /v1/search`` with ``explain`` gives each neighbour the
heat map ``infomax.explain.Explainer.heatmaps`` computes from its stored picture, for a query by
image (JSON and multipart), by id (the item's stored picture) and by vector (the vector as the
code); with filters; ``null`` for a neighbour without a usable picture; a clear 409 where the model
has no local critic or the query item no picture, 422 for a
vector the critic cannot read and for every bad ``explain`` value (tests/hostile.py), never a 5xx;
the answer without explain unchanged. The last test runs a real ``infomax serve`` with the hostile
values over raw HTTP and Schemathesis on the operation (docs/RELIABILITY.md promises 1 and 2).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hostile import explain_corpus
from PIL import Image
from test_service import REPO, build_index, copy_index

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from infomax.artifact import load_encoder
from infomax.explain import CRITIC_CONFIG, CRITIC_WEIGHTS, Explainer, remove_local_critic
from infomax.imagestore import ImageStore
from infomax.module import DeepInfoMax
from service.app import create_app
from service.settings import Settings

N = 60
NEIGHBOUR_KEYS = {"id", "source", "label", "meta", "image_url", "score"}


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _module() -> DeepInfoMax:
    torch.manual_seed(0)
    return DeepInfoMax(z_dim=16, beta=1.0, critic="cosine", arch_kwargs={"base_width": 8}).eval()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A random-init encoder exported with its cosine local critic (beta > 0)."""
    return _module().export(tmp_path_factory.mktemp("explain") / "art", dataset="cifar10", command="tests")


@pytest.fixture(scope="module")
def template(artifact, data_dir, tmp_path_factory) -> dict:
    """The first 60 CIFAR-10 test images indexed with that encoder, their PNGs stored."""
    return build_index(tmp_path_factory.mktemp("explain-index") / "index", artifact, data_dir, n=N)


@pytest.fixture(scope="module")
def client(artifact, template, tmp_path_factory):
    folder = copy_index(template, tmp_path_factory.mktemp("explain-ro") / "index")
    with TestClient(create_app(Settings(artifact=artifact, index=folder, read_only=True, max_k=60))) as c:
        yield c


@pytest.fixture(scope="module")
def explainer(artifact) -> Explainer:
    return Explainer.from_artifact(load_encoder(artifact), artifact)


def _pil(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _assert_maps(body: dict, explainer: Explainer, code: torch.Tensor, pngs: list[bytes]) -> None:
    """Every neighbour's explain is the library's heat map of its stored picture for ``code``."""
    ids = [n["id"] for n in body["neighbors"]]
    assert ids, body
    want = explainer.heatmaps(code, [_pil(pngs[i]) for i in ids])
    for n, m in zip(body["neighbors"], want):
        got = n["explain"]
        assert (got["h"], got["w"]) == tuple(m.shape) == (4, 4)
        torch.testing.assert_close(torch.tensor(got["scores"]), m, rtol=1e-5, atol=1e-5)
        assert got["min"] == pytest.approx(float(m.min()), abs=1e-5)
        assert got["max"] == pytest.approx(float(m.max()), abs=1e-5)


def _without_explain(body: dict) -> dict:
    return {**body, "neighbors": [{k: v for k, v in n.items() if k != "explain"} for n in body["neighbors"]]}


# ----------------------------------------------------------------------------- the three queries


def test_by_image_each_neighbour_gets_the_critics_map_of_its_stored_picture(client, template, explainer):
    png = template["pngs"][5]
    code = explainer.codes(_pil(png))[0]
    by_json = client.post("/v1/search", json={"image": _b64(png), "k": 8, "explain": True})
    by_form = client.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "8", "explain": "true"})
    assert by_json.status_code == by_form.status_code == 200, (by_json.text, by_form.text)
    assert by_json.json() == by_form.json()
    body = by_json.json()
    assert len(body["neighbors"]) == 8 and body["neighbors"][0]["id"] == 5
    _assert_maps(body, explainer, code, template["pngs"])
    # explain adds the maps and changes nothing else: same neighbours, same scores
    plain = client.post("/v1/search", json={"image": _b64(png), "k": 8}).json()
    assert _without_explain(body) == plain


def test_by_id_the_code_is_that_of_the_items_stored_picture(client, template, explainer):
    r = client.post("/v1/search", json={"id": 17, "k": 10, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 17 not in [n["id"] for n in body["neighbors"]] and len(body["neighbors"]) == 10
    _assert_maps(body, explainer, explainer.codes(_pil(template["pngs"][17]))[0], template["pngs"])
    assert _without_explain(body) == client.post("/v1/search", json={"id": 17, "k": 10}).json()


def test_by_vector_the_vector_is_the_code(client, template, explainer):
    # another image's code, scaled: used as given (the critic reads the code, not its direction)
    code = explainer.codes(_pil(template["pngs"][33]))[0] * 2.5
    r = client.post("/v1/search", json={"vector": code.tolist(), "k": 6, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "vector" and len(body["neighbors"]) == 6
    _assert_maps(body, explainer, code, template["pngs"])


def test_explain_with_a_filter_explains_the_filtered_neighbours(client, template, explainer):
    png = template["pngs"][8]
    code = explainer.codes(_pil(png))[0]
    label = template["labels"][8]
    matching = [i for i, lab in enumerate(template["labels"]) if lab == label]
    for how in ("json", "form"):
        if how == "json":
            r = client.post("/v1/search", json={"image": _b64(png), "k": 4, "filter": {"label": label}, "explain": True})
        else:
            r = client.post(
                "/v1/search",
                files={"file": ("q.png", png, "image/png")},
                data={"k": "4", "filter": json.dumps({"label": label}), "explain": "1"},
            )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filter"] == {"label": label}
        assert len(body["neighbors"]) == min(4, len(matching))
        assert all(n["label"] == label for n in body["neighbors"])
        _assert_maps(body, explainer, code, template["pngs"])
    # by id, among fewer items than k: every match explained
    r = client.post("/v1/search", json={"id": 8, "k": 50, "filter": {"label": label}, "explain": True})
    assert r.status_code == 200, r.text
    assert sorted(n["id"] for n in r.json()["neighbors"]) == [i for i in matching if i != 8]
    _assert_maps(r.json(), explainer, code, template["pngs"])


def test_concurrent_explained_searches_each_get_their_own_maps(client, template, explainer):
    """Maps are computed in the thread pool while the batch thread encodes other queries."""

    def one(i: int):
        png = template["pngs"][i]
        if i % 3 == 0:
            return i, client.post("/v1/search", json={"image": _b64(png), "k": 5, "explain": True})
        if i % 3 == 1:
            return i, client.post("/v1/search", json={"id": i, "k": 5, "explain": True})
        return i, client.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "5", "explain": "true"})

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(18)))
    for i, r in answers:
        assert r.status_code == 200, r.text
        _assert_maps(r.json(), explainer, explainer.codes(_pil(template["pngs"][i]))[0], template["pngs"])


# ----------------------------------------------------------------------------- unchanged without explain


def test_without_explain_the_answer_is_as_before(client, template):
    png = template["pngs"][3]
    answers = [
        client.post("/v1/search", json={"image": _b64(png), "k": 5}),
        client.post("/v1/search", json={"image": _b64(png), "k": 5, "explain": False}),
        client.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "5"}),
        client.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "5", "explain": "false"}),
        client.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "5", "explain": "0"}),
    ]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert len({r.content for r in answers}) == 1  # byte for byte
    body = answers[0].json()
    assert set(body) == {"model", "k", "query", "filter", "neighbors"}
    assert all(set(n) == NEIGHBOUR_KEYS for n in body["neighbors"])
    by_id = client.post("/v1/search", json={"id": 3, "k": 5, "explain": False})
    assert by_id.content == client.post("/v1/search", json={"id": 3, "k": 5}).content
    assert all(set(n) == NEIGHBOUR_KEYS for n in by_id.json()["neighbors"])


# ----------------------------------------------------------------------------- pictures missing


def test_a_neighbour_without_a_usable_picture_gets_null_and_a_query_item_without_one_409(artifact, template, tmp_path, explainer):
    folder = copy_index(template, tmp_path / "index")
    store = ImageStore(folder)
    store.delete([10])  # no picture at all
    store.put(11, b"not an image at all", "image/png")  # a picture that cannot be decoded
    store.close()
    trio = {"source": {"in": ["cifar10:test:10", "cifar10:test:11", "cifar10:test:12"]}}
    png = template["pngs"][12]
    with TestClient(create_app(Settings(artifact=artifact, index=folder))) as c:
        r = c.post("/v1/search", json={"image": _b64(png), "k": 3, "filter": trio, "explain": True})
        assert r.status_code == 200, r.text
        by_id = {n["id"]: n for n in r.json()["neighbors"]}
        assert set(by_id) == {10, 11, 12}
        assert by_id[10]["explain"] is None and by_id[11]["explain"] is None
        want = explainer.heatmaps(explainer.codes(_pil(png))[0], [_pil(png)])[0]
        torch.testing.assert_close(torch.tensor(by_id[12]["explain"]["scores"]), want, rtol=1e-5, atol=1e-5)
        for item in (10, 11):
            r = c.post("/v1/search", json={"id": item, "k": 3, "explain": True})
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "no_picture"
            assert f"item {item} has no stored picture" in r.json()["detail"] and "without explain" in r.json()["detail"]
            assert c.post("/v1/search", json={"id": item, "k": 3}).status_code == 200  # the search itself is fine
        assert c.post("/v1/search", json={"id": 999, "k": 3, "explain": True}).status_code == 404  # unknown: still 404
    # an index built without pictures (read-only, no images.sqlite): every neighbour null
    (folder / "images.sqlite").unlink()
    for extra in ("images.sqlite-wal", "images.sqlite-shm"):
        (folder / extra).unlink(missing_ok=True)
    with TestClient(create_app(Settings(artifact=artifact, index=folder, read_only=True))) as c:
        r = c.post("/v1/search", json={"image": _b64(png), "k": 4, "explain": True})
        assert r.status_code == 200 and [n["explain"] for n in r.json()["neighbors"]] == [None] * 4
        assert c.post("/v1/search", json={"id": 12, "k": 4, "explain": True}).json()["code"] == "no_picture"


# ----------------------------------------------------------------------------- models that cannot explain


def _assert_refused(c: TestClient, png: bytes, dim: int, *fragments: str) -> None:
    asks = [
        c.post("/v1/search", json={"image": _b64(png), "explain": True}),
        c.post("/v1/search", json={"id": 3, "explain": True}),
        c.post("/v1/search", json={"vector": [0.1] * dim, "explain": True}),
        c.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"explain": "true"}),
    ]
    for r in asks:
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "explain_unavailable"
        assert body["detail"].startswith("this server cannot explain matches: ")
        for fragment in fragments:
            assert fragment in body["detail"], body["detail"]
    # searching without explain works as ever
    assert c.post("/v1/search", json={"image": _b64(png), "k": 3}).status_code == 200


def test_an_artifact_without_a_critic_serves_and_answers_explain_with_409_saying_why(artifact, template, tmp_path):
    plain = tmp_path / "no-critic"
    shutil.copytree(artifact, plain)
    remove_local_critic(plain)  # the same weights (and index), exported before critics were saved
    folder = copy_index(template, tmp_path / "index")
    with TestClient(create_app(Settings(artifact=plain, index=folder, read_only=True))) as c:
        _assert_refused(c, template["pngs"][3], 16, "carries no local critic", "beta 0", "model.beta > 0")
        r = c.post("/v1/search", json={"id": 3, "explain": True})
        assert str(tmp_path) not in r.json()["detail"]  # no server path in an answer
        info = c.get("/v1/info").json()
        assert info["explain"] is False and info["explain_critic"] is None
        assert "beta 0" in info["explain_unavailable"]


def test_a_damaged_critic_is_not_fatal_and_explain_says_what_is_wrong(artifact, template, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(artifact, damaged)
    blob = bytearray((damaged / CRITIC_WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (damaged / CRITIC_WEIGHTS).write_bytes(bytes(blob))
    folder = copy_index(template, tmp_path / "index")
    with TestClient(create_app(Settings(artifact=damaged, index=folder, read_only=True))) as c:
        _assert_refused(c, template["pngs"][3], 16, "does not match the hash", "export the artifact again")
        assert c.get("/v1/info").json()["explain"] is False
    assert (damaged / CRITIC_CONFIG).is_file()


def test_the_demo_encoder_explains_its_matches(data_dir, tmp_path):
    """`make demo` serves models/cifar10: trained with all three terms, it carries its local critic
    (tests/test_models.py), and its searches come with the maps."""
    model = REPO / "models" / "cifar10"
    built = build_index(tmp_path / "index", model, data_dir, n=12)
    explainer = Explainer.from_artifact(load_encoder(model), model)
    with TestClient(create_app(Settings(artifact=model, index=built["folder"], read_only=True))) as c:
        assert c.get("/v1/info").json()["explain"] is True
        png = built["pngs"][3]
        r = c.post("/v1/search", json={"image": _b64(png), "k": 5, "explain": True})
        assert r.status_code == 200, r.text
        _assert_maps(r.json(), explainer, explainer.codes(_pil(png))[0], built["pngs"])


def test_a_vector_is_no_code_when_the_model_serves_local_maps(template, data_dir, tmp_path, explainer):
    """The same weights serving C(x): a vector query cannot be explained (422 naming why); an image
    query still can (its code is mu whatever the artifact serves)."""
    local = _module().export(tmp_path / "local", output="local", dataset="cifar10", command="tests")
    built = build_index(tmp_path / "index", local, data_dir, n=20)
    with TestClient(create_app(Settings(artifact=local, index=built["folder"], read_only=True))) as c:
        dim = c.get("/v1/info").json()["z_dim"]
        assert dim != 16  # the flattened local map, not the code
        r = c.post("/v1/search", json={"vector": [0.1] * dim, "k": 3, "explain": True})
        assert r.status_code == 422, r.text
        assert "needs the model's code (mu)" in r.json()["detail"] and "serves local vectors" in r.json()["detail"]
        png = built["pngs"][4]
        r = c.post("/v1/search", json={"image": _b64(png), "k": 3, "explain": True})
        assert r.status_code == 200, r.text
        _assert_maps(r.json(), explainer, explainer.codes(_pil(png))[0], built["pngs"])


# ----------------------------------------------------------------------------- bad values, schema


def test_bad_explain_values_get_422_naming_explain_never_5xx(client):
    png = _png()
    for case in explain_corpus():
        if case.json is not None:
            body = json.dumps({"vector": [0.1] * 16, "k": 3})[:-1] + ', "explain": ' + case.json + "}"
            r = client.post("/v1/search", content=body.encode(), headers={"content-type": "application/json"})
            assert r.status_code == case.status, (case.name, r.status_code, r.text[:300])
            if case.status != 200:
                assert r.json()["code"] == case.code and "explain" in r.json()["detail"], (case.name, r.text)
        if case.form is not None:
            r = client.post(
                "/v1/search", files=[("file", ("q.png", png, "image/png")), *[("explain", (None, v)) for v in case.form]]
            )
            assert r.status_code == case.form_status, (case.name, r.status_code, r.text[:300])
            if case.form_status != 200:
                assert r.json()["code"] == case.code and "explain" in r.json()["detail"], (case.name, r.text)
    # a file in the explain field: one file more than a search takes (400 invalid_multipart)
    r = client.post("/v1/search", files=[("file", ("q.png", png, "image/png")), ("explain", ("x.txt", b"true", "text/plain"))])
    assert r.status_code == 400 and r.json()["code"] == "invalid_multipart", r.text


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (40, 160, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_explain_is_documented_in_the_schema_and_info(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    field = schemas["SearchRequest"]["properties"]["explain"]
    assert field["type"] == "boolean" and field["default"] is False and "local critic" in field["description"]
    op = spec["paths"]["/v1/search"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["explain"]
    assert form["type"] == "boolean" and form["default"] is False
    assert "409" in op["responses"] and "explain_unavailable" in op["responses"]["409"]["description"]
    neighbour = schemas["Neighbor"]["properties"]["explain"]
    assert {"$ref": "#/components/schemas/Explanation"} in neighbour["anyOf"] and "null" in neighbour["description"]
    assert "explain" not in schemas["Neighbor"].get("required", [])
    explanation = schemas["Explanation"]
    assert set(explanation["required"]) == {"h", "w", "scores", "min", "max"}
    assert "top row first" in explanation["properties"]["scores"]["description"]
    assert {"explain", "explain_critic", "explain_unavailable"} <= set(schemas["ServiceInfo"]["properties"])
    info = client.get("/v1/info").json()
    assert info["explain"] is True and info["explain_critic"] == "cosine" and info["explain_unavailable"] is None


# ----------------------------------------------------------------------------- a real server


@pytest.mark.slow
def test_real_server_hostile_explain_values_and_fuzzing(artifact, template, tmp_path):
    """A real read-only ``infomax serve``: every bad explain value of tests/hostile.py over raw HTTP
    gets its documented answer; Schemathesis on POST /v1/search (the hook turns explain on in about
    half the bodies it gives a real image): no 5xx, every answer valid against the schema, some of
    them 200 with heat maps."""

    from stress.fuzz import har_entries, run_schemathesis
    from stress.harness import ServerProcess
    from stress.hostile_run import send_explain

    folder = copy_index(template, tmp_path / "index")
    with ServerProcess(artifact, folder, tmp_path / "server.log", args=["--read-only"]) as srv:
        sent = send_explain(srv)
        assert sent["mismatches"] == [] and sent["server_errors"] == 0, sent["mismatches"]
        assert sent["requests"] >= len(explain_corpus()) and sent["explained"] > 0
        out = tmp_path / "fuzz"
        figures = run_schemathesis(srv.url, out, examples=40, seed=11, include_path="/v1/search", timeout=900)
        har = har_entries(out)
        assert "Traceback" not in srv.log()
    explained = [
        e for e in har if e["response"]["status"] == 200 and '"explain":{' in (e["response"].get("content") or {}).get("text", "")
    ]
    asked = [e for e in har if "explain" in (e["request"].get("postData") or {}).get("text", "")]
    assert figures["requests"] >= 40 and len(asked) >= 10 and explained, (figures["requests"], len(asked))
    assert figures["server_errors"] == 0 and figures["exit_code"] == 0, (figures, (out / "st-output.txt").read_text()[-3000:])
