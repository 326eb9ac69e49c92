#!/usr/bin/env python
"""Benchmark EmbeddingIndex for every index type the chooser can pick.

For each size N (default 100k and 1M) and each family the chooser
(`infomax.index.choose_factory`) can return -- Flat, HNSW32, IVF{nlist},Flat,
IVF{nlist},PQ{dim/4}x8 -- this builds an index of N vectors (dimension 256,
synthetic clustered data unless --vectors is given) and reports:

* build time (EmbeddingIndex.build: train + add + SQLite + recall tuning) and the
  search parameter the tuning chose for recall@10 >= 0.95;
* memory: size of index.faiss, of metadata.sqlite, and the process RSS growth;
* queries/s one at a time and in batches of 256;
* recall@10 vs exact search on held-out queries (not in the index);
* the wrapper's overhead over calling FAISS directly on the same index object
  with the same search parameters (the raw side also L2-normalises its queries,
  since cosine search needs that; single queries run on one OpenMP thread on both
  sides, as the wrapper does). Target: within 5%.

Each case runs in a fresh subprocess so that RSS deltas are not polluted by the
previous case. Prints a markdown table (and --json writes the raw rows).

    python bench/search.py --quick                 # 100k only, fewer queries
    python bench/search.py --sizes 100k,1M
    python bench/search.py --vectors codes.npy --sizes 50k --factories flat,hnsw
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_size(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    mult = 1
    if s.endswith("k"):
        mult, s = 1000, s[:-1]
    elif s.endswith("m"):
        mult, s = 1_000_000, s[:-1]
    return int(float(s) * mult)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def families(n: int, dim: int) -> list[str]:
    from infomax.index.factory import nlist_for

    nlist = nlist_for(n)
    quant = f"IVF{nlist}_HNSW32" if nlist >= 16384 else f"IVF{nlist}"
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    return ["Flat", "HNSW32", f"{quant},Flat", f"{quant},PQ{m}x8"]


def family_key(factory: str) -> str:
    """'flat', 'hnsw', 'ivfflat' or 'ivfpq' (names accepted by --factories)."""
    if factory == "Flat":
        return "flat"
    if factory.startswith("HNSW"):
        return "hnsw"
    return "ivfpq" if ",PQ" in factory else "ivfflat"


def make_data(n: int, nq: int, dim: int, vectors: str | None, seed: int = 0):
    import numpy as np

    if vectors:
        allv = np.load(vectors, mmap_mode="r")
        if allv.ndim != 2:
            raise SystemExit(f"{vectors}: expected a 2-D array, got shape {allv.shape}")
        if len(allv) < n + nq:
            raise SystemExit(f"{vectors}: has {len(allv)} rows, need {n + nq} (N + queries)")
        rng = np.random.default_rng(seed)
        pos = rng.permutation(len(allv))[: n + nq]
        data = np.asarray(allv[np.sort(pos)], dtype=np.float32)
        rng.shuffle(data)
        return data[:n], data[n:]
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for s in range(0, count, 100_000):
            e = min(count, s + 100_000)
            lab = rng.integers(0, len(centers), e - s)
            out[s:e] = centers[lab] + rng.standard_normal((e - s, dim)).astype(np.float32) * (1.0 / np.sqrt(dim))
        return out

    return draw(n), draw(nq)


def run_case(n: int, factory: str, dim: int, nq: int, vectors: str | None, seconds: float) -> dict:
    import faiss
    import numpy as np

    from infomax.index import EmbeddingIndex

    x, q = make_data(n, nq, dim, vectors)
    dim = x.shape[1]
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gc.collect()
    rss0 = rss_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    t0 = time.perf_counter()
    idx = EmbeddingIndex.build(
        x, factory=factory, path=tmp / "ix", recall_target=0.95, tune_queries=min(1000, max(100, n // 100))
    )
    build_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()
    info = idx.info

    # exact ground truth (held-out queries)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, gt = faiss.knn(qn.astype(np.float32), xn.astype(np.float32), 10, metric=faiss.METRIC_INNER_PRODUCT)
    del xn

    index = idx._index
    params = idx._params(10, idx._param_value())

    def wrapper_single(qs):
        for i in range(len(qs)):
            idx.search(qs[i : i + 1], 10)

    def raw_single(qs):
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            for i in range(len(qs)):
                qq = qs[i : i + 1].copy()
                faiss.normalize_L2(qq)
                index.search(qq, 10, params=params)
        finally:
            faiss.omp_set_num_threads(prev)

    def wrapper_batch(qs):
        for s in range(0, len(qs) - 255, 256):
            idx.search(qs[s : s + 256], 10)

    def raw_batch(qs):
        for s in range(0, len(qs) - 255, 256):
            qq = qs[s : s + 256].copy()
            faiss.normalize_L2(qq)
            index.search(qq, 10, params=params)

    def measure(fa, fb, qs, per_round: int) -> tuple[float, float]:
        """Alternate a/b rounds for ~`seconds`; median seconds per query of each."""
        ta, tb = [], []
        deadline = time.perf_counter() + seconds
        r = 0
        while r < 3 or (time.perf_counter() < deadline and r < 50):
            sub = qs[(r * per_round) % len(qs) :][:per_round]
            if len(sub) < per_round:
                sub = qs[:per_round]
            for f, acc in ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta)):
                t = time.perf_counter()
                f(sub)
                acc.append((time.perf_counter() - t) / len(sub))
            r += 1
        return float(np.median(ta)), float(np.median(tb))

    single_n = 50 if n >= 500_000 and factory == "Flat" else 200
    w1, r1 = measure(wrapper_single, raw_single, q, single_n)
    qb = q[: (len(q) // 256) * 256] if len(q) >= 256 else np.concatenate([q] * (256 // len(q) + 1))[:256]
    wb, rb = measure(wrapper_batch, raw_batch, qb, len(qb))

    D, I = idx.search(q, 10)
    recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(I, gt)]))
    row = {
        "n": n,
        "dim": dim,
        "factory": factory,
        "search_params": info["search_params"],
        "build_s": round(build_s, 2),
        "build_detail": info["build"],
        "index_bytes": (tmp / "ix" / "index.faiss").stat().st_size,
        "sqlite_bytes": sum(p.stat().st_size for p in (tmp / "ix").glob("metadata.sqlite*")),
        "rss_delta_bytes": rss1 - rss0,
        "recall_at_10_heldout": round(recall, 4),
        "recall_at_10_tuning": info["recall_at_10"],
        "qps_single": round(1 / w1, 1),
        "qps_batch256": round(1 / wb, 1),
        "raw_qps_single": round(1 / r1, 1),
        "raw_qps_batch256": round(1 / rb, 1),
        "overhead_single_pct": round((w1 / r1 - 1) * 100, 2),
        "overhead_batch_pct": round((wb / rb - 1) * 100, 2),
        "omp_threads": faiss.omp_get_max_threads(),
    }
    idx.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return row


def fmt_table(rows: list[dict], chosen: dict[int, str]) -> str:
    mb = 1e6
    head = (
        "| N | index | chooser (4GB) | params | build s | index MB | sqlite MB | RSS Δ MB | recall@10 held-out "
        "| recall@10 tuning | QPS 1-by-1 | QPS batch 256 | raw FAISS QPS 1-by-1 / batch | overhead 1-by-1 | overhead batch |"
    )
    sep = "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"
    lines = [head, sep]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['factory']} | | | error: {r['error']} |" + " |" * 10)
            continue
        params = ",".join(f"{k}={v}" for k, v in r["search_params"].items()) or "exact"
        lines.append(
            f"| {r['n']:,} | {r['factory']} | {'✓' if chosen.get(r['n']) == r['factory'] else ''} | {params} "
            f"| {r['build_s']:.1f} | {r['index_bytes'] / mb:.1f} | {r['sqlite_bytes'] / mb:.1f} | {r['rss_delta_bytes'] / mb:.0f} "
            f"| {r['recall_at_10_heldout']:.3f} | {r['recall_at_10_tuning']} | {r['qps_single']:,.0f} | {r['qps_batch256']:,.0f} "
            f"| {r['raw_qps_single']:,.0f} / {r['raw_qps_batch256']:,.0f} | {r['overhead_single_pct']:+.1f}% | {r['overhead_batch_pct']:+.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated N values, e.g. 100k,1M (default 100k,1M; --quick: 100k)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=None, help="held-out queries (default 2048; --quick 1024)")
    ap.add_argument("--factories", default=None, help="comma-separated subset of flat,hnsw,ivfflat,ivfpq (default: all four)")
    ap.add_argument("--vectors", default=None, help=".npy file of real codes (N + queries rows are sampled from it)")
    ap.add_argument("--seconds", type=float, default=None, help="timing budget per measurement (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="100k only, fewer queries, shorter timings")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--_case", nargs=2, metavar=("N", "FACTORY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    nq = args.queries or (1024 if args.quick else 2048)
    seconds = args.seconds or (1.0 if args.quick else 3.0)

    if args._case:
        row = run_case(int(args._case[0]), args._case[1], args.dim, nq, args.vectors, seconds)
        print("BENCH_ROW " + json.dumps(row), flush=True)
        return 0

    from infomax.index import choose_factory, parse_memory

    sizes = [parse_size(s) for s in (args.sizes or ("100k" if args.quick else "100k,1M")).split(",")]
    dim = args.dim
    if args.vectors:
        import numpy as np

        dim = int(np.load(args.vectors, mmap_mode="r").shape[1])
    rows: list[dict] = []
    chosen: dict[int, str] = {}
    print(
        f"# infomax index benchmark\n\nCPU: {cpu_name()} ({os.cpu_count()} logical CPUs), "
        f"data: {'file ' + args.vectors if args.vectors else 'synthetic clustered'}, dim {dim}, {nq} held-out queries\n",
        flush=True,
    )
    for n in sizes:
        chosen[n] = choose_factory(n, dim, parse_memory("4GB"))
        facs = families(n, dim)
        if args.factories:
            wanted = {w.strip().lower() for w in args.factories.split(",")}
            facs = [f for f in facs if family_key(f) in wanted]
        for fac in facs:
            t = time.perf_counter()
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--_case",
                str(n),
                fac,
                "--dim",
                str(dim),
                "--queries",
                str(nq),
                "--seconds",
                str(seconds),
            ]
            if args.vectors:
                cmd += ["--vectors", args.vectors]
            p = subprocess.run(cmd, capture_output=True, text=True)
            found = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_ROW ")]
            if p.returncode != 0 or not found:
                err = (p.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"n": n, "factory": fac, "error": err})
                print(f"  N={n:,} {fac}: FAILED ({err})", file=sys.stderr, flush=True)
                continue
            row = json.loads(found[-1][len("BENCH_ROW ") :])
            rows.append(row)
            print(f"  N={n:,} {fac}: done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    print(fmt_table(rows, chosen))
    print("\nchooser (4GB budget): " + ", ".join(f"N={n:,} -> {f}" for n, f in chosen.items()))
    print(
        "overhead = wrapper time / raw FAISS time - 1 (raw side: copy + faiss.normalize_L2 + index.search with the same params)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
