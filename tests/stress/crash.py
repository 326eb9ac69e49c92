"""Crash safety: clients add (and delete) items concurrently while the server is killed with
SIGKILL at random moments; after every restart, every acknowledged write must be there, whole.

What is checked after each kill:

* offline, before the restart (the server is dead): the index folder opens read-only
  (``EmbeddingIndex.load(read_only=True)``, which replays the log like a restart would), the FAISS
  index and the ``items`` table hold exactly the same ids, and every item has its stored image;
* after the restart, over HTTP: every acknowledged item (201) is found by id with its metadata,
  its image comes back byte for byte, and searching with its own image gives itself as top-1 with a
  score of ~1; every acknowledged delete stays deleted;
* every unacknowledged request (connection cut by the kill) is all or nothing: each of its items
  is either fully present (metadata + searchable + image) or absent (404 for item and image, not
  in the search results), and a request of several images never lands partially;
* /readyz counts exactly what the client knows to be present.

    python -m tests.stress.crash --kills 20
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from stress.harness import ServerProcess, build_index, make_artifact, unique_png

SCORE_SELF = 0.9999  # a picture searched with itself: cosine 1 up to float error (others stay < 0.9997)
EXPLICIT_ID_BASE = 10_000_000


@dataclass
class Write:
    """One POST /v1/items (1-3 images) or one DELETE."""

    kind: str  # "add" | "delete"
    tags: list[str]  # metadata source of each image
    pngs: list[bytes]
    ids: list[int] | None  # ids chosen by the client (None: the server allocates)
    state: str = "pending"  # "acked" | "unacked" | "refused"
    result_ids: list[int] | None = None
    detail: str = ""


@dataclass
class Ledger:
    """What the clients know: every write and its outcome."""

    writes: list[Write] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def next(self) -> int:
        with self.lock:
            return next(self._seq)

    def record(self, w: Write) -> None:
        with self.lock:
            self.writes.append(w)


class Problems(list):
    def add(self, msg: str) -> None:
        if len(self) < 200:
            self.append(msg)


def _client_loop(
    srv: ServerProcess,
    ledger: Ledger,
    stop: threading.Event,
    client_no: int,
    cycle: int,
    rng: random.Random,
    present: dict[int, Write],
    present_lock: threading.Lock,
) -> None:
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=30) as c:
        while not stop.is_set():
            n = ledger.next()
            # one client in four sometimes deletes an item acknowledged earlier
            if client_no == 3 and rng.random() < 0.3:
                with present_lock:
                    candidates = [i for i, w in present.items() if w.kind == "add"]
                    victim = rng.choice(candidates) if candidates else None
                    if victim is not None:
                        del present[victim]  # nobody else touches it now
                if victim is not None:
                    w = Write("delete", [], [], [victim])
                    try:
                        r = c.delete(f"/v1/items/{victim}")
                    except httpx.TransportError as e:
                        w.state, w.detail = "unacked", type(e).__name__
                        ledger.record(w)
                        return
                    w.state = "acked" if r.status_code == 200 else "refused"
                    w.detail = f"{r.status_code}"
                    ledger.record(w)
                    if w.state == "refused":
                        with present_lock:
                            present[victim] = w  # unchanged; a refused delete is a problem, reported later
                    continue
            k = rng.choice([1, 1, 1, 2, 3])  # some requests carry several images: all or nothing
            tags = [f"crash:{cycle}:{client_no}:{n}:{j}" for j in range(k)]
            pngs = [unique_png(1_000_000 * (cycle + 1) + 1000 * n + j) for j in range(k)]
            explicit = client_no % 2 == 0
            ids = [EXPLICIT_ID_BASE + 10 * n + j for j in range(k)] if explicit else None
            w = Write("add", tags, pngs, ids)
            files = [("file", (f"{t}.png", p, "image/png")) for t, p in zip(tags, pngs)]
            data: dict = {"metadata": [json.dumps({"source": t, "label": client_no}) for t in tags]}
            if ids is not None:
                data["id"] = [str(i) for i in ids]
            try:
                r = c.post("/v1/items", files=files, data=data)
            except httpx.TransportError as e:
                w.state, w.detail = "unacked", type(e).__name__
                ledger.record(w)
                return
            if r.status_code == 201:
                w.state, w.result_ids = "acked", r.json()["ids"]
                with present_lock:
                    for i in w.result_ids:
                        present[i] = w
            else:
                w.state, w.detail = "refused", f"{r.status_code} {r.text[:200]}"
            ledger.record(w)


def offline_check(folder: Path, problems: Problems) -> dict:
    """With the server dead: the folder opens read-only and index, metadata store and image store
    agree. Returns {"items": n, "orphan_images": m}."""
    from infomax.imagestore import ImageStore
    from infomax.index import METADATA_FILE, EmbeddingIndex

    index = EmbeddingIndex.load(folder, read_only=True)
    try:
        faiss_ids = set(index.ids().tolist())
        n = len(index)
    finally:
        index.close()
    with contextlib.closing(sqlite3.connect(f"file:{folder / METADATA_FILE}?mode=ro", uri=True)) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM items")}
    if faiss_ids != stored or n != len(stored):
        problems.add(
            f"index and metadata store disagree: {len(faiss_ids)} ids in FAISS, {len(stored)} in items "
            f"(only in FAISS: {sorted(faiss_ids - stored)[:5]}, only in items: {sorted(stored - faiss_ids)[:5]})"
        )
    images = ImageStore(folder, read_only=True)
    try:
        with images._lock:  # noqa: SLF001 - a read-only look at the whole table
            image_ids = {r[0] for r in images._conn.execute("SELECT id FROM images")}  # noqa: SLF001
    finally:
        images.close()
    missing = stored - image_ids
    if missing:
        problems.add(f"{len(missing)} items without their stored image: {sorted(missing)[:5]}")
    return {"offline_items": len(stored), "orphan_images": len(image_ids - stored)}


def _check_present(c: httpx.Client, item_id: int, tag: str, png: bytes) -> str | None:
    """None if the item is whole (metadata, image, searchable as itself), else what is wrong."""
    r = c.get(f"/v1/items/{item_id}")
    if r.status_code != 200:
        return f"GET /v1/items/{item_id} -> {r.status_code}"
    if r.json().get("source") != tag:
        return f"item {item_id} has source {r.json().get('source')!r}, expected {tag!r}"
    r = c.get(f"/v1/items/{item_id}/image")
    if r.status_code != 200 or r.content != png:
        return f"image of {item_id}: {r.status_code}, {len(r.content)} bytes (expected {len(png)})"
    r = c.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "1"})
    if r.status_code != 200 or not r.json()["neighbors"]:
        return f"search with the image of {item_id}: {r.status_code} {r.text[:200]}"
    top = r.json()["neighbors"][0]
    if top["id"] != item_id or top["score"] < SCORE_SELF:
        return f"search with the image of {item_id}: top-1 is {top['id']} (score {top['score']:.6f})"
    return None


def _find_by_image(c: httpx.Client, tag: str, png: bytes) -> int | None:
    """The id of the item holding exactly this picture and tag, if any (auto-id writes)."""
    r = c.post("/v1/search", files={"file": ("q.png", png, "image/png")}, data={"k": "3"})
    r.raise_for_status()
    for nb in r.json()["neighbors"]:
        if nb["score"] >= SCORE_SELF and nb.get("source") == tag:
            return nb["id"]
    return None


def _check_absent(c: httpx.Client, item_id: int) -> str | None:
    r = c.get(f"/v1/items/{item_id}")
    if r.status_code != 404:
        return f"GET /v1/items/{item_id} -> {r.status_code}, expected 404"
    r = c.get(f"/v1/items/{item_id}/image")
    if r.status_code != 404:
        return f"GET /v1/items/{item_id}/image -> {r.status_code}, expected 404"
    return None


def verify(srv: ServerProcess, ledger: Ledger, base_items: int, problems: Problems, workers: int = 8) -> dict:
    """After a restart: first settles what became of each unacknowledged write (all or nothing:
    its state becomes "applied" or "not_applied"), then checks that every item the clients know
    to be present is whole, every deleted one gone, and that /readyz counts exactly those."""
    half = 0
    unacked_present = unacked_absent = 0
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
        for w in (w for w in ledger.writes if w.state == "unacked"):
            if w.kind == "delete":
                (i,) = w.ids
                w.state = "applied" if c.get(f"/v1/items/{i}").status_code == 404 else "not_applied"
                continue
            found: list[int | None] = []
            for j, (tag, png) in enumerate(zip(w.tags, w.pngs)):
                if w.ids is not None:
                    found.append(w.ids[j] if c.get(f"/v1/items/{w.ids[j]}").status_code == 200 else None)
                else:
                    found.append(_find_by_image(c, tag, png))
            if all(f is None for f in found):
                unacked_absent += 1
                w.state = "not_applied"
                for i in w.ids or []:
                    err = _check_absent(c, i)
                    if err:
                        half += 1
                        problems.add(f"unacknowledged add half-present: {err}")
            elif all(f is not None for f in found):
                unacked_present += 1
                w.state, w.result_ids = "applied", [int(f) for f in found]
            else:
                half += 1
                w.state = "partial"
                problems.add(f"request of {len(w.tags)} images landed partially: found {found}")

    present: dict[int, tuple[str, bytes]] = {}
    deleted: set[int] = set()
    for w in ledger.writes:
        if w.kind == "add" and w.state in ("acked", "applied"):
            for i, t, p in zip(w.result_ids, w.tags, w.pngs):
                present[i] = (t, p)
        elif w.kind == "delete" and w.state in ("acked", "applied"):
            deleted.add(w.ids[0])
    for i in deleted:
        present.pop(i, None)
    acked = {i for w in ledger.writes if w.kind == "add" and w.state == "acked" for i in w.result_ids}

    def check_item(args):
        item_id, (tag, png) = args
        with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
            return item_id, _check_present(c, item_id, tag, png)

    lost = 0
    with ThreadPoolExecutor(workers) as pool:
        for item_id, err in pool.map(check_item, present.items()):
            if err:
                if item_id in acked:
                    lost += 1
                    problems.add(f"acknowledged item lost or damaged: {err}")
                else:
                    half += 1
                    problems.add(f"unacknowledged add present but not whole: {err}")
    undone = 0
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
        for i in sorted(deleted):
            err = _check_absent(c, i)
            if err:
                undone += 1
                problems.add(f"delete undone or half-applied: {err}")
        items = c.get("/readyz").json()["items"]
    expected = base_items + len(present)
    if items != expected:
        problems.add(f"/readyz counts {items} items, the clients know of {expected}")
    return {
        "present_checked": len(present),
        "lost": lost,
        "deletes_undone": undone,
        "unacked_present": unacked_present,
        "unacked_absent": unacked_absent,
        "half_present": half,
        "items": items,
        "expected_items": expected,
    }


def run_crashes(
    workdir: Path,
    *,
    kills: int,
    clients: int = 4,
    seed: int = 0,
    min_delay: float = 0.3,
    max_delay: float = 2.0,
    artifact: Path | None = None,
    base_items: int = 50,
    server: ServerProcess | None = None,
    log=print,
) -> dict:
    """The whole experiment: ``kills`` x (concurrent writes, SIGKILL at a random moment, offline
    check of the folder, restart, verification), then a clean stop and a last offline check.

    Without ``server``: builds an index of ``base_items`` items in ``workdir`` and serves it.
    With ``server`` (a running, writable :class:`ServerProcess` with its API key): uses that one,
    its current items as the base, and leaves it running afterwards (restarted after the last kill)."""
    workdir = Path(workdir)
    rng = random.Random(seed)
    ledger = Ledger()
    problems = Problems()
    cycles = []
    t_start = time.monotonic()
    if server is None:
        artifact = artifact or make_artifact(workdir / "artifact")
        build_index(workdir / "index", artifact, n=base_items)
        srv = ServerProcess(
            artifact, workdir / "index", workdir / "server.log", args=["--no-access-log"], api_key="crash-test-key"
        )
        srv.start()
    else:
        srv = server
        base_items = httpx.get(srv.url + "/readyz", timeout=30).json()["items"]
    folder = srv.index
    try:
        for cycle in range(kills):
            present: dict[int, Write] = {}
            for w in ledger.writes:
                if w.kind == "add" and w.state in ("acked", "applied") and w.result_ids:
                    for i in w.result_ids:
                        present[i] = w
            for w in ledger.writes:
                if w.kind == "delete" and w.state in ("acked", "applied"):
                    present.pop(w.ids[0], None)
            lock = threading.Lock()
            stop = threading.Event()
            before = len(ledger.writes)
            threads = [
                threading.Thread(
                    target=_client_loop,
                    daemon=True,
                    args=(srv, ledger, stop, k, cycle, random.Random(rng.random()), present, lock),
                )
                for k in range(clients)
            ]
            for t in threads:
                t.start()
            delay = rng.uniform(min_delay, max_delay)
            time.sleep(delay)
            srv.kill9()
            stop.set()
            for t in threads:
                t.join(60)
            new = ledger.writes[before:]
            refused = [w for w in new if w.state == "refused"]
            for w in refused:
                problems.add(f"write refused during the run: {w.kind} {w.detail}")
            off = offline_check(folder, problems)
            srv.start()
            counts = verify(srv, ledger, base_items, problems)
            cycle_figures = {
                "cycle": cycle + 1,
                "kill_after_s": round(delay, 2),
                "writes": len(new),
                "acked": sum(w.state == "acked" for w in new),
                "unacked": sum(w.state != "acked" for w in new),
                "restart_s": round(srv.ready_s, 1),
                **off,
                **counts,
            }
            cycles.append(cycle_figures)
            log(f"kill {cycle + 1}/{kills}: {json.dumps(cycle_figures)}")
        if server is None:
            srv.stop()
            final = offline_check(folder, problems)
        else:
            final = {
                "offline_items": httpx.get(srv.url + "/readyz", timeout=30).json()["items"],
                "orphan_images": cycles[-1]["orphan_images"] if cycles else 0,
            }
    finally:
        if server is None and srv.alive():
            srv.kill9()
    acked_adds = [w for w in ledger.writes if w.kind == "add" and w.state == "acked"]
    return {
        "kills": kills,
        "clients": clients,
        "writes": len(ledger.writes),
        "acknowledged_items": sum(len(w.tags) for w in acked_adds),
        "acknowledged_deletes": sum(1 for w in ledger.writes if w.kind == "delete" and w.state == "acked"),
        "unacknowledged_writes": sum(1 for w in ledger.writes if w.state in ("unacked", "applied", "not_applied", "partial")),
        "unacknowledged_found_applied": sum(1 for w in ledger.writes if w.state == "applied"),
        "items_lost": sum(c["lost"] for c in cycles),
        "deletes_undone": sum(c["deletes_undone"] for c in cycles),
        "half_present": sum(c["half_present"] for c in cycles),
        "final_items": final["offline_items"],
        "orphan_images": final["orphan_images"],
        "problems": list(problems),
        "seconds": round(time.monotonic() - t_start, 1),
        "cycles": cycles,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="infomax-crash-") as tmp:
        fig = run_crashes(a.workdir or Path(tmp), kills=a.kills, clients=a.clients, seed=a.seed)
    print(json.dumps({k: v for k, v in fig.items() if k != "cycles"}, indent=1))
    return 0 if not fig["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
