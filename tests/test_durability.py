"""Durability that a test can see. ``kill -9`` keeps the page cache, so the kill -9 tests pass with an
fsync missing; here the writes are checked for what makes them durable: each file fsync'd before
the rename that publishes it and its folder fsync'd after, before the call returns (fsync and
rename calls recorded, then passed on to the real ones); SQLite in WAL mode with synchronous=FULL on
the running app's own connections; and the FAISS file itself, read without the library, right
after a remove (a reload's log replay must not be what makes it right)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_index import clustered, normalized
from test_service import REPO, copy_index, image_file, index_template  # noqa: F401 (fixture)

from infomax.atomic import atomic_write_json
from infomax.index import INDEX_FILE, METADATA_FILE, RECORD_FILE, EmbeddingIndex
from service.app import create_app
from service.settings import Settings

TRAILER_BYTES = 32  # index.faiss = FAISS's own bytes + the 32-byte snapshot trailer


# ------------------------------------------------------------------ fsync and rename, recorded


class Recorder:
    """Records ("fsync", path) and ("replace", src, dst) in call order, then calls the real one."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            fd = fd if isinstance(fd, int) else fd.fileno()
            self.events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            real_replace(src, dst, **kw)
            self.events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def fsyncs(self) -> list[str]:
        return [e[1] for e in self.events if e[0] == "fsync"]

    def assert_published_durably(self, dest: Path) -> int:
        """``dest`` was renamed into place from a file fsync'd before the rename, and its folder was
        fsync'd after it. Returns the position of the rename in the events."""
        dest = os.path.realpath(dest)
        renames = [i for i, e in enumerate(self.events) if e[0] == "replace" and e[2] == dest]
        assert renames, f"{dest} was not renamed into place: {self.events}"
        at = renames[-1]
        src = self.events[at][1]
        assert ("fsync", src) in self.events[:at], f"{src} renamed to {dest} without an fsync first: {self.events}"
        assert ("fsync", os.path.dirname(dest)) in self.events[at + 1 :], (
            f"the folder of {dest} was not fsync'd after the rename: {self.events}"
        )
        return at


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    rec = Recorder(monkeypatch)
    atomic_write_json(tmp_path / "a.json", {"a": 1})
    rec.assert_published_durably(tmp_path / "a.json")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_checkpoint_publishes_the_snapshot_and_the_record_durably(tmp_path, monkeypatch, factory):
    x = clustered(300, 16, seed=3)
    idx = EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", tune_queries=50)
    idx.add(x[:4] + 0.5)
    idx.remove([0, 1])
    rec = Recorder(monkeypatch)
    idx._conn.set_trace_callback(lambda sql: rec.events.append(("sql", sql.strip().upper())))
    idx.save()  # checkpoint: everything below happened before it returned
    idx._conn.set_trace_callback(None)
    at = rec.assert_published_durably(tmp_path / "ix" / INDEX_FILE)
    rec.assert_published_durably(tmp_path / "ix" / RECORD_FILE)
    # The log entries the snapshot holds are pruned only once its rename is durable: the folder is
    # fsync'd between the rename and the commit that deletes them.
    after = rec.events[at + 1 :]
    prune = next(i for i, e in enumerate(after) if e[0] == "sql" and e[1].startswith("DELETE FROM OPLOG"))
    commit = next(i for i, e in enumerate(after) if i > prune and e[0] == "sql" and e[1].startswith("COMMIT"))
    assert ("fsync", os.path.realpath(tmp_path / "ix")) in after[:commit], rec.events
    idx.close()


@pytest.mark.parametrize("how", ["build", "save"])
def test_a_new_folder_is_fsynced_whole_before_it_appears(tmp_path, monkeypatch, how):
    """build(path=...) and save(path) of an in-memory index: metadata.sqlite, index.faiss and
    index.json are fsync'd inside the temporary folder, the folder itself too, before it is renamed
    to its name; the parent after."""
    x = clustered(300, 16, seed=4)
    if how == "save":
        idx = EmbeddingIndex.create(16)
        idx.add(x)
    rec = Recorder(monkeypatch)

    def prepare(folder):  # what `index build --images` puts in the folder: a file of its own
        (Path(folder) / "images.sqlite").write_bytes(b"pictures")
        rec.events.append(("prepared", os.path.realpath(folder)))

    if how == "build":
        idx = EmbeddingIndex.build(x, path=tmp_path / "ix", tune_queries=50, prepare=prepare)
    else:
        idx.save(tmp_path / "ix")
    idx.close()
    at = rec.assert_published_durably(tmp_path / "ix")
    tmpdir = rec.events[at][1]
    before = rec.events[:at]
    last_entry = max(i for i, e in enumerate(before) if e[0] == "prepared" or (e[0] == "replace" and e[2].startswith(tmpdir)))
    assert ("fsync", tmpdir) in before[last_entry + 1 :], "the folder's last entry is not fsync'd before it appears"
    for name in (METADATA_FILE, INDEX_FILE, RECORD_FILE):
        path = os.path.join(tmpdir, name)
        fsynced = ("fsync", path) in before or any(
            e[0] == "replace" and e[2] == path and ("fsync", e[1]) in before[:i] for i, e in enumerate(before)
        )
        assert fsynced, f"{name} was not fsync'd before the folder was put in place: {rec.events}"


# ------------------------------------------------------------------ the app's own connections


def _pragma(conn, name: str):
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


def _assert_durable(state) -> None:
    assert state.index._durable is True  # the service opens its index durable
    for conn in (state.index._conn, state.images._conn):  # the connections the writes go through
        assert _pragma(conn, "journal_mode") == "wal"
        assert _pragma(conn, "synchronous") == 2  # FULL: each commit fsyncs the WAL before it returns


def test_the_running_app_writes_through_durable_connections(tiny_artifact, index_template, tmp_path):
    folder = copy_index(index_template, tmp_path / "index")
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=folder))) as client:
        state = client.app.state.service
        _assert_durable(state)
        r = client.post("/v1/items", files={"file": ("a.png", image_file(seed=5), "image/png")})
        assert r.status_code == 201
        _assert_durable(state)  # still so after a write


def test_an_index_the_app_creates_is_durable(tiny_artifact, tmp_path):
    with TestClient(create_app(Settings(artifact=tiny_artifact, index=tmp_path / "new", create_index=True))) as client:
        _assert_durable(client.app.state.service)


# ------------------------------------------------------------------ the FAISS file itself


def ids_in_faiss_file(path: Path) -> set[int]:
    """The live ids stored in an index.faiss, read with FAISS alone from the file's own bytes (the
    trailer cut off): id maps (tombstones, negative, are not live) or IVF inverted lists."""
    raw = np.fromfile(path, dtype=np.uint8)[:-TRAILER_BYTES]
    index = faiss.deserialize_index(raw)
    if isinstance(index, faiss.IndexIDMap):  # IndexIDMap2 is read back as its base class's view
        ids = faiss.vector_to_array(index.id_map)
        return set(ids[ids >= 0].tolist())
    ivf = faiss.extract_index_ivf(index)
    out: set[int] = set()
    for lst in range(ivf.nlist):
        n = ivf.invlists.list_size(lst)
        if n:
            out.update(faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n).tolist())
    return out


REMOVED = list(range(0, 60, 3))


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_remove_then_checkpoint_leaves_the_faiss_file_without_them(tmp_path, factory):
    x = clustered(600, 16, seed=5)
    idx = EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", tune_queries=50)
    assert ids_in_faiss_file(tmp_path / "ix" / INDEX_FILE) == set(range(600))
    assert idx.remove(REMOVED) == len(REMOVED)
    idx.save()
    assert ids_in_faiss_file(tmp_path / "ix" / INDEX_FILE) == set(range(600)) - set(REMOVED)
    idx.close()
    # and reloaded from there, with nothing left in the log to replay
    j = EmbeddingIndex.load(tmp_path / "ix", read_only=True)
    assert j._conn.execute("SELECT COUNT(*) FROM oplog").fetchone()[0] == 0
    assert len(j) == 600 - len(REMOVED) and not set(j.search(x[REMOVED], 5)[1].ravel().tolist()) & set(REMOVED)
    j.close()


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from infomax.index import EmbeddingIndex
    idx = EmbeddingIndex.load(sys.argv[1])
    print(idx.remove(list(range(0, 60, 3))), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_remove_killed_then_reload_and_checkpoint_leaves_the_faiss_file_right(tmp_path, factory):
    x = clustered(400, 16, seed=6)
    EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", tune_queries=50).close()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path / "ix")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == -signal.SIGKILL and p.stdout.strip() == str(len(REMOVED)), p.stderr
    j = EmbeddingIndex.load(tmp_path / "ix")  # replays the logged remove
    j.save()
    j.close()
    assert ids_in_faiss_file(tmp_path / "ix" / INDEX_FILE) == set(range(400)) - set(REMOVED)
    k = EmbeddingIndex.load(tmp_path / "ix", read_only=True)
    q = normalized(x[REMOVED])
    assert not set(k.search(q, 5)[1].ravel().tolist()) & set(REMOVED)
    k.close()
