"""Startup refusal: ``infomax serve`` given a damaged index, a missing or damaged artifact, or an
artifact that does not match the index must exit non-zero within seconds, with a message naming
the file and no traceback, and must never accept a connection meanwhile.

Each case gets its own copy of a good index (and artifact), damaged one way; all cases of a run
start at once (they are independent processes) and a watcher tries to connect to each one's port
every 50 ms until it exits.

    python -m tests.stress.startup
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stress.harness import REPO, build_index, free_port, infomax_command, make_artifact


@dataclass
class Refusal:
    name: str
    artifact: Path
    index: Path
    names: str  # the file (or folder) the message must name
    extra_args: tuple[str, ...] = ()
    env: dict | None = None
    secret: str | None = None  # must not appear in the output


def _flip(path: Path, at: float = 0.5, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    for j in range(i, min(i + n, len(data))):
        data[j] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


def make_cases(workdir: Path, *, quick: bool = False, artifact: Path | None = None) -> list[Refusal]:
    """The damaged setups. ``quick``: the few that cover each kind of failure (for CI)."""
    workdir = Path(workdir)
    art = Path(artifact) if artifact is not None else make_artifact(workdir / "artifact")
    good = workdir / "good-index"
    if not good.exists():
        build_index(good, art, n=20)
    other_weights = make_artifact(workdir / "artifact-other-weights", seed=1)
    other_dim = make_artifact(workdir / "artifact-dim16", z_dim=16)

    def index_copy(name: str) -> Path:
        dest = workdir / "cases" / name / "index"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(good, dest)
        return dest

    def artifact_copy(name: str) -> Path:
        dest = workdir / "cases" / name / "artifact"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(art, dest)
        return dest

    cases: list[Refusal] = []

    def case(
        name: str,
        *,
        damage_index=None,
        damage_artifact=None,
        artifact: Path | None = None,
        names: str,
        quick_case: bool = False,
        **kw,
    ) -> None:
        if quick and not quick_case:
            return
        idx = index_copy(name)
        a = artifact or art
        if damage_artifact is not None:
            a = artifact_copy(name)
            damage_artifact(a)
        if damage_index is not None:
            damage_index(idx)
        cases.append(Refusal(name, a, idx, names(idx, a) if callable(names) else names, **kw))

    case(
        "index.faiss truncated",
        damage_index=lambda i: _truncate(i / "index.faiss", 0.5),
        names=lambda i, a: str(i / "index.faiss"),
        quick_case=True,
    )
    case(
        "index.faiss bytes flipped",
        damage_index=lambda i: _flip(i / "index.faiss", 0.6),
        names=lambda i, a: str(i / "index.faiss"),
    )
    case("index.faiss empty", damage_index=lambda i: _truncate(i / "index.faiss", 0), names=lambda i, a: str(i / "index.faiss"))
    case("index.faiss missing", damage_index=lambda i: (i / "index.faiss").unlink(), names=lambda i, a: str(i / "index.faiss"))
    case(
        "index.json truncated", damage_index=lambda i: _truncate(i / "index.json", 0.5), names=lambda i, a: str(i / "index.json")
    )
    case(
        "metadata.sqlite overwritten",
        damage_index=lambda i: _flip(i / "metadata.sqlite", 0.0, 64),
        names=lambda i, a: str(i / "metadata.sqlite"),
    )
    case(
        "metadata.sqlite truncated",
        damage_index=lambda i: _truncate(i / "metadata.sqlite", 1000),
        names=lambda i, a: str(i / "metadata.sqlite"),
    )
    case(
        "images.sqlite overwritten",
        damage_index=lambda i: _flip(i / "images.sqlite", 0.0, 64),
        names=lambda i, a: str(i / "images.sqlite"),
        quick_case=True,
    )
    case(
        "artifact folder missing",
        artifact=workdir / "no-such-artifact",
        names=lambda i, a: str(workdir / "no-such-artifact"),
        quick_case=True,
    )
    case(
        "encoder.safetensors bytes flipped",
        damage_artifact=lambda a: _flip(a / "encoder.safetensors", 0.7),
        names=lambda i, a: str(a / "encoder.safetensors"),
        quick_case=True,
    )
    case(
        "encoder.json not JSON",
        damage_artifact=lambda a: _truncate(a / "encoder.json", 0.5),
        names=lambda i, a: str(a / "encoder.json"),
    )
    case("artifact of other weights", artifact=other_weights, names=lambda i, a: str(i), quick_case=True)
    case("artifact of other dimension", artifact=other_dim, names=lambda i, a: str(i))
    return cases


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.05)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_one(c: Refusal, *, timeout: float = 120.0) -> dict:
    """Starts one case and watches it: exit status, seconds to exit, whether its port ever accepted
    a connection, whether the output names the file, the message line."""
    port = free_port()
    cmd = [
        *infomax_command(),
        "serve",
        "--model",
        str(c.artifact),
        "--index",
        str(c.index),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *c.extra_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(c.env or {})}
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        served = timed_out = False
        while time.monotonic() - t0 < timeout:
            served = served or _accepts(port)
            try:
                p.wait(0.05)  # returns the moment it exits; else the next look at the port
                break
            except subprocess.TimeoutExpired:
                continue
        seconds = time.monotonic() - t0
        if p.poll() is None:
            p.kill()
            p.wait(10)
            seconds, timed_out = float("nan"), True
        out.seek(0)
        text = out.read().decode(errors="replace")
    # uvicorn says so once it listens: a port that accepted between two looks is still seen here
    served = served or "Uvicorn running on" in text or "Application startup complete" in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    message = next(
        (ln for ln in lines if "error" in ln.lower() and not ln.lstrip().startswith("File ")), lines[-1] if lines else ""
    )
    return {
        "case": c.name,
        "exit_code": p.returncode,
        "seconds": round(seconds, 1),
        "served": served,
        "timed_out": timed_out,
        "names_file": c.names in text,
        "secret_leaked": bool(c.secret) and c.secret in text,
        "traceback": "Traceback" in text,
        "message": message[:400],
        "output_tail": text[-1500:],
    }


def run_refusals(cases: list[Refusal], *, parallel: int = 2, timeout: float = 120.0) -> list[dict]:
    """Every case, ``parallel`` at a time (each is a python + torch start: more than the cores
    only slows them all down)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda c: run_one(c, timeout=timeout), cases))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", type=Path)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="infomax-startup-") as tmp:
        res = run_refusals(make_cases(a.workdir or Path(tmp), quick=a.quick))
    for r in res:
        r.pop("output_tail")
        print(json.dumps(r))
    bad = [r for r in res if r["exit_code"] in (0, None) or r["served"] or not r["names_file"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
