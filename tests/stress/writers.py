"""One writer per index folder, as users meet it: a second ``infomax serve`` on a served folder, and
``infomax index build --overwrite`` onto it, must be refused in one line naming the serving process,
and nothing the server acknowledged may be lost; a read-only server starts beside the writer, and
follows a rebuild made once the writer is gone.

Real processes throughout: a writable ``infomax serve`` (with an API key), a second one on the same
folder, a ``--read-only`` one; ``infomax embed`` of a folder of pictures and ``infomax index build``
run in this process, one more process beside the servers.

    python -m tests.stress.writers
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from stress.harness import ServerProcess, build_index, infomax_in_process, make_artifact, unique_png

API_KEY = "writers-test-key-0b7e"


def _run(args: list[str]) -> tuple[int, str, float]:
    """An ``infomax`` command in this process (to the servers another process all the same: another
    writer, or a rebuild): its exit code, what it printed, and its seconds."""
    t0 = time.monotonic()
    r = infomax_in_process(args)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def _add(srv: ServerProcess, tag: str, seed: int) -> int:
    with srv.client() as c:
        r = c.post(
            "/v1/items",
            files=[("file", (f"{tag}.png", unique_png(seed), "image/png"))],
            data={"metadata": [json.dumps({"source": tag})]},
        )
    if r.status_code != 201:
        raise AssertionError(f"add {tag}: {r.status_code} {r.text[:300]}")
    return int(r.json()["ids"][0])


def _items(url: str) -> int:
    return int(httpx.get(url + "/readyz", timeout=10).json()["items"])


def _wait_for_items(url: str, n: int, timeout: float) -> float:
    """Seconds until /readyz reports ``n`` items (a reader's refresh is periodic: this polls for
    the event, it does not sleep for a guessed time)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _items(url) == n:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{url}: /readyz still reports {_items(url)} items after {timeout} s, expected {n}")


def _second_server(artifact: Path, index: Path, log_path: Path, timeout: float = 120.0) -> tuple[int | None, str, float]:
    """Starts a writable server on ``index`` and waits for it to exit (refused) or to answer /readyz
    (accepted: then it is killed, and its exit code is None)."""
    srv = ServerProcess(artifact, index, log_path)
    t0 = time.monotonic()
    srv.spawn()
    try:
        while time.monotonic() - t0 < timeout:
            if srv.proc.poll() is not None:
                return srv.proc.returncode, srv.log(), time.monotonic() - t0
            try:
                if httpx.get(srv.url + "/readyz", timeout=2.0).status_code == 200:
                    return None, srv.log(), time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return None, srv.log(), time.monotonic() - t0
    finally:
        srv.kill9()


def run_writers(tmp: Path, artifact: Path, log=print) -> dict:
    """The scenario; returns its figures and a list of problems (empty when every promise held)."""
    tmp.mkdir(parents=True, exist_ok=True)
    index = build_index(tmp / "index", artifact, n=40)["folder"]
    photos = tmp / "photos"
    photos.mkdir()
    for i in range(12):
        (photos / f"p{i:02d}.png").write_bytes(unique_png(50_000 + i))
    rc, out, _ = _run(["embed", "--model", str(artifact), "--data", str(photos), "--out", str(tmp / "emb"), "--no-progress"])
    if rc != 0:
        raise RuntimeError(f"infomax embed failed ({rc}):\n{out[-2000:]}")
    fig: dict = {"problems": []}
    problems = fig["problems"]

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    writer = ServerProcess(artifact, index, tmp / "writer.log", api_key=API_KEY).start()
    try:
        before = _add(writer, "before", 1)
        # 1. a second writable server on the same folder
        rc, out, secs = _second_server(artifact, index, tmp / "second.log")
        fig["second_writer"] = {"exit_code": rc, "seconds": round(secs, 2), "output": out.strip()[-600:]}
        check(rc not in (0, None), "a second writable server started and served" if rc is None else f"exit {rc}")
        check(f"pid {writer.pid} " in out, f"the refusal does not name the serving process (pid {writer.pid}):\n{out[-600:]}")
        check("Traceback" not in out, f"a traceback instead of one line:\n{out[-1500:]}")
        check(API_KEY not in out, "the API key is in the refusal")
        # 2. a read-only server beside the writer starts, and sees the writer's items
        reader = ServerProcess(artifact, index, tmp / "reader.log", args=["--read-only", "--refresh-s", "0.2"]).start()
        try:
            fig["reader_items_at_start"] = _items(reader.url)
            check(fig["reader_items_at_start"] == 41, f"read-only server sees {fig['reader_items_at_start']} items, expected 41")
            # 3. a rebuild of the served folder
            rc, out, secs = _run(["index", "build", "--embeddings", str(tmp / "emb"), "--out", str(index), "--overwrite"])
            fig["rebuild_while_served"] = {"exit_code": rc, "seconds": round(secs, 2), "output": out.strip()[-600:]}
            check(rc != 0, f"the rebuild of a served folder went through (exit {rc})")
            check(
                f"pid {writer.pid} " in out and "cannot replace it" in out,
                f"the rebuild's refusal does not name the server:\n{out[-600:]}",
            )
            check("Traceback" not in out, f"a traceback instead of one line:\n{out[-1500:]}")
            # 4. the writer goes on: an acknowledged write after the refused rebuild survives a restart
            after = _add(writer, "after", 2)
            fig["reader_follows_writer_s"] = round(_wait_for_items(reader.url, 42, 60), 2)
            writer.kill9()
            writer.start()
            with writer.client() as c:
                for item_id, tag in ((before, "before"), (after, "after")):
                    r = c.get(f"/v1/items/{item_id}")
                    check(
                        r.status_code == 200 and r.json().get("source") == tag,
                        f"acknowledged item {item_id} ({tag}) after a restart: {r.status_code} {r.text[:200]}",
                    )
            fig["items_after_restart"] = _items(writer.url)
            check(fig["items_after_restart"] == 42, f"{fig['items_after_restart']} items after the restart, expected 42")
            # 5. the writer gone, a rebuild goes through, and the reader serves the new folder
            writer.stop()
            rc, out, secs = _run(
                ["index", "build", "--embeddings", str(tmp / "emb"), "--out", str(index), "--overwrite", "--images"]
            )
            fig["rebuild_without_writer"] = {"exit_code": rc, "seconds": round(secs, 2)}
            check(rc == 0, f"rebuild without a writer failed ({rc}):\n{out[-1500:]}")
            if rc == 0:
                fig["reader_follows_rebuild_s"] = round(_wait_for_items(reader.url, 12, 60), 2)
                with reader.client() as c:
                    items = c.get("/v1/items/sample", params={"n": 12}).json()["items"]
                    sources = sorted(Path(str(it["source"])).name for it in items)
                    check(sources == [f"p{i:02d}.png" for i in range(12)], f"reader after the rebuild serves {sources}")
                    r = c.get(f"/v1/items/{items[0]['id']}/image")  # the pictures came with the new folder
                    check(
                        r.status_code == 200 and r.headers["content-type"].startswith("image/"),
                        f"the rebuilt folder's picture: {r.status_code}",
                    )
        finally:
            reader.stop()
    finally:
        writer.stop()
    log(json.dumps(fig, indent=1))
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        artifact = make_artifact(Path(d) / "artifact")
        fig = run_writers(Path(d) / "run", artifact)
    return 1 if fig["problems"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
