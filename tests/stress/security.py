"""Security checks against a running ``infomax serve`` started with an API key.

* writes without the key (or with a wrong one, in every spelling) are refused with 401, and
  change nothing; reads stay open;
* the key never shows in the server's output (stdout + stderr, access log included), nor in any
  answer;
* no path parameter can read a file outside the stored images: ids such as ``../../etc/passwd``,
  ``%2e%2e``, absolute paths, NUL bytes, backslashes, in every route that takes a path parameter
  (sent over a raw socket, so no client library normalises them first);
* an oversized body is cut off early: the answer (413) arrives long before a 200 MB upload is
  sent, with a declared Content-Length and with chunked transfer (no length: the server has to
  count).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
from hostile import stream_upload

from stress.harness import ServerProcess, unique_png

PASSWD_MARKERS = (b"root:x:0:0", b"root:*:0:0", b"daemon:")
SOURCE_MARKERS = (b"def create_app", b"BaseSettings", b"SQLite format 3", b"import ")


def raw_request(
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 30.0,
) -> tuple[int | None, bytes]:
    """Sends ``method target`` byte for byte (no normalisation of the path); returns (status, body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    if not raw.startswith(b"HTTP/1.1 "):
        return None, raw
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(raw[9:12]), rest


TRAVERSALS = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "..\\..\\etc\\passwd",
    "..%5c..%5cetc%5cpasswd",
    "....//....//etc/passwd",
    "file:%2f%2f%2fetc%2fpasswd",
    "%00",
    "1%00.png",
    "0/../../../../etc/passwd",
    "~root",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "1;cat%20/etc/passwd",
    "../metadata.sqlite",
    "..%2fmetadata.sqlite",
    "../../service/settings.py",
    "9" * 40,
    "-1",
    "1e3",
    "0x10",
]


def traversal_targets(base_item: int = 0) -> list[tuple[str, str]]:
    """(method, target) pairs: every route with a path parameter, each traversal string."""
    out = []
    for t in TRAVERSALS:
        out += [
            ("GET", f"/v1/items/{t}"),
            ("GET", f"/v1/items/{t}/image"),
            ("DELETE", f"/v1/items/{t}"),
            ("GET", f"/static/{t}"),
            ("GET", f"/v1/items/{base_item}/image/{t}"),
            ("GET", f"/v1/items/{t}/duplicates"),
            ("GET", f"/v1/items/{base_item}/duplicates?threshold={t}&limit={t}"),
        ]
    out += [
        ("GET", "/static/../../../../etc/passwd"),
        ("GET", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd"),
        ("GET", "/static/%2e%2e/routes/web.py"),
        ("GET", "/static/../settings.py"),
        ("GET", "/static//etc/passwd"),
        ("GET", "//etc/passwd"),
        ("GET", "/../../../etc/passwd"),
        ("GET", "http://127.0.0.1/../../etc/passwd"),
    ]
    return out


def check_traversal(srv: ServerProcess) -> dict:
    """Every traversal target answered 4xx with no file content in the answer."""
    statuses: dict[int | None, int] = {}
    leaks = []
    for method, target in traversal_targets():
        status, body = raw_request("127.0.0.1", srv.port, method, target, headers=srv.headers())
        statuses[status] = statuses.get(status, 0) + 1
        bad_status = status is None or status >= 500 or (200 <= status < 300 and method != "DELETE")
        if any(m in body for m in PASSWD_MARKERS + SOURCE_MARKERS) or bad_status:
            leaks.append(f"{method} {target} -> {status}: {body[:120]!r}")
    # ids in bodies: a path where an integer id belongs
    with srv.client() as c:
        for t in ("../../etc/passwd", "/etc/passwd"):
            for r in (
                c.post("/v1/search", json={"id": t}),
                c.post("/v1/items", files={"file": ("a.png", unique_png(5), "image/png")}, data={"id": t}),
            ):
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code < 400 or r.status_code >= 500 or b"root:" in r.content:
                    leaks.append(f"id {t!r} in a body -> {r.status_code} {r.text[:120]}")
        # a file name with a path: stored nowhere on disk, nothing written outside
        marker = Path(f"/tmp/infomax-traversal-{srv.port}.png")
        r = c.post("/v1/items", files={"file": (f"../../../../..{marker}", unique_png(6), "image/png")})
        if r.status_code != 201 or marker.exists():
            leaks.append(f"upload named ../..{marker}: {r.status_code}, file written: {marker.exists()}")
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "leaks": leaks,
    }


def check_auth(srv: ServerProcess, key: str) -> dict:
    """Writes need the key; every wrong way of sending it gets 401 and changes nothing."""
    problems = []
    png = unique_png(77)
    wrong = {
        "no key": {},
        "wrong key": {"X-API-Key": "not-the-key"},
        "empty key": {"X-API-Key": ""},
        "key prefix": {"X-API-Key": key[:-1]},
        "key + suffix": {"X-API-Key": key + "x"},
        "key upper-cased": {"X-API-Key": key.upper()},
        "bearer wrong": {"Authorization": "Bearer nope"},
        "basic scheme": {"Authorization": f"Basic {key}"},
    }
    refused = 0
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        n0 = c.get("/readyz").json()["items"]
        victim = c.get("/v1/items/sample", params={"n": 1}).json()["items"][0]["id"]  # an item that exists
        for name, headers in wrong.items():
            r1 = c.post("/v1/items", files={"file": ("a.png", png, "image/png")}, headers=headers)
            r2 = c.delete(f"/v1/items/{victim}", headers=headers)
            r3 = c.post("/v1/items", json={"items": [{"image": "iVBORw0KGgo="}]}, headers=headers)
            for r in (r1, r2, r3):
                if r.status_code == 401 and r.json().get("code") == "unauthorized":
                    refused += 1
                else:
                    problems.append(f"{name}: {r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:100]}")
                if key in r.text:
                    problems.append(f"{name}: the key appears in the answer")
        if c.get("/readyz").json()["items"] != n0 or c.get(f"/v1/items/{victim}").status_code != 200:
            problems.append("a refused write changed the index")
        # reads stay open, writes with the key work (both spellings)
        for path in ("/v1/info", f"/v1/items/{victim}", "/metrics", "/healthz"):
            if c.get(path).status_code != 200:
                problems.append(f"GET {path} without key -> not 200")
        r = c.post("/v1/items", files={"file": ("a.png", png, "image/png")}, headers={"X-API-Key": key})
        if r.status_code != 201:
            problems.append(f"POST with X-API-Key -> {r.status_code}")
        else:
            new_id = r.json()["ids"][0]
            r = c.delete(f"/v1/items/{new_id}", headers={"Authorization": f"Bearer {key}"})
            if r.status_code != 200:
                problems.append(f"DELETE with Bearer -> {r.status_code}")
        for path in ("/v1/info", "/metrics", "/openapi.json", "/"):
            if key in c.get(path).text:
                problems.append(f"the key appears in GET {path}")
    return {"refused": refused, "attempts": 3 * len(wrong), "problems": problems}


def check_oversize(srv: ServerProcess, total: int = 200 * 10**6) -> list[dict]:
    """A ``total``-byte upload to each body-taking route, with and without Content-Length: the
    413 must come back after a small fraction of it was sent."""
    out = []
    for path in ("/v1/embed", "/v1/search", "/v1/items"):
        for chunked in (False, True):
            res = stream_upload("127.0.0.1", srv.port, path, total, chunked=chunked, headers=srv.headers())
            code = None
            try:
                code = json.loads(res.body).get("code")
            except (ValueError, AttributeError):
                pass
            out.append(
                {
                    "path": path,
                    "transfer": "chunked" if chunked else "content-length",
                    "status": res.status,
                    "code": code,
                    "bytes_sent_before_answer": res.bytes_sent,
                    "body_bytes": res.total_bytes,
                    "seconds": round(res.seconds, 3),
                    "client_saw": res.error,
                }
            )
    return out


def send_key_in_query(srv: ServerProcess, key: str) -> list[int]:
    """A client mistake: the key in the URL (which the server does not accept: 401). Whatever the
    server then logs of the URL must not hold the key."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        return [
            c.post("/v1/items", params={"api_key": key}, files={"file": ("a.png", unique_png(3), "image/png")}).status_code,
            c.get("/v1/items/sample", params={"n": 1, "key": key}).status_code,
        ]


def check_key_not_logged(srv: ServerProcess, key: str) -> dict:
    """Greps everything the server process wrote for the key (and its base64 / hex forms)."""
    import base64

    text = srv.log()
    forms = {"plain": key, "base64": base64.b64encode(key.encode()).decode(), "hex": key.encode().hex()}
    return {"log_bytes": len(text.encode()), "found": [name for name, f in forms.items() if f in text]}


def exercise_with_key(srv: ServerProcess, key: str) -> None:
    """Requests that put the key in front of the server in every way a client might (headers,
    a bearer token, a wrong key close to it, error paths), so that the log grep means something."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        png = unique_png(91)
        c.post("/v1/items", files={"file": ("k.png", png, "image/png")}, headers={"X-API-Key": key})
        c.post("/v1/items", files={"file": ("k.png", b"not an image", "image/png")}, headers={"X-API-Key": key})
        c.post("/v1/items", content=b"{bad json", headers={"X-API-Key": key, "Content-Type": "application/json"})
        c.delete("/v1/items/999999999", headers={"Authorization": f"Bearer {key}"})
        c.post("/v1/items", files={"file": ("k.png", png, "image/png")}, headers={"X-API-Key": key + "-wrong"})
        c.get("/v1/items/0", headers={"X-API-Key": key})
        c.post("/v1/search", json={"id": 0, "k": 10_000}, headers={"X-API-Key": key})
        # The access log is written in request order: once a last, marked request's line is in the
        # file, every line above is too (an event to wait for, where a sleep would race the log).
        marker = f"end-of-exercise-{time.monotonic_ns()}"
        c.get("/v1/info", params={"marker": marker}, headers={"X-API-Key": key})
    wait_for_log(srv, marker)


def wait_for_log(srv: ServerProcess, text: str, timeout: float = 60.0) -> str:
    """Returns the server's log once it holds ``text``; fails naming it after ``timeout`` seconds
    (a bound on failure only: the wait ends as soon as the line is there)."""
    deadline = time.monotonic() + timeout
    while True:
        log = srv.log()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in the server log:\n{log[-3000:]}")
        time.sleep(0.02)  # how often the file is looked at, not a synchronisation
