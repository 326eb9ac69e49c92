#!/usr/bin/env python
"""Load test of the HTTP service: `POST /v1/search` with a 32x32 PNG upload, against real
`infomax serve` processes on 127.0.0.1.

* Model: ``--model ARTIFACT``, or (default) a random-init reference encoder
  (``DeepInfoMax().export``, seed 0, z_dim 256): the same compute as a trained one.
* Index: the CIFAR-10 train split (``--items``, default 50 000) encoded by the model, built with
  ``EmbeddingIndex.build`` (the chooser picks HNSW32 at 50k) and cached under ``--cache``.
* Load: asyncio, ``C`` connections each sending one request at a time (closed loop), for
  ``--seconds`` or ``--max-requests`` per cell, whichever ends first, after a warm-up. Query
  images are 256 CIFAR-10 test images as PNG in prebuilt multipart bodies. The requests go out
  on asyncio streams as prebuilt HTTP/1.1 (``--client raw``, the default) or through
  ``httpx.AsyncClient`` (``--client httpx``); httpx is used for everything else (readiness,
  metrics). On a 2-core machine the client's CPU is taken from the server: httpx costs about
  ten times more per request than the raw client.
* Cells: batching on and off x concurrency 1, 8, 32 (``--concurrency``), then the memory of
  ``--workers 2`` (RSS and PSS of each worker process).

Prints a markdown table with the machine. The load generator runs on the same machine as the
server: on a 2-core box they compete for the same cores.

    python bench/http_load.py                          # ~4 min the first time (encodes 50k), then ~2 min
    python bench/http_load.py --model runs/infomax/version_0/artifact --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"  # the only host this tool talks to
BOUNDARY = "infomaxbenchboundary7d1f"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- model and index


def ensure_artifact(model: str | None, cache: Path) -> Path:
    if model:
        return Path(model)
    path = cache / "random-init-artifact"
    if not (path / "encoder.json").is_file():
        import torch

        from infomax.module import DeepInfoMax

        torch.manual_seed(0)
        DeepInfoMax().export(path, dataset="cifar10", command="bench/http_load.py (random init)")
    return path


def ensure_index(artifact: Path, items: int, cache: Path, data_dir: str | None) -> Path:
    import numpy as np
    import torch

    from infomax.artifact import load_encoder
    from infomax.data import load_cifar10
    from infomax.index import EmbeddingIndex
    from service.model import ServingModel

    encoder = load_encoder(artifact)
    folder = cache / f"index-{encoder.id[:12]}-{items}"
    if (folder / "index.json").is_file():
        return folder
    images, labels = load_cifar10(data_dir, "train")
    images, labels = images[:items], labels[:items]
    model = ServingModel(encoder)  # the service's own fast path
    t0 = time.perf_counter()
    codes = np.concatenate([model.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
    print(f"encoded {len(codes)} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    metadata = [{"source": f"cifar10:train:{i}", "label": int(labels[i])} for i in range(len(codes))]
    EmbeddingIndex.build(codes, metadata=metadata, artifact={"id": encoder.id, "path": str(artifact)}, path=folder).close()
    del torch
    return folder


def query_bodies(data_dir: str | None, n: int = 256) -> list[bytes]:
    """Multipart bodies, each a 32x32 PNG of a CIFAR-10 test image plus k=10."""
    from PIL import Image

    from infomax.data import load_cifar10

    images, _ = load_cifar10(data_dir, "test")
    bodies = []
    for t in images[:n]:
        buf = io.BytesIO()
        Image.fromarray(t.permute(1, 2, 0).numpy()).save(buf, "PNG")
        png = buf.getvalue()
        bodies.append(
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + png
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
    return bodies


# ----------------------------------------------------------------------------- server


class Server:
    def __init__(self, artifact: Path, index: Path, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "infomax.cli",
            "serve",
            "--model",
            str(artifact),
            "--index",
            str(index),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--read-only",
            "--no-access-log",
            "--log-level",
            "warning",
            *extra,
        ]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> Server:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"infomax serve exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"infomax serve not ready after {timeout} s; see {self._log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (not multiprocessing's resource tracker)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                    continue
                if b"resource_tracker" not in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its own threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB: PSS shares pages mapped by several processes between them."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


# ----------------------------------------------------------------------------- load


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client for prebuilt requests: a few microseconds of CPU per
    request, where httpx spends milliseconds (on a 2-core machine the load generator's CPU is
    taken from the server under test)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
        await self.reader.readexactly(length)
        if b"connection: close" in lower:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, max_requests: int, warmup: float, client_kind: str = "raw"
) -> dict:
    import httpx

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    port = int(url.rsplit(":", 1)[1])
    raws = [
        (
            f"POST /v1/search HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {headers['content-type']}\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    latencies: list[float] = []
    errors = 0
    counter = 0

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def send(conn: RawConnection, i: int) -> bool:
            if client_kind == "httpx":
                r = await client.post("/v1/search", content=bodies[i], headers=headers)
                return r.status_code == 200
            return await asyncio.wait_for(conn.request(raws[i]), 30) == 200

        async def worker(record: bool, stop_at: float, budget: list[int]) -> None:
            nonlocal errors, counter
            conn = RawConnection(port)
            try:
                while time.perf_counter() < stop_at and budget[0] > 0:
                    budget[0] -= 1
                    i = counter % len(bodies)
                    counter += 1
                    t0 = time.perf_counter()
                    try:
                        ok = await send(conn, i)
                    except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                        ok = False
                        conn.close()
                    if record:
                        if ok:
                            latencies.append(time.perf_counter() - t0)
                        else:
                            errors += 1
            finally:
                conn.close()

        await asyncio.gather(*[worker(False, time.perf_counter() + warmup, [10**9]) for _ in range(concurrency)])
        budget = [max_requests]
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(True, t0 + seconds, budget) for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0

    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "issued": counter,  # warm-up included
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def batch_stats(url: str) -> tuple[float, float]:
    import re

    import httpx

    text = httpx.get(url + "/metrics").text
    count = float(re.search(r"^infomax_encode_batch_requests_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^infomax_encode_batch_requests_sum (\S+)$", text, re.M).group(1))
    return count, total


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="serving artifact (default: a random-init reference encoder)")
    p.add_argument("--items", type=int, default=50_000, help="CIFAR-10 train images to index (default 50000)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--modes", default="on,off", help="batching on, off or both")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per cell")
    p.add_argument("--max-requests", type=int, default=20_000, help="most requests per cell")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--serve-args", default="", help="extra `infomax serve` flags, e.g. '--torch-threads 1'")
    p.add_argument(
        "--client",
        default="raw",
        choices=["raw", "httpx"],
        help="raw: prebuilt HTTP/1.1 requests on asyncio streams (default; ~0.4 ms CPU per request); "
        "httpx: httpx.AsyncClient (~3-5 ms CPU per request, taken from the server on a small machine)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the --workers 2 memory measurement")
    p.add_argument(
        "--cache", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infomax" / "http_load")
    )
    p.add_argument("--data-dir", default=None, help="data sets folder (default $INFOMAX_DATA_DIR)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)

    if args.seconds <= 0 or args.max_requests <= 0:
        raise SystemExit("--seconds and --max-requests must be positive")
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    artifact = ensure_artifact(args.model, cache)
    index = ensure_index(artifact, args.items, cache, args.data_dir)
    bodies = query_bodies(args.data_dir)
    log = cache / "serve.log"
    extra = args.serve_args.split()
    load_before = loadavg()

    try:
        import uvloop  # the client's own overhead matters on a small machine

        uvloop.install()
    except ImportError:
        pass

    rows = []
    single: list[tuple[str, int, int]] = []  # (batching mode, RSS, PSS) of the one-process server after its run
    info = None
    for mode in modes:
        srv = Server(artifact, index, [*extra, "--batching" if mode == "on" else "--no-batching"], log).wait_ready()
        try:
            import httpx

            info = httpx.get(srv.url + "/v1/info").json()
            for c in levels:
                b0 = batch_stats(srv.url)
                cpu0, own0 = cpu_seconds(srv.proc.pid), time.process_time()
                row = asyncio.run(run_load(srv.url, bodies, c, args.seconds, args.max_requests, args.warmup, args.client))
                cpu1, own1 = cpu_seconds(srv.proc.pid), time.process_time()
                b1 = batch_stats(srv.url)
                # CPU per request (warm-up included in both counts): a figure that other load on
                # the machine inflates far less than wall-clock throughput
                served = row.pop("issued")
                row["server_cpu_ms"] = 1000 * (cpu1 - cpu0) / max(1, served)
                row["client_cpu_ms"] = 1000 * (own1 - own0) / max(1, served)
                row["mode"] = mode
                row["requests_per_batch"] = (b1[1] - b0[1]) / max(1.0, b1[0] - b0[0])
                rows.append(row)
                print(
                    f"batching {mode:3} c={c:<3} {row['rps']:7.1f} req/s  p50 {row['p50_ms']:6.1f} ms  "
                    f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}  server CPU "
                    f"{row['server_cpu_ms']:.1f} ms/req",
                    file=sys.stderr,
                )
            single.append((mode, *memory_kib(srv.proc.pid)))
        finally:
            srv.stop()

    workers = []
    if not args.no_memory:
        srv = Server(artifact, index, [*extra, "--workers", "2"], log)
        try:
            srv.wait_ready()
            deadline = time.monotonic() + 120
            while len(worker_pids(srv.proc.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(3)  # let both workers finish loading
            for pid in worker_pids(srv.proc.pid):
                try:
                    workers.append(memory_kib(pid))
                except OSError:
                    pass
        finally:
            srv.stop()

    print()
    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; load average {load_before} before, {loadavg()} after")
    if info:
        print(
            f"Model {info['model'][:12]} (z_dim {info['z_dim']}, {'optimised' if info['optimized'] else 'plain'}), "
            f"index {info['index_factory']} of {info['items']} items; k=10; 32x32 PNG uploads; "
            f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up; {args.client} client; "
            f"serve flags: {' '.join(extra) or '(defaults)'}"
        )
    print()
    print(
        "| batching | concurrency | requests | req/s | p50 ms | p99 ms | errors | requests per batch "
        "| server CPU ms/request | client CPU ms/request |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['errors']} | {r['requests_per_batch']:.1f} | {r['server_cpu_ms']:.1f} | "
            f"{r['client_cpu_ms']:.2f} |"
        )
    print()
    print("| process | RSS MiB | PSS MiB |")
    print("|---|---:|---:|")
    for mode, rss, pss in single:
        print(f"| `--workers 1`, after the batching-{mode} run | {rss / 1024:.0f} | {pss / 1024:.0f} |")
    for i, (rss, pss) in enumerate(workers):
        print(f"| `--workers 2`: worker {i + 1} (idle) | {rss / 1024:.0f} | {pss / 1024:.0f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"rows": rows, "single_kib": single, "workers_kib": workers, "machine": cpu_name(), "info": info}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
