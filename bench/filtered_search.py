#!/usr/bin/env python
"""Filtered search against unfiltered search on the same index, in the same run (issue 17 item 2).

N (default 100k) clustered unit vectors of dimension 128 (1,000 centres, as bench/search.py), each
item a random label 0..99 and the same number as its meta key ``bucket`` (independent of the
vectors), its centre as the source ``cCCCC/I.png`` and as its meta key ``centre``, so that

    {"label": 0}                        matches  1%   (the label index)
    {"label": {"in": [0..9]}}                   10%
    {"label": {"in": [0..49]}}                  50%
    {"meta.bucket": {"in": [0..9]}}             10%   (the JSON of meta: no SQL index)
    {"source": {"prefix": "c00"}}               10%   (the source index): centres 0-99, and
    {"meta.centre": {"in": [0..149]}}           15%   centres 0-149, while every query is a point
                                                      of another centre: filters anti-correlated
                                                      with the query (the graph walk's worst case)

For Flat and the default factory (``choose_factory``: HNSW32 at 100k, built and tuned to
recall@10 0.95 by ``EmbeddingIndex.build``), single queries with k = 10 on one OpenMP thread
(as the service runs lone requests). Per filter:

* warm: median latency with the filter's ids already resolved (cached until the next write);
* cold: median latency of a filter's first use (its ids looked up in SQLite, the FAISS selector
  and id-map positions built in the request): the index's cache of resolved filters emptied
  before each search;
* each as a ratio to the unfiltered median, measured interleaved with it (query by query), so
  that a busy machine slows both sides alike;
* recall@10 against brute force over the matching items, and whether every row held k results;
* the path the index took (Flat: selector; HNSW: exact below its limit, graph walk above).

    python bench/filtered_search.py                 # ~2-3 min on 2 cores
    python bench/filtered_search.py --n 20000 --queries 50   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from machine import cpu_name  # bench/machine.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infomax.index import EmbeddingIndex, choose_factory  # noqa: E402
from infomax.index.filtered import EXACT_MATCHES  # noqa: E402

FILTERS = [
    ("label = 0", {"label": 0}),
    ("label in 10", {"label": {"in": list(range(10))}}),
    ("label in 50", {"label": {"in": list(range(50))}}),
    ("meta.bucket in 10", {"meta.bucket": {"in": list(range(10))}}),
    ("source prefix, other centres", {"source": {"prefix": "c00"}}),
    ("meta.centre in 150, other centres", {"meta.centre": {"in": list(range(150))}}),
]


def vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors around 1,000 random centres, and each one's centre."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    which = rng.integers(0, len(centers), n)
    x = centers[which] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), which


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1e3, out


def run_index(
    name: str, index: EmbeddingIndex, x: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, cold_queries: int
) -> list[dict]:
    n = len(index)
    ef = index.search_params.get("efSearch")
    rows = []
    # warm up: FAISS, SQLite pages, every filter's ids (the warm figures are of cached filters)
    for q in queries[:5]:
        index.search(q, k)
    for _, flt in FILTERS:
        index.search(queries[0], k, filter=flt)
    base: list[float] = []
    base_results: list[np.ndarray] = []
    warm: dict[str, list[float]] = {f[0]: [] for f in FILTERS}
    results: dict[str, list[np.ndarray]] = {f[0]: [] for f in FILTERS}
    full = {f[0]: 0 for f in FILTERS}
    for q in queries:  # interleaved: one unfiltered search, then each filter, query by query
        ms, (_, I) = timed(index.search, q, k)
        base.append(ms)
        base_results.append(I[0])
        for fname, flt in FILTERS:
            ms, (_, I) = timed(index.search, q, k, filter=flt)
            warm[fname].append(ms)
            results[fname].append(I[0])
            full[fname] += int((I[0] >= 0).sum() == k)
    cold: dict[str, list[float]] = {f[0]: [] for f in FILTERS}
    cold_base: list[float] = []
    for q in queries[:cold_queries]:
        cold_base.append(timed(index.search, q, k)[0])
        for fname, flt in FILTERS:
            index._matches.clear()  # the first use of the filter (private: a benchmark's look inside)
            cold[fname].append(timed(index.search, q, k, filter=flt)[0])
    b, cb = statistics.median(base), statistics.median(cold_base)

    def recall(allowed: np.ndarray, found: list[np.ndarray]) -> float:
        keep = np.isin(ids, allowed)
        xs, ids_s = x[keep], ids[keep]
        hits = 0
        for q, got in zip(queries, found):
            truth = ids_s[np.argsort(-(xs @ q))[:k]]
            hits += len(set(truth.tolist()) & set(got.tolist()))
        return round(hits / (k * len(queries)), 4)

    rows.append(
        {
            "index": name,
            "filter": "none",
            "matching": n,
            "path": "unfiltered",
            "warm_ms": round(b, 3),
            "warm_ratio": 1.0,
            "cold_ms": round(cb, 3),
            "cold_ratio": 1.0,
            "recall_at_10": recall(ids, base_results),
            "rows_with_k": sum(int((r >= 0).sum() == k) for r in base_results),
        }
    )
    for fname, flt in FILTERS:
        allowed = index.matching_ids(flt)
        m = len(allowed)
        if index.factory == "Flat":
            path = "selector (exact)"
        elif m <= EXACT_MATCHES:
            path = "exact" + (" (storage, position bitmap)" if m > 4096 else " (vectors read back)")
        else:
            path = f"graph walk, efSearch {min(max(4096, n), -(-max(int(ef or 16), k) * n // m))}"
        w, c = statistics.median(warm[fname]), statistics.median(cold[fname])
        rows.append(
            {
                "index": name,
                "filter": fname,
                "matching": m,
                "path": path,
                "warm_ms": round(w, 3),
                "warm_ratio": round(w / b, 2),
                "cold_ms": round(c, 3),
                "cold_ratio": round(c / cb, 2),
                "recall_at_10": recall(allowed, results[fname]),
                "rows_with_k": full[fname],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--cold-queries", type=int, default=30)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    faiss.omp_set_num_threads(1)
    t_start = time.perf_counter()
    rng = np.random.default_rng(a.seed + 1)
    # the queries: more points of the same centres, not indexed, none of centres 0-149
    both, centre = vectors(a.n + 2 * a.queries, a.dim, a.seed)
    x, centre_x = both[: a.n], centre[: a.n]
    queries = both[a.n :][centre[a.n :] >= 150][: a.queries]
    labels = rng.integers(0, 100, a.n)
    ids = np.arange(a.n, dtype=np.int64)
    metadata = [
        {"label": int(lab), "bucket": int(lab), "centre": int(c), "source": f"c{c:04d}/{i}.png"}
        for i, (lab, c) in enumerate(zip(labels, centre_x))
    ]
    default = choose_factory(a.n, a.dim, 4 * 1000**3)
    rows = []
    for name in dict.fromkeys(["Flat", default]):  # one Flat when the default is Flat too (n < 50k)
        t0 = time.perf_counter()
        index = EmbeddingIndex.build(x, ids=ids, metadata=metadata, factory=name, seed=a.seed)
        built = time.perf_counter() - t0
        label = name + (f" (efSearch {index.search_params['efSearch']})" if "efSearch" in index.search_params else "")
        print(f"{label}: built in {built:.1f} s", file=sys.stderr)
        rows += run_index(label, index, x, ids, queries, a.k, a.cold_queries)
        index.close()
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": cpu_name(),
        "n": a.n,
        "dim": a.dim,
        "k": a.k,
        "queries": a.queries,
        "command": "python bench/filtered_search.py " + " ".join(argv or sys.argv[1:]),
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    print(
        f"{a.n} vectors, dim {a.dim}, k {a.k}, {a.queries} queries (cold: {a.cold_queries}), {out['machine']}, "
        f"{out['date']}, {out['seconds']} s\n"
    )
    print("| index | filter | matching | path | warm ms | x unfiltered | cold ms | x unfiltered | recall@10 | rows with k |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rec = "" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
        print(
            f"| {r['index']} | {r['filter']} | {r['matching']:,} | {r['path']} | {r['warm_ms']:.2f} | "
            f"{r['warm_ratio']:.2f} | {r['cold_ms']:.2f} | {r['cold_ratio']:.2f} | {rec} | "
            f"{r['rows_with_k']}/{a.queries} |"
        )
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
