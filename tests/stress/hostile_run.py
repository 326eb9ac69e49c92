"""Sends the hostile-file corpus (tests/hostile.py) to a running server, through every route that
decodes an upload, and reads the server's peak resident memory (VmHWM) before and after.

Routes: ``POST /v1/embed`` (multipart), ``POST /v1/search`` (JSON, base64: the other decoding path),
``POST /v1/items`` (multipart; a 201 stores the upload, which must come back byte for byte from
``GET /v1/items/{id}/image``). Then the 200 MB upload, streamed. :func:`send_filters`: the hostile
search filters (tests/hostile.py ``filter_corpus``) in a JSON body and as the multipart field;
:func:`send_explain`: the bad values of ``explain`` (``explain_corpus``) the same two ways.

    python -m tests.stress.hostile_run --url http://127.0.0.1:8000 --pid PID [--api-key K]
"""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
from hostile import corpus, explain_corpus, filter_corpus, stream_upload

from stress.harness import ServerProcess


def send_corpus(srv: ServerProcess, *, rounds: int = 1, stream_bytes: int = 200 * 10**6) -> dict:
    cases = corpus()
    hwm_before, rss_before = srv.hwm_kb(), srv.rss_kb()
    results = []
    mismatches = []
    t0 = time.monotonic()
    with srv.client(timeout=120) as c:
        for _ in range(rounds):
            for case in cases:
                row = {"case": case.name, "bytes": len(case.data), "expected": case.status, "code": case.code}
                answers = {}
                r = c.post("/v1/embed", files={"file": (case.filename, case.data, case.mime)})
                answers["embed"] = (r.status_code, None if r.status_code == 200 else r.json().get("code"))
                r = c.post("/v1/search", json={"image": base64.b64encode(case.data).decode(), "k": 3})
                answers["search"] = (r.status_code, None if r.status_code == 200 else r.json().get("code"))
                r = c.post(
                    "/v1/items",
                    files={"file": (case.filename, case.data, case.mime)},
                    data={"metadata": json.dumps({"source": f"hostile:{case.name}"})},
                )
                answers["items"] = (r.status_code, None if r.status_code == 201 else r.json().get("code"))
                if r.status_code == 201:
                    new_id = r.json()["ids"][0]
                    img = c.get(f"/v1/items/{new_id}/image")
                    if img.status_code != 200 or img.content != case.data:
                        mismatches.append(f"{case.name}: stored image of {new_id} does not come back as uploaded")
                for route, (status, code) in answers.items():
                    want = (201 if route == "items" and case.status == 200 else case.status, case.code)
                    if (status, code) != want:
                        mismatches.append(f"{case.name} via {route}: {status} {code}, expected {want[0]} {want[1]}")
                row["answers"] = {k: f"{s} {c_ or ''}".strip() for k, (s, c_) in answers.items()}
                results.append(row)
    corpus_s = time.monotonic() - t0
    hwm_corpus = srv.hwm_kb()
    streamed = stream_upload("127.0.0.1", srv.port, "/v1/embed", stream_bytes, chunked=True, headers=srv.headers())
    if streamed.status != 413:
        mismatches.append(f"200 MB upload: {streamed.status}, expected 413")
    alive = srv.alive() and httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
    if not alive:
        mismatches.append("the server did not survive the corpus")
    return {
        "cases": len(cases),
        "requests": 3 * len(cases) * rounds + 1,
        "accepted": sum(c.status == 200 for c in cases),
        "refused": sum(c.status != 200 for c in cases),
        "mismatches": mismatches,
        "vm_hwm_mb_before": round(hwm_before / 1024, 1),
        "vm_hwm_mb_after_corpus": round(hwm_corpus / 1024, 1),
        "vm_hwm_mb_after_stream": round(srv.hwm_kb() / 1024, 1),
        "vm_rss_mb_before": round(rss_before / 1024, 1),
        "vm_rss_mb_after": round(srv.rss_kb() / 1024, 1),
        "stream_200mb": {
            "status": streamed.status,
            "bytes_sent_before_answer": streamed.bytes_sent,
            "seconds": round(streamed.seconds, 3),
        },
        "seconds": round(corpus_s, 1),
        "results": results,
    }


def send_filters(srv: ServerProcess, *, dim: int | None = None) -> dict:
    """Every filter of ``filter_corpus()`` to ``POST /v1/search``: in a JSON body beside a vector,
    and as the multipart field ``filter`` beside an image; each answer must be the documented one
    (a 200 within its ``max_results``), never a 5xx."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 120, 200)).save(buf, "PNG")
    png = buf.getvalue()
    mismatches, results = [], []
    t0 = time.monotonic()
    with srv.client(timeout=120) as c:
        dim = dim or int(c.get("/v1/info").json()["z_dim"])
        for case in filter_corpus():
            for how in ("json", "form"):
                if how == "json":
                    r = c.post("/v1/search", content=case.json_body(dim), headers={"content-type": "application/json"})
                else:
                    r = c.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"filter": case.form_text()})
                status, code = case.expect(how)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                got_code = body.get("code") if r.status_code != 200 else None
                results.append({"case": case.name, "via": how, "status": r.status_code, "code": got_code})
                if (r.status_code, got_code) != (status, code):
                    mismatches.append(
                        f"{case.name} via {how}: {r.status_code} {got_code}, expected {status} {code}: "
                        f"{str(body.get('detail'))[:200]}"
                    )
                elif status != 200 and case.expected_fragment(how) not in body.get("detail", ""):
                    mismatches.append(
                        f"{case.name} via {how}: detail {body.get('detail', '')[:200]!r} lacks {case.expected_fragment(how)!r}"
                    )
                elif status == 200 and case.max_results is not None and len(body["neighbors"]) > case.max_results:
                    mismatches.append(
                        f"{case.name} via {how}: {len(body['neighbors'])} neighbours, at most {case.max_results} expected"
                    )
    return {
        "cases": len(filter_corpus()),
        "requests": len(results),
        "mismatches": mismatches,
        "server_errors": sum(r["status"] >= 500 for r in results),
        "seconds": round(time.monotonic() - t0, 1),
        "results": results,
    }


def send_explain(srv: ServerProcess) -> dict:
    """Every value of ``explain_corpus()`` to ``POST /v1/search``: in a JSON body beside a vector and
    as the multipart field beside an image; each answer must be the documented one (the valid
    values: 200 with a heat map per neighbour, or 409 ``explain_unavailable`` when /v1/info says the
    model cannot explain), never a 5xx."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 40, 160)).save(buf, "PNG")
    png = buf.getvalue()
    mismatches, results = [], []
    explained = 0
    t0 = time.monotonic()
    with srv.client(timeout=120) as c:
        info = c.get("/v1/info").json()
        head = json.dumps({"vector": [0.1] * int(info["z_dim"]), "k": 3})[:-1]
        for case in explain_corpus():
            for how in ("json", "form"):
                if how == "json" and case.json is not None:
                    want = case.status
                    r = c.post(
                        "/v1/search",
                        content=(head + ', "explain": ' + case.json + "}").encode("utf-8", "surrogatepass"),
                        headers={"content-type": "application/json"},
                    )
                elif how == "form" and case.form is not None:
                    want = case.form_status
                    r = c.post(
                        "/v1/search", files=[("file", ("q.png", png, "image/png")), *[("explain", (None, v)) for v in case.form]]
                    )
                else:
                    continue
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                asked_true = want == 200 and "false" not in (case.json or "") + "".join(case.form or ())
                if asked_true and not info.get("explain"):
                    want, code = 409, "explain_unavailable"
                else:
                    code = case.code if want != 200 else None
                got_code = body.get("code") if r.status_code != 200 else None
                results.append({"case": case.name, "via": how, "status": r.status_code, "code": got_code})
                if (r.status_code, got_code) != (want, code):
                    mismatches.append(
                        f"{case.name} via {how}: {r.status_code} {got_code}, expected {want} {code}: "
                        f"{str(body.get('detail'))[:200]}"
                    )
                elif want == 422 and "explain" not in body.get("detail", ""):
                    mismatches.append(f"{case.name} via {how}: detail {body.get('detail', '')[:200]!r} does not name explain")
                elif want == 200:
                    maps = [n.get("explain") for n in body["neighbors"]]
                    if asked_true and not all(isinstance(m, dict) and len(m["scores"]) == m["h"] for m in maps):
                        mismatches.append(f"{case.name} via {how}: neighbours without heat maps")
                    if not asked_true and any("explain" in n for n in body["neighbors"]):
                        mismatches.append(f"{case.name} via {how}: explain false, yet heat maps came back")
                    explained += asked_true
    return {
        "cases": len(explain_corpus()),
        "requests": len(results),
        "mismatches": mismatches,
        "explained": explained,
        "server_errors": sum(r["status"] >= 500 for r in results),
        "seconds": round(time.monotonic() - t0, 1),
        "results": results,
    }
