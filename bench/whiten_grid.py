"""The whitening settings of an artifact's vectors, picked without the test split (issue 14): the
train split's held-out tenth (a seeded tenth of every class) as queries, the other nine tenths as
the bank and as what the whitening is fitted on (no label used): weighted 200-NN (cosine, T 0.1),
1-NN and precision@10 for each ridge eps and number of kept directions, beside the vectors
unwhitened. The weighted vote is a classifier's figure; 1-NN and P@10 are what a search shows, and
the two can disagree (a longer whitened vector can win the vote and lose the ten nearest).

    python bench/whiten_grid.py --model ART [--data cifar10] [--output local]
                                [--eps 1e-3 1e-2 1e-1] [--dims 0 512 256 128] [--json out/whiten.json]

``--dims 0`` keeps all directions. The rule docs/BENCHMARKS.md applies to the grid, marked in the
output ("<- pick"): among the settings whose 1-NN and P@10 are not below the raw vectors', the
shortest vectors within 0.2 points of the best weighted k-NN (of equal length, the higher k-NN);
then that one setting is measured on the test split (`infomax export --whiten ...`, `infomax eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pick(rows: dict[str, dict]) -> str | None:
    """The rule: among whitened settings that lose neither 1-NN nor P@10 against ``rows["raw"]``, the
    shortest (``dim``, the vectors' length) within 0.002 of their best weighted k-NN (ties in length:
    the higher k-NN)."""
    raw = rows["raw"]
    fair = {name: r for name, r in rows.items() if name != "raw" and r["nn1_top1"] >= raw["nn1_top1"] and r["p10"] >= raw["p10"]}
    if not fair:
        return None
    best = max(r["knn_top1"] for r in fair.values())
    close = [name for name, r in fair.items() if r["knn_top1"] >= best - 0.002]
    return min(close, key=lambda name: (fair[name]["dim"], -fair[name]["knn_top1"]))


def main(argv: list[str] | None = None) -> int:
    from infomax import load_encoder
    from infomax.data import load_dataset
    from infomax.evaluate import _held_out, knn_eval
    from infomax.whitening import fit_whitening

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an artifact folder")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--output", default="local", choices=["mu", "pooled", "local"])
    p.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    p.add_argument("--dims", type=int, nargs="+", default=[0, 512, 256, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    encoder = load_encoder(args.model)
    encoder.output, encoder.whitening = args.output, None  # the raw vectors of that kind
    images, labels = load_dataset(args.data, args.data_dir, "train")
    bank, queries = _held_out(labels, 0.1, args.seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        vectors = encoder.embed(images)
    print(f"{len(images)} {args.output} vectors of {vectors.shape[1]} values in {time.perf_counter() - t0:.0f} s")
    xb, yb, xq, yq = vectors[bank], labels[bank], vectors[queries], labels[queries]

    rows = {"raw": knn_eval(xb, yb, xq, yq) | {"dim": vectors.shape[1]}}
    for eps in args.eps:
        for dim in args.dims:
            if dim >= vectors.shape[1]:
                continue
            w = fit_whitening(xb, eps=eps, dim=dim or None)
            with torch.inference_mode():
                rows[f"eps {eps:g}, {dim or 'all'}"] = knn_eval(w(xb), yb, w(xq), yq) | {"dim": w.out_dim}
    chosen = pick(rows)
    best = max(r["knn_top1"] for r in rows.values())
    print(f"held-out tenth of {args.data}'s train split: {len(bank)} bank, {len(queries)} queries")
    print(f"  {'':>18}  weighted 200-NN / 1-NN / P@10")
    for name, r in rows.items():
        mark = " (best k-NN)" if r["knn_top1"] == best else ""
        mark += "  <- pick" if name == chosen else ""
        print(f"  {name:>18}: {r['knn_top1']:.4f} / {r['nn1_top1']:.4f} / {r['p10']:.4f}{mark}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": str(args.model),
                    "output": args.output,
                    "bank": len(bank),
                    "queries": len(queries),
                    "results": rows,
                    "pick": chosen,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
