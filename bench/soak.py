#!/usr/bin/env python
"""Soak test of the HTTP service: 32 concurrent clients mixing searches and adds against a real
``infomax serve`` on 127.0.0.1 for N minutes; requests/s, p50/p99 latency, errors, and the
server's resident memory at start and end.

* Server: started here (``--model``/``--index``, or by default a random-init encoder and an index
  of ``--items`` CIFAR-10 test images built in a temporary folder, with an API key), or an
  already running one (``--url`` with ``--pid`` for the memory readings).
* Load: ``--clients`` closed-loop clients (one keep-alive connection each, one request at a time)
  on asyncio, with prebuilt HTTP/1.1 requests (an httpx client costs ~10x more CPU per request,
  taken from the server on a 2-core machine). The mix: 40% search by image upload (a stored
  CIFAR image: the top hit must be the image itself), 15% search by vector, 15% search by id,
  20% add (a new random picture with metadata; 201 expected), 10% GET of an item.
* Every answer is checked: an error is a transport failure, an unexpected status, or a search
  whose top hit is not the query's own item.
* Memory: VmRSS of the server every 5 s. "start" is the reading at the end of the warm-up
  (``--warmup-s`` of the same load, left out of the latency figures: allocator pools, the
  thread pool and SQLite caches fill up during it); growth = end / start - 1 (target < 10%).

    python bench/soak.py --minutes 10
    python bench/soak.py --minutes 3 --json out/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402

HOST = "127.0.0.1"
BOUNDARY = "soakboundary5e0c"
MIX = (("search_image", 0.40), ("search_vector", 0.15), ("search_id", 0.15), ("add", 0.20), ("get_item", 0.10))


def png_noise(seed: int, size: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "Content-Type: image/png\r\n" if filename else ""
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n{ctype}\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def request(method: str, path: str, body: bytes = b"", ctype: str | None = None, key: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if key:
        lines.append(f"X-API-Key: {key}")
    if body or method == "POST":
        lines += [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Conn:
    """One keep-alive HTTP/1.1 connection; ``send`` returns (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        try:
            self.writer.write(raw)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await self.reader.readexactly(length) if length else b""
            if close:
                await self.close()
            return status, body
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:  # noqa: BLE001
                pass
        self.reader = self.writer = None


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    count: int = 0

    def ok(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        self.count += 1

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.count += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{kind}: {what}")


class Workload:
    def __init__(self, port: int, key: str | None, pngs: list[bytes], codes: np.ndarray, ids: list[int]) -> None:
        self.port, self.key = port, key
        self.search_image = [
            request(
                "POST",
                "/v1/search",
                multipart([("file", "q.png", p), ("k", None, b"10")]),
                f"multipart/form-data; boundary={BOUNDARY}",
            )
            for p in pngs
        ]
        self.search_vector = [
            request("POST", "/v1/search", json.dumps({"vector": c.tolist(), "k": 10}).encode(), "application/json") for c in codes
        ]
        self.ids = ids
        self.added = 0
        self.seq = itertools_count()

    def make(self, kind: str, rng: random.Random) -> tuple[bytes, int | None]:
        """(request bytes, expected top-1 id of a search by image or None)."""
        if kind == "search_image":
            i = rng.randrange(len(self.search_image))
            return self.search_image[i], self.ids[i]
        if kind == "search_vector":
            return rng.choice(self.search_vector), None
        if kind == "search_id":
            return request(
                "POST", "/v1/search", json.dumps({"id": rng.choice(self.ids), "k": 10}).encode(), "application/json"
            ), None
        if kind == "add":
            n = next(self.seq)
            body = multipart(
                [
                    ("file", f"soak-{n}.png", png_noise(5_000_000 + n)),
                    ("metadata", None, json.dumps({"source": f"soak:{n}", "label": n % 10}).encode()),
                ]
            )
            return request("POST", "/v1/items", body, f"multipart/form-data; boundary={BOUNDARY}", self.key), None
        return request("GET", f"/v1/items/{rng.choice(self.ids)}"), None


def itertools_count():
    import itertools

    return itertools.count()


EXPECTED = {"add": 201}


def mix(add_share: float) -> list[tuple[str, float]]:
    """MIX with the share of adds set to ``add_share`` (the others scaled to fill the rest)."""
    rest = sum(p for k, p in MIX if k != "add")
    return [(k, add_share if k == "add" else p * (1 - add_share) / rest) for k, p in MIX]


async def client(
    w: Workload, stats: Stats, until: float, rng: random.Random, record_after: float, weights_by_kind: list[tuple[str, float]]
) -> None:
    conn = Conn(w.port)
    kinds = [k for k, _ in weights_by_kind]
    weights = [p for _, p in weights_by_kind]
    try:
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            raw, top = w.make(kind, rng)
            t0 = time.monotonic()
            try:
                status, body = await conn.send(raw)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                if t0 >= record_after:
                    stats.error(kind, f"{type(e).__name__}: {e}")
                continue
            dt = time.monotonic() - t0
            if t0 < record_after:
                continue
            if status != EXPECTED.get(kind, 200):
                stats.error(kind, f"{status} {body[:200]!r}")
                continue
            if top is not None:
                neighbors = json.loads(body)["neighbors"]
                if not neighbors or neighbors[0]["id"] != top:
                    stats.error(kind, f"top-1 {neighbors[0]['id'] if neighbors else None}, expected {top}")
                    continue
            stats.ok(kind, dt)
    finally:
        await conn.close()


def rss_kb(pid: int) -> int | None:
    from stress.harness import proc_status_kb

    return proc_status_kb(pid, "VmRSS")


async def run_load(
    port: int,
    pid: int | None,
    key: str | None,
    w: Workload,
    *,
    clients: int,
    seconds: float,
    warmup: float,
    seed: int,
    add_share: float = 0.2,
    log=print,
) -> dict:
    stats = Stats()
    rss: list[tuple[float, int]] = []
    t_start = time.monotonic()
    record_after = t_start + warmup
    until = record_after + seconds
    rng = random.Random(seed)
    weights = mix(add_share)
    tasks = [
        asyncio.create_task(client(w, stats, until, random.Random(rng.random()), record_after, weights)) for _ in range(clients)
    ]
    rss_start = None
    last_report, last_count = time.monotonic(), 0
    while any(not t.done() for t in tasks):
        await asyncio.sleep(5 if seconds > 60 else 1)
        now = time.monotonic()
        r = rss_kb(pid) if pid else None
        if r:
            rss.append((now - t_start, r))
        if rss_start is None and now >= record_after and r:
            rss_start = r
        if now - last_report >= 60 or (seconds <= 60 and now - last_report >= 10):
            done = stats.count - last_count
            lat = [x for v in stats.latencies.values() for x in v[-2000:]]
            log(
                f"  t={now - t_start:5.0f}s  {done / (now - last_report):6.1f} req/s  "
                f"p50 {1000 * _pct(lat, 50):6.1f} ms  p99 {1000 * _pct(lat, 99):6.1f} ms  "
                f"errors {sum(stats.errors.values())}  rss {r / 1024 if r else float('nan'):.0f} MB"
            )
            last_report, last_count = now, stats.count
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - record_after
    rss_end = rss_kb(pid) if pid else None
    all_lat = [x for v in stats.latencies.values() for x in v]
    return {
        "clients": clients,
        "mix": {k: round(p, 3) for k, p in weights},
        "seconds": round(elapsed, 1),
        "warmup_s": warmup,
        "requests": stats.count,
        "requests_per_s": round(stats.count / elapsed, 1),
        "p50_ms": round(1000 * _pct(all_lat, 50), 1),
        "p99_ms": round(1000 * _pct(all_lat, 99), 1),
        "errors": sum(stats.errors.values()),
        "errors_by_kind": stats.errors,
        "error_examples": stats.error_examples,
        "by_kind": {
            k: {"n": len(v), "p50_ms": round(1000 * _pct(v, 50), 1), "p99_ms": round(1000 * _pct(v, 99), 1)}
            for k, v in sorted(stats.latencies.items())
        },
        "rss_mb_start": round(rss_start / 1024, 1) if rss_start else None,
        "rss_mb_end": round(rss_end / 1024, 1) if rss_end else None,
        "rss_growth": round(rss_end / rss_start - 1, 4) if rss_start and rss_end else None,
        "rss_series_mb": [(round(t), round(r / 1024, 1)) for t, r in rss[:: max(1, len(rss) // 60)]],
    }


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def prepare(port: int, key: str | None, n_queries: int = 256) -> Workload:
    """Query material from the server itself: stored images (as PNG) with their ids, and codes."""
    import httpx

    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=60) as c:
        ids = sorted({it["id"] for it in c.get("/v1/items/sample", params={"n": min(n_queries, 200)}).json()["items"]})
        pngs = []
        keep = []
        for i in ids:
            r = c.get(f"/v1/items/{i}/image")
            if r.status_code == 200:
                pngs.append(r.content)
                keep.append(i)
        codes = []
        for a in range(0, len(pngs), 32):
            files = [("file", (f"{j}.png", p, "image/png")) for j, p in enumerate(pngs[a : a + 32])]
            codes += c.post("/v1/embed", files=files).json()["codes"]
    return Workload(port, key, pngs, np.asarray(codes, np.float32), keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--warmup-s", type=float, default=30.0)
    p.add_argument("--add-share", type=float, default=0.2, help="share of adds in the mix (0: reads only)")
    p.add_argument("--items", type=int, default=2000, help="CIFAR-10 test images in the index built here")
    p.add_argument("--z-dim", type=int, default=128, help="code size of the random-init encoder built here")
    p.add_argument("--model", type=Path, help="serve this artifact (with --index) instead of building one")
    p.add_argument("--index", type=Path, help="index folder to serve (a copy is used: the soak adds items)")
    p.add_argument("--url", help="an already running server (then --pid for its memory, --api-key for adds)")
    p.add_argument("--pid", type=int)
    p.add_argument("--api-key")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)

    from stress.harness import ServerProcess, build_index, machine, make_artifact

    log = lambda *x: print(*x, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="infomax-soak-") as tmp:
        tmp = Path(tmp)
        srv = None
        if a.url:
            port = int(a.url.rsplit(":", 1)[1].strip("/"))
            pid, key = a.pid, a.api_key
        else:
            import shutil

            key = a.api_key or "soak-key"
            if a.model:
                artifact = a.model
                folder = tmp / "index"
                shutil.copytree(a.index, folder)
            else:
                log(f"building a random-init encoder (z_dim {a.z_dim}) and an index of {a.items} CIFAR-10 images ...")
                artifact = make_artifact(tmp / "artifact", z_dim=a.z_dim)
                folder = build_index(tmp / "index", artifact, n=a.items)["folder"]
            srv = ServerProcess(artifact, folder, tmp / "server.log", args=["--no-access-log"], api_key=key).start()
            port, pid = srv.port, srv.pid
            log(f"server ready in {srv.ready_s:.1f} s (pid {pid}, RSS {srv.rss_kb() / 1024:.0f} MB)")
        try:
            rss_ready = rss_kb(pid) if pid else None
            w = prepare(port, key)
            log(
                f"soak: {a.clients} clients, {a.minutes:g} min after {a.warmup_s:g} s of warm-up, mix "
                + ", ".join(f"{k} {100 * p_:.0f}%" for k, p_ in mix(a.add_share))
            )
            fig = asyncio.run(
                run_load(
                    port,
                    pid,
                    key,
                    w,
                    clients=a.clients,
                    seconds=60 * a.minutes,
                    warmup=a.warmup_s,
                    seed=a.seed,
                    add_share=a.add_share,
                    log=log,
                )
            )
            fig["rss_mb_at_ready"] = round(rss_ready / 1024, 1) if rss_ready else None
            fig["items_added"] = fig["by_kind"].get("add", {}).get("n", 0)
            fig["machine"] = machine()
            fig["loadavg_end"] = os.getloadavg()
            fig["date"] = time.strftime("%Y-%m-%d %H:%M %Z")
            fig["command"] = "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
            if srv is not None:
                fig["server_exit"] = srv.stop()
                fig["server_log_tracebacks"] = srv.log().count("Traceback")
        finally:
            if srv is not None and srv.alive():
                srv.kill9()
    log(json.dumps({k: v for k, v in fig.items() if k != "rss_series_mb"}, indent=1))
    log(
        f"\n| clients | minutes | req/s | p50 ms | p99 ms | errors | RSS start MB | RSS end MB | growth |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {fig['clients']} | {fig['seconds'] / 60:.1f} | {fig['requests_per_s']} | {fig['p50_ms']} | {fig['p99_ms']} "
        f"| {fig['errors']} | {fig['rss_mb_start']} | {fig['rss_mb_end']} | "
        f"{100 * fig['rss_growth']:.1f}% |"
        if fig["rss_growth"] is not None
        else ""
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(fig, indent=1))
    ok = fig["errors"] == 0 and (fig["rss_growth"] is None or fig["rss_growth"] < 0.10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
