"""The service as deployed: real ``infomax serve`` processes (uvicorn) on 127.0.0.1, over real HTTP.

Covers what an in-process client cannot: concurrency through uvicorn, streaming size limits on a
socket, several workers, the command line, and durability across ``kill -9``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from test_service import N_ITEMS, REPO, Server, copy_index, image_file, index_template, serve  # noqa: F401 (fixture)

from infomax.imagestore import ImageStore
from infomax.index import EmbeddingIndex


@pytest.fixture(scope="module")
def server(index_template, tiny_artifact, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    folder = copy_index(index_template, tmp / "index")
    # max_wait_ms 20: concurrent requests reliably share batches, whatever the machine's load
    with serve(
        [
            "--model",
            str(tiny_artifact),
            "--index",
            str(folder),
            "--max-wait-ms",
            "20",
            "--max-upload-bytes",
            "300000",
            "--no-access-log",
        ],
        tmp / "serve.log",
    ) as srv:
        srv.index = folder
        yield srv


def batch_stats(metrics_text: str) -> tuple[float, float]:
    """(batches, requests served by them) from the Prometheus text."""
    count = float(re.search(r"^infomax_encode_batch_requests_count (\S+)$", metrics_text, re.M).group(1))
    total = float(re.search(r"^infomax_encode_batch_requests_sum (\S+)$", metrics_text, re.M).group(1))
    return count, total


def test_concurrent_searches_are_batched_and_all_correct(server, index_template):
    pngs = index_template["pngs"]
    before = batch_stats(httpx.get(server.url + "/metrics").text)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *[client.post("/v1/search", files={"file": ("q.png", pngs[i], "image/png")}, data={"k": "3"}) for i in range(32)]
            )

    responses = asyncio.run(run())
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["neighbors"][0]["id"] == i  # every answer went back to its own request
    after = batch_stats(httpx.get(server.url + "/metrics").text)
    batches, requests = after[0] - before[0], after[1] - before[1]
    assert requests == 32
    assert batches < 32, "no two concurrent searches shared an encoder batch"


def test_concurrent_writes_are_serialised_and_all_durable(server):
    pngs = [image_file(seed=100 + i) for i in range(8)]
    n0 = httpx.get(server.url + "/readyz").json()["items"]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/v1/items",
                        files={"file": (f"{i}.png", png, "image/png")},
                        data={"metadata": json.dumps({"source": f"w{i}"})},
                    )
                    for i, png in enumerate(pngs)
                ]
            )

    responses = asyncio.run(run())
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    ids = [r.json()["ids"][0] for r in responses]
    assert len(set(ids)) == 8
    assert httpx.get(server.url + "/readyz").json()["items"] == n0 + 8
    for i, (item_id, png) in enumerate(zip(ids, pngs)):
        assert httpx.get(f"{server.url}/v1/items/{item_id}").json()["source"] == f"w{i}"
        assert httpx.get(f"{server.url}/v1/items/{item_id}/image").content == png


def _raw_request(port: int, head: bytes, body_chunks: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """Send a hand-made request on a socket; returns (response bytes, seconds until the first byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        t0 = time.monotonic()
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was through: what we want
        data = b""
        while True:  # until the server closes the connection (it does after a 413)
            part = s.recv(65536)
            if not part:
                break
            data += part
        return data, time.monotonic() - t0


def test_declared_oversized_upload_is_refused_before_the_body_is_sent(server):
    head = (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    data, _ = _raw_request(server.port, head, [])  # not a byte of the body is sent
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b'"code":"payload_too_large"' in data


def test_chunked_oversized_upload_is_refused_while_streaming(server):
    head = (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (65536, b"a" * 65536)] * 40
    # 40 chunks of 64 KiB (2.6 MB) would follow; the server must answer after ~5 (limit 300 kB)
    data, _ = _raw_request(server.port, head, chunks, pause=0.02)
    # the body never ended (no last chunk was sent), so the answer came while it streamed
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"connection: close" in data.lower()
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_durability_items_survive_kill_9(index_template, tiny_artifact, tmp_path):
    folder = copy_index(index_template, tmp_path / "index")
    args = ["--model", str(tiny_artifact), "--index", str(folder), "--no-access-log"]
    pngs = [image_file((32, 32), seed=200 + i) for i in range(5)]
    srv = Server(args, tmp_path / "serve1.log").wait_ready()
    try:
        acked = []
        r = httpx.post(
            srv.url + "/v1/items",
            files=[("file", (f"{i}.png", pngs[i], "image/png")) for i in range(3)],
            data={"metadata": [json.dumps({"source": f"s{i}", "label": i}) for i in range(3)]},
        )
        assert r.status_code == 201
        acked += r.json()["ids"]
        r = httpx.post(
            srv.url + "/v1/items",
            json={
                "items": [
                    {
                        "image": __import__("base64").b64encode(pngs[i]).decode(),
                        "id": 90_000 + i,
                        "metadata": {"source": f"s{i}", "label": i},
                    }
                    for i in (3, 4)
                ]
            },
        )
        assert r.status_code == 201
        acked += r.json()["ids"]
    finally:
        srv.kill9()  # right after the last answer: no shutdown, no checkpoint
    assert acked == [N_ITEMS, N_ITEMS + 1, N_ITEMS + 2, 90_003, 90_004]

    with serve(args, tmp_path / "serve2.log") as srv:
        assert httpx.get(srv.url + "/readyz").json()["items"] == N_ITEMS + 5
        for i, item_id in enumerate(acked):
            item = httpx.get(f"{srv.url}/v1/items/{item_id}").json()
            assert (item["id"], item["source"], item["label"]) == (item_id, f"s{i}", i)
            assert httpx.get(f"{srv.url}/v1/items/{item_id}/image").content == pngs[i]
            hit = httpx.post(srv.url + "/v1/search", files={"file": ("q.png", pngs[i], "image/png")}).json()["neighbors"][0]
            assert hit["id"] == item_id and hit["score"] > 0.9999
        # a new item after the restart continues the id sequence
        r = httpx.post(srv.url + "/v1/items", files={"file": ("n.png", image_file(seed=300), "image/png")})
        assert r.json()["ids"] == [90_005]
    # index and metadata agree on disk too
    index = EmbeddingIndex.load(folder, read_only=True)
    assert len(index) == N_ITEMS + 6 and all(index.get(i) is not None for i in acked)
    index.close()
    assert all(ImageStore(folder, read_only=True).get(i) is not None for i in acked)


def test_several_read_only_workers_serve_and_see_the_writer(server, tiny_artifact, tmp_path):
    """The module's server is the one writer; a second `infomax serve` with two read-only workers
    serves the same folder."""
    png = image_file(seed=400)
    with serve(
        ["--model", str(tiny_artifact), "--index", str(server.index), "--workers", "2", "--read-only", "--refresh-s", "0.2"],
        tmp_path / "readers.log",
    ) as readers:
        new_id = httpx.post(server.url + "/v1/items", files={"file": ("a.png", png, "image/png")}).json()["ids"][0]
        assert httpx.post(readers.url + "/v1/items", files={"file": ("a.png", png, "image/png")}).status_code == 403
        # new connections spread over the two processes: ten answers in a row must see the new item
        deadline = time.monotonic() + 20
        found = 0
        while found < 10 and time.monotonic() < deadline:
            with httpx.Client(base_url=readers.url) as c:  # a new connection each time
                hits = c.post("/v1/search", files={"file": ("q.png", png, "image/png")}).json()["neighbors"]
            found = found + 1 if hits[0]["id"] == new_id else 0
            time.sleep(0.05)
        assert found == 10, readers.log()
        started = [line for line in readers.log().splitlines() if "Started server process" in line]
        assert len(started) == 2, readers.log()


def serve_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infomax.cli", "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )


def test_cli_refuses_bad_setups_with_one_line(tiny_artifact, tmp_path):
    r = serve_cli("--model", str(tiny_artifact), "--index", str(tmp_path / "missing"))
    assert r.returncode == 1 and "--create-index" in r.stderr and "Traceback" not in r.stderr
    r = serve_cli("--model", str(tmp_path), "--index", str(tmp_path), "--create-index")
    assert r.returncode == 1 and "encoder.json" in r.stderr
    r = serve_cli("--model", str(tiny_artifact), "--index", str(tmp_path), "--workers", "2", "--api-key", "do-not-print-me")
    assert r.returncode == 1 and "read_only" in r.stderr and "do-not-print-me" not in r.stderr
    r = serve_cli("--help")
    assert r.returncode == 0 and "--workers" in r.stdout and "--create-index" in r.stdout


def test_cli_refuses_an_index_of_another_encoder_or_length_in_one_line(index_template, tmp_path):
    from conftest import make_artifact

    other = make_artifact(tmp_path / "other", z_dim=16, seed=1)
    r = serve_cli("--model", str(other), "--index", str(index_template["folder"]))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "artifact mismatch" in r.stderr, r.stderr
    assert str(index_template["folder"]) in r.stderr and str(other) in r.stderr
    # An index that records no artifact: the lengths still have to agree.
    EmbeddingIndex.create(32, path=tmp_path / "anonymous").close()
    r = serve_cli("--model", str(other), "--index", str(tmp_path / "anonymous"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "makes 16-dimensional vectors but the index" in r.stderr and "32-dimensional" in r.stderr
