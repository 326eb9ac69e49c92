"""What a search shows: precision@k of the neighbours (the share of the k nearest bank images, by
cosine, that have the query's class), for the vectors an artifact serves beside the encoder's own
kinds and raw pixels, all in one run on the same queries.

    python bench/retrieval.py --model models/cifar10 [--data cifar10] [--queries 4000] [--ks 1,10,50,100]

`infomax eval`'s weighted 200-NN is a classifier: its vote weighs each neighbour by
exp(cosine / 0.1), so it moves with how spread the cosine scores are, not only with which images
come back. A user of the search sees the ranked neighbours: this measures them. The bank is the
train split; the queries the first ``--queries`` test images; each artifact's whitening is its own
(fitted on the train split when it was exported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)

from infomax import load_encoder
from infomax.data import load_dataset
from infomax.evaluate import pixel_features
from infomax.knn import knn_predict_with_nearest


def precision_at(bank: torch.Tensor, bank_y: torch.Tensor, queries: torch.Tensor, query_y: torch.Tensor, ks: list[int]) -> dict:
    """{"P@k": share of the k nearest bank vectors (cosine) with the query's label} for each k: the
    ranked labels from `infomax eval`'s own neighbour pass (its p10 is P@10 here)."""
    _, _, ranked = knn_predict_with_nearest(queries, bank, bank_y, int(bank_y.max()) + 1, k=1, keep=max(ks))
    same = (ranked == query_y[:, None]).float()
    return {f"P@{k}": round(float(same[:, :k].mean()), 4) for k in ks}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="serving artifact folder(s)")
    p.add_argument("--data", default=None, help="data set (default: the first artifact's)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $INFOMAX_DATA_DIR)")
    p.add_argument("--queries", type=int, default=4000, help="test images used as queries (default 4000)")
    p.add_argument("--ks", default="1,10,50,100", help="the k of precision@k, comma-separated")
    p.add_argument("--no-pixels", action="store_true", help="leave out the raw-pixel row")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    encoders = [(m, load_encoder(m)) for m in args.model]
    data = args.data or encoders[0][1].config["dataset"]
    train, train_y = load_dataset(data, args.data_dir, "train")
    test, test_y = load_dataset(data, args.data_dir, "test")
    test, test_y = test[: args.queries], torch.as_tensor(test_y)[: args.queries]
    train_y = torch.as_tensor(train_y)
    print(
        f"# {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; {data}: {len(train)} bank images, {len(test)} queries",
        flush=True,
    )
    rows = []
    if not args.no_pixels:
        bank, queries = pixel_features(train, test)
        rows.append({"vectors": "raw pixels, centred", **precision_at(bank, train_y, queries, test_y, ks)})
        print(rows[-1], flush=True)
    for name, enc in encoders:
        t0 = time.perf_counter()
        kinds = ["mu", "local", "served"]
        parts = [enc.embed_features(x, features=tuple(kinds)) for x in (train, test)]  # one pass of the encoder
        feats = {k: torch.cat([part[k] for part in parts]) for k in kinds}
        served = f"served ({enc.config['output']}{', whitened' if enc.whitening is not None else ''}, {enc.dim}-d)"
        for kind, label in (("mu", "mu"), ("local", "C(x)"), ("served", served)):
            v = feats[kind]
            rows.append({"vectors": f"{name}: {label}", **precision_at(v[: len(train)], train_y, v[len(train) :], test_y, ks)})
            print(rows[-1], flush=True)
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("\n| vectors | " + " | ".join(f"P@{k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for r in rows:
        print(f"| {r['vectors']} | " + " | ".join(f"{r[f'P@{k}']:.4f}" for k in ks) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"data": data, "queries": len(test), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
