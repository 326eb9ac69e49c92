"""Tests for infomax.index (EmbeddingIndex) and infomax.atomic, on real FAISS
indexes written to tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from infomax.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, temp_name_for
from infomax.index import (
    INDEX_FILE,
    METADATA_FILE,
    RECORD_FILE,
    EmbeddingIndex,
    IndexLoadError,
    IndexLockedError,
    IndexMismatchError,
    choose_factory,
    estimate_memory,
    parse_memory,
)

REPO = Path(__file__).resolve().parents[1]
GB = 1000**3
MB = 1000**2


@pytest.fixture(autouse=True)
def _one_omp_thread():
    # The CI machine is small and shared: OpenMP teams of 2 on a busy box make
    # FAISS calls orders of magnitude slower. omp_set_num_threads is per thread.
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(prev)


def clustered(n: int, dim: int, *, centers: int = 50, spread: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim) * 4
    return x.astype(np.float32)


def normalized(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(db: np.ndarray, db_ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = normalized(q) @ normalized(db).T
    top = np.argsort(-s, axis=1)[:, :k]
    return db_ids[top]


FACTORIES = ["Flat", "HNSW32", "IVF16,Flat"]


# --------------------------------------------------------------------------- parse_memory / chooser


@pytest.mark.parametrize(
    "value, expected",
    [
        ("4GB", 4 * GB),
        ("512MB", 512 * MB),
        (1024, 1024),
        ("1024", 1024),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("10kb", 10_000),
        ("2TB", 2 * 1000**4),
        ("64MiB", 64 * 2**20),
        (np.int64(7), 7),
    ],
)
def test_parse_memory(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("bad", ["", "lots", "4 GBs", "-1GB", "0", 0, -5, "1e3GB", None, 3.5, True])
def test_parse_memory_rejects_and_quotes(bad):
    with pytest.raises(ValueError) as e:
        parse_memory(bad)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize(
    "n, dim, budget, expected",
    [
        (0, 256, 4 * GB, "Flat"),
        (10_000, 256, 4 * GB, "Flat"),
        (49_999, 256, 4 * GB, "Flat"),
        (50_000, 256, 4 * GB, "HNSW32"),  # rule 2
        (999_999, 256, 4 * GB, "HNSW32"),
        (1_000_000, 256, 4 * GB, "IVF4096,Flat"),  # rule 3: nlist = 2**round(log2(4*sqrt(n)))
        (100_000, 256, 120 * MB, "IVF1024,Flat"),  # HNSW32 (~131 MB) over budget, flat codes fit
        (20_000, 64, 4 * GB, "Flat"),
        (10_000_000, 256, 4 * GB, "IVF16384_HNSW32,PQ64x8"),  # rule 4, HNSW coarse quantizer
        (100_000_000, 256, 4 * GB, "IVF32768_HNSW32,PQ16x8"),  # PQ64/PQ32 do not fit
        (30_000, 256, 2 * MB, "IVF512,PQ32x8"),  # nlist capped at n/39; PQ64 over budget
        (2_000_000, 100, 4 * GB, "IVF4096,Flat"),
        (5_000_000, 100, 1 * GB, "IVF8192,PQ25x8"),  # largest divisor of 100 <= 25
    ],
)
def test_choose_factory_rules(n, dim, budget, expected):
    assert choose_factory(n, dim, budget) == expected


def test_choose_factory_picks_within_budget_and_raises_when_nothing_fits():
    for n in (1_000, 60_000, 300_000, 3_000_000, 30_000_000):
        for budget in (64 * MB, 512 * MB, 4 * GB, 64 * GB):
            try:
                fac = choose_factory(n, 256, budget)
            except ValueError:
                continue
            assert estimate_memory(fac, n, 256) <= budget, (n, budget, fac)
    with pytest.raises(ValueError, match="no index fits"):
        choose_factory(5_000, 64, 100)  # too small to quantize, flat too big
    with pytest.raises(ValueError, match="no index fits"):
        choose_factory(10**9, 256, 10 * MB)
    with pytest.raises(ValueError):
        choose_factory(10, 0, GB)


def test_choose_factory_factories_are_valid_for_faiss():
    for fac in ("Flat", "HNSW32", "IVF4096,Flat", "IVF16384_HNSW32,PQ64x8", "IVF8192,PQ25x8"):
        dim = 100 if "25" in fac else 256
        faiss.index_factory(dim, fac, faiss.METRIC_INNER_PRODUCT)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_identical_results(tmp_path, factory, mmap):
    x = clustered(3000, 32, seed=1)
    q = clustered(50, 32, seed=2)
    art = {"id": "a" * 64, "path": "artifacts/encoder"}
    idx = EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", artifact=art, tune_queries=200)
    D0, I0 = idx.search(q, 10)
    params = idx.search_params
    idx.close()
    assert sorted(os.listdir(tmp_path / "ix"))[:3] == [INDEX_FILE, RECORD_FILE, METADATA_FILE] or {
        INDEX_FILE,
        RECORD_FILE,
        METADATA_FILE,
    } <= set(os.listdir(tmp_path / "ix"))
    rec = json.loads((tmp_path / "ix" / RECORD_FILE).read_text())
    for key in (
        "format_version",
        "factory",
        "metric",
        "normalized",
        "dim",
        "count",
        "search_params",
        "recall_at_10",
        "latency_ms_per_query",
        "created_at",
        "infomax_version",
        "artifact",
    ):
        assert key in rec, key
    assert rec["factory"] == factory and rec["metric"] == "inner_product" and rec["normalized"] is True
    assert rec["dim"] == 32 and rec["count"] == 3000 and rec["artifact"] == art
    # exact search is exact; the approximate ones were tuned to the default target (0.95) and say so
    if factory == "Flat":
        assert rec["recall_at_10"] == 1.0
    else:
        assert rec["recall_at_10"] >= 0.95 and rec["recall_target_met"] is True
    assert rec["latency_ms_per_query"] > 0
    # index.faiss is a plain FAISS file (the trailer is ignored by FAISS)
    assert faiss.read_index(str(tmp_path / "ix" / INDEX_FILE)).ntotal == 3000

    j = EmbeddingIndex.load(tmp_path / "ix", mmap=mmap, expected_dim=32, expected_artifact_id="a" * 64)
    assert len(j) == 3000 and j.factory == factory and j.dim == 32 and j.search_params == params
    D1, I1 = j.search(q, 10)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_allclose(D0, D1, rtol=0, atol=1e-6)

    # mutate the loaded (possibly memory-mapped) index, checkpoint, reload: still identical
    new_ids = j.add(q[:5], metadata=[{"source": f"q{i}.png"} for i in range(5)])
    assert new_ids.tolist() == list(range(3000, 3005))
    assert j.remove([0, 1, 2]) == 3
    D2, I2 = j.search(q, 10)
    j.save()
    j.close()
    k = EmbeddingIndex.load(tmp_path / "ix", mmap=mmap)
    D3, I3 = k.search(q, 10)
    np.testing.assert_array_equal(I2, I3)
    np.testing.assert_allclose(D2, D3, rtol=0, atol=1e-6)
    assert len(k) == 3002 and k.get(3001)["source"] == "q1.png" and k.get(0) is None
    k.close()


def test_in_memory_index_save_binds_to_folder(tmp_path):
    idx = EmbeddingIndex.create(16)
    assert idx.factory == "Flat" and idx.path is None and len(idx) == 0
    x = clustered(100, 16)
    idx.add(x, metadata=[{"label": i % 2} for i in range(100)])
    assert idx.save(tmp_path / "a") == tmp_path / "a"
    assert idx.path == tmp_path / "a"
    idx.add(x[:3] + 1)  # logged durably from now on
    # a reader (as a restart after a crash would) sees the logged add without a checkpoint
    other = EmbeddingIndex.load(tmp_path / "a", read_only=True)
    assert len(other) == 103 and other.get(1)["label"] == 1
    other.close()
    idx.close()
    with pytest.raises(FileExistsError):
        EmbeddingIndex.create(16, path=tmp_path / "a")
    EmbeddingIndex.create(16, path=tmp_path / "a", overwrite=True).close()
    assert len(EmbeddingIndex.load(tmp_path / "a")) == 0


def test_export_copy_does_not_rebind(tmp_path):
    x = clustered(500, 16)
    idx = EmbeddingIndex.build(x, path=tmp_path / "a")
    idx.add(x[:2] * 3)
    idx.save(tmp_path / "b")
    assert idx.path == tmp_path / "a"
    b = EmbeddingIndex.load(tmp_path / "b")
    assert len(b) == 502
    np.testing.assert_array_equal(b.search(x[:5], 5)[1], idx.search(x[:5], 5)[1])
    b.close()
    idx.close()


# --------------------------------------------------------------------------- ids, add/remove


@pytest.mark.parametrize("factory", FACTORIES)
def test_add_remove_keeps_ids_stable(tmp_path, factory):
    x = clustered(1500, 24, seed=3)
    ids = 10**12 + np.arange(1500, dtype=np.int64) * 7  # sparse, large
    idx = EmbeddingIndex.build(x, ids=ids, factory=factory, path=tmp_path / "ix", tune_queries=150)
    # every stored item finds itself first, under its own id
    D, I = idx.search(x[:200], 10)
    assert (I[:, 0] == ids[:200]).all()
    assert (I >= 0).all()

    removed = ids[::3]
    assert idx.remove(np.concatenate([removed, [5, 10**15]])) == len(removed)  # unknown ids ignored
    assert idx.remove(removed) == 0
    assert len(idx) == 1000
    alive = np.setdiff1d(ids, removed)
    D, I = idx.search(x, 10)
    assert (I >= 0).all(), "no -1 while at least k items are present"
    assert not np.isin(I, removed).any()
    assert np.isin(I, alive).all()
    keep_pos = np.flatnonzero(np.isin(ids, alive))
    assert (I[keep_pos, 0] == ids[keep_pos]).mean() > 0.99
    # re-adding a removed id with a different vector works (HNSW: over a tombstone)
    fresh = clustered(1, 24, seed=99)
    idx.add(fresh, ids=[int(removed[0])])
    D, I = idx.search(fresh, 1)
    assert I[0, 0] == removed[0]
    # allocation continues after the largest id ever used
    nxt = idx.add(x[:2])
    assert nxt.tolist() == [int(ids.max()) + 1, int(ids.max()) + 2]
    idx.close()
    j = EmbeddingIndex.load(tmp_path / "ix")
    assert len(j) == 1003 and int(removed[0]) in j and int(removed[1]) not in j
    D, I = j.search(fresh, 1)
    assert I[0, 0] == removed[0]
    j.close()


def test_hnsw_tombstones_and_compact(tmp_path):
    x = clustered(800, 16, seed=4)
    idx = EmbeddingIndex.build(x, factory="HNSW32", path=tmp_path / "h", tune_queries=100)
    idx.remove(np.arange(0, 800, 2))
    assert idx.tombstones == 400 and len(idx) == 400
    before = idx.search(x[1::2][:50], 5)[1]
    assert not (before % 2 == 0).any()
    idx.save()
    idx.close()
    j = EmbeddingIndex.load(tmp_path / "h")
    assert j.tombstones == 400 and len(j) == 400
    assert j.compact() == 400
    assert j.tombstones == 0 and len(j) == 400 and j._index.ntotal == 400
    after = j.search(x[1::2][:50], 5)[1]
    assert (after[:, 0] == np.arange(1, 100, 2)).all()
    j.save()
    j.close()
    k = EmbeddingIndex.load(tmp_path / "h")
    assert k.tombstones == 0 and len(k) == 400
    k.close()
    idx.close()


def test_duplicate_and_negative_ids_rejected_and_nothing_added():
    idx = EmbeddingIndex.create(8)
    x = clustered(10, 8)
    idx.add(x[:5], ids=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="duplicate ids in the batch: \\[7\\]"):
        idx.add(x[:3], ids=[6, 7, 7])
    with pytest.raises(ValueError, match="already present.*\\[3\\]"):
        idx.add(x[:2], ids=[3, 100])
    with pytest.raises(ValueError, match="non-negative"):
        idx.add(x[:1], ids=[-1])
    with pytest.raises(ValueError, match="integers"):
        idx.add(x[:1], ids=[1.5])
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        idx.add(x[:3], ids=[10, 11])
    assert len(idx) == 5 and 100 not in idx and 6 not in idx
    assert idx.add(x[:2]).tolist() == [6, 7]


def test_exact_search_recall_is_one_on_self_queries():
    x = clustered(2000, 48, centers=200, seed=5)
    idx = EmbeddingIndex.build(x, tune_queries=200)
    assert idx.factory == "Flat" and idx.info["recall_at_10"] == 1.0
    D, I = idx.search(x, 10)
    assert (I[:, 0] == np.arange(2000)).all()
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)
    assert (np.diff(D, axis=1) <= 1e-6).all()
    truth = exact_topk(x, np.arange(2000), x[:100], 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I[:100], truth)]) > 0.999


def test_search_pads_with_minus_one_and_minus_inf():
    idx = EmbeddingIndex.create(4)
    D, I = idx.search(np.ones((2, 4)), 3)
    assert (I == -1).all() and np.isneginf(D).all()
    idx.add(np.eye(4)[:2], ids=[10, 20])
    D, I = idx.search(np.array([1.0, 0.1, 0, 0]), 4)
    assert D.shape == (1, 4) and D.dtype == np.float32 and I.dtype == np.int64
    assert I[0].tolist() == [10, 20, -1, -1]
    assert np.isfinite(D[0, :2]).all() and np.isneginf(D[0, 2:]).all()
    assert D[0, 0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_ivf_never_returns_short_rows_when_enough_items():
    # tiny lists + nprobe=1 would leave rows short: the index widens the search
    x = clustered(2000, 16, centers=64, seed=6)
    idx = EmbeddingIndex.build(x, factory="IVF32,Flat", tune_queries=100)
    idx.search_params = {"nprobe": 1}
    D, I = idx.search(x[:300], 100)
    assert (I >= 0).all() and np.isfinite(D).all()
    with pytest.raises(ValueError, match="does not apply"):
        idx.search_params = {"efSearch": 10}


def test_metadata_round_trip_and_lookups(tmp_path):
    x = clustered(50, 8)
    md = [{"source": f"img/{i}.png", "label": i % 5, "w": 32, "tags": ["a", i]} for i in range(50)]
    md[3] = {}
    md[4] = {"source": Path("p/x.jpg"), "meta": {"k": 1}, "z": 2}
    idx = EmbeddingIndex.build(x, metadata=md, path=tmp_path / "m")
    assert idx.get(0) == {"id": 0, "source": "img/0.png", "label": 0, "meta": {"w": 32, "tags": ["a", 0]}}
    assert idx.get(3) == {"id": 3, "source": None, "label": None, "meta": {}}
    assert idx.get(4) == {"id": 4, "source": "p/x.jpg", "label": None, "meta": {"k": 1, "z": 2}}
    assert idx.get(50) is None and idx.get(-1) is None
    many = idx.get_many([2, -1, 99, 2])
    assert many[0]["source"] == "img/2.png" and many[1] is None and many[2] is None and many[3] == many[0]
    v = idx.vector(7)
    np.testing.assert_allclose(v, normalized(x[7:8])[0], atol=1e-6)
    assert idx.vector(1234) is None
    assert 7 in idx and 1234 not in idx and "7" not in idx
    s = idx.sample_ids(10, seed=1)
    assert len(set(s.tolist())) == 10 and np.isin(s, np.arange(50)).all()
    np.testing.assert_array_equal(s, idx.sample_ids(10, seed=1))
    assert sorted(idx.sample_ids(500).tolist()) == list(range(50))
    D, I = idx.search_by_id(7, 5)
    assert 7 not in I[0] and I.shape == (1, 5)
    D, I = idx.search_by_id(7, 5, exclude_self=False)
    assert I[0, 0] == 7
    with pytest.raises(KeyError):
        idx.search_by_id(999, 5)
    with pytest.raises(ValueError, match="JSON"):
        idx.add(x[:1], metadata=[{"obj": object()}])
    with pytest.raises(ValueError, match="label"):
        idx.add(x[:1], metadata=[{"label": "cat"}])
    with pytest.raises(ValueError, match="1 entries for 2"):
        idx.add(x[:2], metadata=[{}])
    idx.close()


# --------------------------------------------------------------------------- validation


def test_bad_vectors_rejected():
    idx = EmbeddingIndex.create(4)
    good = np.ones((3, 4), np.float32)
    bad_nan = good.copy()
    bad_nan[1, 2] = np.nan
    bad_inf = good.copy()
    bad_inf[2, 0] = np.inf
    zero = good.copy()
    zero[0] = 0
    with pytest.raises(ValueError, match=r"NaN or inf.*\[1\]"):
        idx.add(bad_nan)
    with pytest.raises(ValueError, match=r"NaN or inf.*\[2\]"):
        idx.add(bad_inf)
    with pytest.raises(ValueError, match=r"zero vector.*\[0\]"):
        idx.add(zero)
    with pytest.raises(ValueError, match="wrong dimension.*3.*expects 4"):
        idx.add(np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        idx.add(np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match="dtype"):
        idx.add(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="float32 range"):
        idx.add(np.full((1, 4), 1e300))
    with pytest.raises(ValueError, match="wrong dimension"):
        idx.search(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        idx.search(bad_nan)
    with pytest.raises(ValueError, match="zero"):
        idx.search(np.zeros(4))
    with pytest.raises(ValueError, match="k must"):
        idx.search(good, 0)
    assert len(idx) == 0
    # tiny but non-zero vectors are fine; inputs are not modified
    tiny = np.full((1, 4), 1e-30, np.float64)
    idx.add(tiny)
    assert len(idx) == 1 and tiny[0, 0] == 1e-30
    with pytest.raises(ValueError, match="zero vector"):
        EmbeddingIndex.build(zero)


# --------------------------------------------------------------------------- tuned IVF recall


def test_tuned_ivf_reaches_recall_target():
    n, dim = 20_000, 64
    data = clustered(n + 500, dim, centers=300, spread=0.25, seed=7)
    x, heldout = data[:n], data[n:]
    idx = EmbeddingIndex.build(x, factory="IVF128,Flat", recall_target=0.95, tune_queries=500, seed=0)
    info = idx.info
    nprobe = info["search_params"]["nprobe"]
    assert 1 < nprobe < 128, "this data needs some probing, but not an exhaustive search"
    assert info["recall_at_10"] >= 0.95 and info["recall_target_met"] is True
    assert info["latency_ms_per_query"] > 0 and info["build"]["train_size"] <= 50 * 128
    # independent check on queries that are not in the index
    D, I = idx.search(heldout, 10)
    truth = exact_topk(x, np.arange(n), heldout, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, truth)])
    # the tuning queries were new to the index too (added after tuning), so the stored figure
    # predicts this one: both are recall of unseen queries, up to sampling noise
    assert info["tuning_queries_held_out"] is True and len(idx) == n
    assert recall >= 0.94 and abs(recall - info["recall_at_10"]) < 0.02, (recall, info["recall_at_10"], nprobe)


def test_untrained_ivf_needs_training():
    idx = EmbeddingIndex.create(16, "IVF8,Flat")
    x = clustered(800, 16)
    with pytest.raises(ValueError, match="not trained"):
        idx.add(x)
    idx.train(x)
    idx.add(x)
    assert len(idx) == 800
    with pytest.raises(ValueError, match="invalid FAISS factory"):
        EmbeddingIndex.create(16, "NotAnIndex42")


# --------------------------------------------------------------------------- durability

CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from infomax.index import EmbeddingIndex
    folder, op = sys.argv[1], sys.argv[2]
    idx = EmbeddingIndex.load(folder)
    if op == "add":
        rng = np.random.default_rng(42)
        ids = idx.add(rng.standard_normal((25, 16)).astype("float32"),
                      metadata=[{"source": f"new/{i}.png", "label": 9} for i in range(25)])
        print(",".join(map(str, ids)), flush=True)
    else:
        print(idx.remove(list(range(0, 40, 2))), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no save(), no close(), no atexit
    """
)


def _crash(folder: Path, op: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(folder), op], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    return p.stdout.strip()


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_kill_9_after_add_and_remove_loses_nothing(tmp_path, factory):
    x = clustered(400, 16, seed=8)
    idx = EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", tune_queries=50)
    idx.close()
    ids = [int(v) for v in _crash(tmp_path / "ix", "add").split(",")]
    assert ids == list(range(400, 425))
    assert _crash(tmp_path / "ix", "remove") == "20"
    j = EmbeddingIndex.load(tmp_path / "ix")
    assert j._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert len(j) == 405
    assert j.get(410) == {"id": 410, "source": "new/10.png", "label": 9, "meta": {}}
    assert j.get(0) is None and j.get(1) is not None
    new = normalized(np.random.default_rng(42).standard_normal((25, 16)).astype("float32"))
    D, I = j.search(new, 1)
    assert I[:, 0].tolist() == ids  # FAISS and the store agree
    D, I = j.search(x[:40], 10)
    assert not np.isin(I, np.arange(0, 40, 2)).any()
    # replay is idempotent: loading again (without a checkpoint) gives the same state
    j2 = EmbeddingIndex.load(tmp_path / "ix", mmap=False, read_only=True)
    np.testing.assert_array_equal(j2.search(x[:40], 10)[1], I)
    j2.close()
    # checkpoint prunes the log; the next load needs no replay
    j.save()
    assert j._conn.execute("SELECT COUNT(*) FROM oplog").fetchone()[0] == 0
    j.close()
    k = EmbeddingIndex.load(tmp_path / "ix")
    assert len(k) == 405 and k._applied_seq == 2
    k.close()


def test_temp_written_but_not_renamed_leaves_previous_index_loadable(tmp_path, monkeypatch):
    x = clustered(600, 16, seed=9)
    idx = EmbeddingIndex.build(x, factory="HNSW32", path=tmp_path / "ix", tune_queries=50)
    q = x[:20]
    _, before = idx.search(q, 5)
    idx.add(x[:3] * -1)
    _, after = idx.search(q, 5)
    # (1) a stray temp snapshot, as if the process died before the rename
    folder = tmp_path / "ix"
    tmp = temp_name_for(folder / INDEX_FILE)
    tmp.write_bytes((folder / INDEX_FILE).read_bytes()[:1000])
    # (2) a checkpoint that dies between writing its temp file and renaming it
    import infomax.index.persist as mod  # the module whose os.replace publishes the snapshot

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(mod.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        idx.save()
    monkeypatch.undo()
    assert not [p for p in folder.iterdir() if p.name.startswith(".index.faiss.tmp") and p != tmp]
    j = EmbeddingIndex.load(folder, read_only=True)
    assert len(j) == 603
    np.testing.assert_array_equal(j.search(q, 5)[1], after)  # old snapshot + replayed log
    j.close()
    idx.close()
    assert before.shape == after.shape


def test_one_writer_per_folder_and_readers_follow_it(tmp_path):
    x = clustered(300, 16, seed=10)
    a = EmbeddingIndex.build(x, path=tmp_path / "ix")
    # a second writer, even in the same process, is refused naming the holder
    with pytest.raises(IndexLockedError, match=rf"cannot open it for writing: pid {os.getpid()}, this very process"):
        EmbeddingIndex.load(tmp_path / "ix")
    ro = EmbeddingIndex.load(tmp_path / "ix", read_only=True)  # readers take no lock
    a.add(x[:5] + 0.5)  # ids 300..304
    assert len(ro) == 300
    assert ro.refresh() == 5 and len(ro) == 305
    a.remove([300])
    assert ro.refresh() == 1 and len(ro) == 304 and 300 not in set(ro.search(x[:5] + 0.5, 3)[1].ravel().tolist())
    with pytest.raises(PermissionError):
        ro.add(x[:1])
    with pytest.raises(PermissionError):
        ro.save()
    a.close()  # releases the folder
    b = EmbeddingIndex.load(tmp_path / "ix")
    # the reader falls behind while the writer writes and checkpoints (pruning the log entries
    # the reader would need): its refresh reconciles against the store
    b.add(x[10:14] + 2.0)  # 305..308
    b.remove([1, 2])
    b.save()
    assert ro.refresh() > 0 and len(ro) == 306 and 1 not in set(ro.search(x[1:3], 3)[1].ravel().tolist())
    assert ro.search(x[10:14] + 2.0, 1)[1].ravel().tolist() == [305, 306, 307, 308]
    assert not ro.folder_replaced()
    ro.close()
    b.close()


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from infomax.index import EmbeddingIndex
    idx = EmbeddingIndex.load(sys.argv[1])
    idx.add(np.ones((2, 16), np.float32), metadata=[{"source": "from-child"}] * 2)
    print("added", flush=True)
    sys.stdin.readline()  # hold the folder until killed
""")


def test_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    x = clustered(100, 16, seed=21)
    EmbeddingIndex.build(x, path=tmp_path / "ix").close()
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path / "ix"), "--api-key", "s3cret"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "added"  # the child holds the lock now
        with pytest.raises(IndexLockedError) as err:
            EmbeddingIndex.load(tmp_path / "ix")
        message = str(err.value)
        assert f"pid {child.pid} (-c {tmp_path / 'ix'} --api-key ***, since " in message
        assert "s3cret" not in message and "read-only" in message
        assert err.value.holder["pid"] == child.pid
        with EmbeddingIndex.load(tmp_path / "ix", read_only=True) as ro:  # readers still open it
            assert len(ro) == 102
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # the kernel released the lock with the process: no stale lock to clean up by hand
    with EmbeddingIndex.load(tmp_path / "ix") as idx:
        assert len(idx) == 102 and idx.get(100)["source"] == "from-child"


def test_rebuild_of_a_folder_open_for_writing_is_refused_and_loses_nothing(tmp_path):
    x = clustered(200, 16, seed=22)
    folder = tmp_path / "ix"
    writer = EmbeddingIndex.build(x, path=folder)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(IndexLockedError, match="cannot replace it: .*build into another folder"):
        EmbeddingIndex.build(x[:50], path=folder, overwrite=True)
    with pytest.raises(IndexLockedError, match="cannot replace it"):
        EmbeddingIndex.create(16, path=folder, overwrite=True)
    other = EmbeddingIndex.build(x[:10], path=tmp_path / "other")
    with pytest.raises(IndexLockedError, match="cannot replace it"):
        other.save(folder, overwrite=True)  # an export onto it, too
    other.close()
    assert sorted(p.name for p in folder.iterdir()) == before  # no temp folder left beside or inside
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (acked,) = writer.add(x[:1] + 1.0)  # the writer goes on writing into the folder that stays
    writer.close()
    with EmbeddingIndex.load(folder) as idx:
        assert len(idx) == 201 and acked in idx


def test_rebuild_of_a_folder_with_only_readers_replaces_it_and_they_can_tell(tmp_path):
    x = clustered(200, 16, seed=23)
    folder = tmp_path / "ix"
    EmbeddingIndex.build(x, path=folder).close()
    reader = EmbeddingIndex.load(folder, read_only=True)
    assert not reader.folder_replaced()
    rebuilt = EmbeddingIndex.build(x[:50], path=folder, overwrite=True)
    # the builder is the new folder's writer from the moment it appears
    with pytest.raises(IndexLockedError, match=rf"pid {os.getpid()}"):
        EmbeddingIndex.load(folder)
    assert reader.folder_replaced() and len(reader) == 200  # still the old snapshot
    rebuilt.close()
    with EmbeddingIndex.load(folder, read_only=True) as fresh:
        assert len(fresh) == 50 and not fresh.folder_replaced()
    reader.close()


def test_build_prepare_puts_files_in_place_before_the_folder_appears(tmp_path):
    seen = []

    def prepare(tmp: Path) -> None:
        assert not (tmp_path / "ix").exists()  # nothing at the target yet
        seen.append(sorted(p.name for p in tmp.iterdir()))
        (tmp / "extra.txt").write_text("here")

    EmbeddingIndex.build(clustered(50, 8), path=tmp_path / "ix", prepare=prepare).close()
    assert {INDEX_FILE, RECORD_FILE, METADATA_FILE} <= set(seen[0])
    assert (tmp_path / "ix" / "extra.txt").read_text() == "here"
    # a failing prepare leaves no folder and no temp folder behind
    with pytest.raises(RuntimeError, match="no pictures"):
        EmbeddingIndex.build(
            clustered(50, 8), path=tmp_path / "iy", prepare=lambda tmp: (_ for _ in ()).throw(RuntimeError("no pictures"))
        )
    assert not (tmp_path / "iy").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_lost_log_entries_are_reconciled_at_load(tmp_path):
    import sqlite3

    x = clustered(200, 8, seed=14)
    a = EmbeddingIndex.build(x, path=tmp_path / "ix")
    a.add(x[:5] + 1.0)  # 200..204, logged only
    a.remove([0, 1])
    a.close()
    con = sqlite3.connect(tmp_path / "ix" / METADATA_FILE)
    con.execute("DELETE FROM oplog")  # the log is gone; items are the truth
    con.commit()
    con.close()
    b = EmbeddingIndex.load(tmp_path / "ix")
    assert len(b) == 203 and 0 not in set(b.search(x[:2], 3)[1].ravel().tolist())
    assert b.search(x[:5] + 1.0, 1)[1].ravel().tolist() == [200, 201, 202, 203, 204]
    b.close()


# --------------------------------------------------------------------------- corrupt / foreign files


@pytest.fixture
def saved(tmp_path):
    x = clustered(300, 16, seed=11)
    EmbeddingIndex.build(x, path=tmp_path / "ix", artifact={"id": "abc123", "path": "enc"}).close()
    return tmp_path / "ix"


def test_truncated_index_file(saved):
    p = saved / INDEX_FILE
    data = p.read_bytes()
    for cut in (0, 3, 100, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(IndexLoadError) as e:
            EmbeddingIndex.load(saved)
        assert str(p) in str(e.value)
        assert "truncated" in str(e.value) or "not a FAISS index" in str(e.value)


def test_random_bytes_and_bit_flip(saved):
    p = saved / INDEX_FILE
    data = p.read_bytes()
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(IndexLoadError, match="index.faiss"):
        EmbeddingIndex.load(saved)
    p.write_bytes(b"I" + np.random.default_rng(1).bytes(5000))  # header-like start, still garbage
    with pytest.raises(IndexLoadError, match="index.faiss"):
        EmbeddingIndex.load(saved)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(flipped))
    with pytest.raises(IndexLoadError, match="index.faiss: checksum mismatch"):
        EmbeddingIndex.load(saved)
    # a FAISS file without our trailer (foreign)
    faiss.write_index(faiss.IndexIDMap2(faiss.IndexFlatIP(16)), str(p))
    with pytest.raises(IndexLoadError, match="trailer"):
        EmbeddingIndex.load(saved)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2, 3]",
        '{"hello": "world"}',
        "",
        '{"format_version": 99, "factory": "Flat", "metric": "inner_product", "normalized": true, "dim": 16, "artifact": null}',
    ],
)
def test_foreign_build_record(saved, content):
    (saved / RECORD_FILE).write_text(content)
    with pytest.raises(IndexLoadError) as e:
        EmbeddingIndex.load(saved)
    assert str(saved / RECORD_FILE) in str(e.value)


def test_foreign_metadata_store_and_missing_files(saved, tmp_path):
    (saved / METADATA_FILE).write_bytes(b"random bytes, not sqlite" * 10)
    for suffix in ("-wal", "-shm"):
        (saved / (METADATA_FILE + suffix)).unlink(missing_ok=True)
    with pytest.raises(IndexLoadError, match="metadata.sqlite"):
        EmbeddingIndex.load(saved)
    (saved / METADATA_FILE).unlink()
    with pytest.raises(IndexLoadError, match="metadata.sqlite: missing"):
        EmbeddingIndex.load(saved)
    with pytest.raises(IndexLoadError, match="does not exist"):
        EmbeddingIndex.load(tmp_path / "nope")
    (saved / INDEX_FILE).unlink()
    with pytest.raises(IndexLoadError, match="index.faiss: missing"):
        EmbeddingIndex.load(saved)


def test_dim_and_artifact_mismatch(saved):
    with pytest.raises(IndexMismatchError) as e:
        EmbeddingIndex.load(saved, expected_dim=128)
    assert "expected 128" in str(e.value) and "found 16" in str(e.value)
    with pytest.raises(IndexMismatchError) as e:
        EmbeddingIndex.load(saved, expected_artifact_id="def456")
    assert "expected 'def456'" in str(e.value) and "found 'abc123'" in str(e.value)
    assert isinstance(e.value, ValueError)
    EmbeddingIndex.load(saved, expected_dim=16, expected_artifact_id="abc123").close()


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("factory", FACTORIES)
def test_concurrent_searches_while_adding(tmp_path, factory):
    x = clustered(2000, 16, seed=12)
    idx = EmbeddingIndex.build(x, factory=factory, path=tmp_path / "ix", tune_queries=100)
    added: set[int] = set(range(2000))
    removed: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    rng = np.random.default_rng(0)
    extra = clustered(2000, 16, seed=13)

    searches = [0] * 4  # searches each searcher has completed
    progress = threading.Condition()

    def searcher(seed: int) -> None:
        r = np.random.default_rng(seed)
        faiss.omp_set_num_threads(1)
        try:
            while not stop.is_set():
                q = extra[r.integers(0, 2000, r.integers(1, 8))]
                D, I = idx.search(q, 10)
                assert I.shape == (len(q), 10)
                assert (I >= 0).all(), "at least k items are always present"
                snapshot = added.copy()
                assert set(I.ravel().tolist()) <= snapshot
                assert (np.diff(D, axis=1) <= 1e-5).all()
                got = idx.get_many(I[0])
                assert all(g is None or g["id"] == i for g, i in zip(got, I[0]))
                with progress:
                    searches[seed] += 1
                    progress.notify_all()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            with progress:
                progress.notify_all()

    def each_searcher_searched_since(counts: list[int]) -> None:
        """Waits (on events, not time) until every searcher has finished a search begun after the
        last write, so writes and searches interleave however loaded the machine is."""
        with progress:
            assert progress.wait_for(lambda: errors or all(n >= c + 2 for n, c in zip(searches, counts)), 120)

    threads = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        batch = 0
        while batch < 8 and not errors:
            each_searcher_searched_since(list(searches))
            vecs = extra[(batch * 25) % 2000 : (batch * 25) % 2000 + 25]
            ids = np.arange(10_000 + batch * 25, 10_000 + batch * 25 + len(vecs))
            added.update(ids.tolist())  # announce before they can show up
            idx.add(vecs, ids=ids)
            gone = rng.choice(2000, 5, replace=False)
            idx.remove(gone)
            removed.update(gone.tolist())
            batch += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    assert batch == 8 and all(n >= 16 for n in searches)
    assert len(idx) == 2000 + 25 * batch - len(removed)
    D, I = idx.search(x, 10)
    assert not np.isin(I, list(removed)).any()
    idx.close()
    j = EmbeddingIndex.load(tmp_path / "ix")
    assert len(j) == 2000 + 25 * batch - len(removed)
    j.close()


# --------------------------------------------------------------------------- atomic helpers


def test_atomic_helpers(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.json"]
    with pytest.raises(FileNotFoundError):
        with atomic_path(p):
            pass
    with pytest.raises(ValueError):
        atomic_write_json(p, {"x": float("nan")})
    assert p.read_bytes() == b"\x00\x01"
    with atomic_path(tmp_path / "model.bin") as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        np.save(tmp, np.arange(3)) if False else tmp.write_bytes(b"ok")
    assert (tmp_path / "model.bin").read_bytes() == b"ok"
