"""Ablations under a fixed training-time budget: train each variant with ``infomax train`` for the
same wall time on this machine, then ``infomax eval`` its exported encoder (weighted 200-NN and
1-NN and the linear probe on the full train/test splits).

    python bench/ablations.py --data fmnist --minutes 3                 # every variant
    python bench/ablations.py --data fmnist --minutes 3 --only ref dim_l   # some of them
    python bench/ablations.py --list

A fixed budget rather than a fixed number of epochs: on a 2-core machine the question a user has
is "what is best in the time I have", and variants differ several-fold in speed (all-pairs
negatives with a concat critic run ~20x slower than one negative). Results are appended to the
JSON file after every variant, so an interrupted sweep resumes where it stopped (--redo reruns).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from machine import cpu_name  # noqa: E402 (bench/machine.py; bench/ is on sys.path when a script here runs)

DIM_L = ["--model.alpha", "0", "--model.beta", "1"]
INFONCE = ["--model.global_estimator", "infonce", "--model.local_estimator", "infonce"]
ALL_DOT = ["--model.negatives", "all", "--model.critic", "dot"]
ALL_COS = ["--model.negatives", "all", "--model.critic", "cosine"]
VIEWS = ["--model.views", "2", "--model.augment", "crop_flip"]
PUSH = ["--data.batch_size", "128", "--model.lr_schedule", "cosine"]
GLOBAL = ["--model.alpha", "1", "--model.beta", "0"]  # global term only, weight 1


def two_views(
    augment: str, width: int, global_width: int | None = None, terms: list[str] = GLOBAL, pool: str | None = None
) -> list[str]:
    """The push recipes: two views, InfoNCE over all pairs, cosine critic, batch 128, cosine lr, an
    encoder of base width ``width`` (and global blocks of ``global_width`` channels, and the code
    head's ``pool``)."""
    arch = {"base_width": width, **({"global_width": global_width} if global_width else {}), **({"pool": pool} if pool else {})}
    return (
        terms
        + INFONCE
        + ALL_COS
        + PUSH
        + ["--model.views", "2", "--model.augment", augment, "--model.arch_kwargs", json.dumps(arch)]
    )


# name -> (what it changes against the reference recipe, extra `infomax train` arguments)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "ref": ("reference recipe: global + local, JSD, one negative, KL prior, concat critic", []),
    "global_only": ("global term only (beta 0)", ["--model.beta", "0"]),
    "local_only": ("local term only (alpha 0)", ["--model.alpha", "0"]),
    "no_prior": ("prior off (gamma 0)", ["--model.gamma", "0"]),
    "infonce": ("InfoNCE for both terms (one negative)", INFONCE),
    "dv": ("Donsker-Varadhan for both terms (one negative)", ["--model.global_estimator", "dv", "--model.local_estimator", "dv"]),
    "dot_one": ("dot critic, JSD, one negative", ["--model.critic", "dot"]),
    "dot_all": ("dot critic, JSD, all-pairs negatives", ALL_DOT),
    "dim_l": ("DIM(L): local only, InfoNCE, all-pairs, dot critic", DIM_L + INFONCE + ALL_DOT),
    "dim_l_cos": ("DIM(L) with the cosine critic (T 0.1)", DIM_L + INFONCE + ALL_COS),
    "views_global_cos": (
        "two crop+flip views, global only, InfoNCE all-pairs, cosine critic (SimCLR-like)",
        GLOBAL + INFONCE + ALL_COS + VIEWS,
    ),
    "views_both_cos": (
        "two crop+flip views, global + local across views, InfoNCE all-pairs, cosine (AMDIM-like)",
        ["--model.alpha", "1", "--model.beta", "1"] + INFONCE + ALL_COS + VIEWS,
    ),
    "views_local_cos": (
        "two crop+flip views, local across views only, InfoNCE all-pairs, cosine",
        DIM_L + INFONCE + ALL_COS + VIEWS,
    ),
    # The push for a CPU budget: narrower encoders buy more epochs (images in 3 minutes on cpu2, two
    # views: base width 64 60k, 32 159k, 16 327k), the cosine schedule anneals within the time budget.
    "push_w32": ("SimCLR-like (views_global_cos), base width 32, batch 128, cosine lr", two_views("crop_flip", 32)),
    "push_w16": ("SimCLR-like (views_global_cos), base width 16, batch 128, cosine lr", two_views("crop_flip", 16)),
    "push_w16_jitter": ("push_w16 with brightness/contrast jitter (augment simclr)", two_views("simclr", 16)),
    "push_w16_b256": ("push_w16 with batch 256", two_views("crop_flip", 16) + ["--data.batch_size", "256"]),
    "push_dim_l_w32": (
        "DIM(L) (dim_l), base width 32, batch 128, cosine lr",
        DIM_L + INFONCE + ALL_DOT + PUSH + ["--model.arch_kwargs", '{"base_width": 32}'],
    ),
    "push_dim_l_w16": (
        "DIM(L) (dim_l), base width 16, batch 128, cosine lr",
        DIM_L + INFONCE + ALL_DOT + PUSH + ["--model.arch_kwargs", '{"base_width": 16}'],
    ),
    "push_w16_jitter_noprior": (
        "push_w16_jitter without the prior (gamma 0)",
        two_views("simclr", 16, terms=GLOBAL + ["--model.gamma", "0"]),
    ),
    "push_w32_jitter": ("push_w16_jitter with base width 32", two_views("simclr", 32)),
    "push_w16_jitter_both": (
        "push_w16_jitter plus the local term across views (alpha 1, beta 1)",
        two_views("simclr", 16, terms=["--model.alpha", "1", "--model.beta", "1"]),
    ),
    "push_w16_jitter_g128": (
        "push_w16_jitter with 128-channel global blocks (a 128-d pooled vector instead of 64-d)",
        two_views("simclr", 16, 128),
    ),
    "push_w16_jitter_g256": (
        "push_w16_jitter with 256-channel global blocks (a 256-d pooled vector)",
        two_views("simclr", 16, 256),
    ),
    "push_w16_jitter_g128_avg": (
        "push_w16_jitter_g128 with global average pooling instead of max",
        two_views("simclr", 16, 128, pool="avg"),
    ),
    "push_w16_jitter_g128_flat": (
        "push_w16_jitter_g128 with the flattened 4x4x128 map as the head's input (keeps where features fire)",
        two_views("simclr", 16, 128, pool="flatten"),
    ),
    "push_w16_jitter_t02": (
        "push_w16_jitter with critic temperature 0.2",
        two_views("simclr", 16) + ["--model.critic_temperature", "0.2"],
    ),
}

CONFIGS = {"cifar10": "training/configs/cifar10.yaml", "fmnist": "training/configs/fmnist.yaml"}


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def _training_progress(run_root: Path) -> dict:
    """Epochs, steps and the online k-NN curve from the newest run's metrics.csv (steps: the last
    logged step, i.e. to within the logging interval of 50 when the budget ends mid-epoch)."""
    files = sorted(run_root.glob("infomax/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        return {}
    steps, knn = 0, []
    with files[-1].open() as f:
        for row in csv.DictReader(f):
            if row.get("step"):
                steps = max(steps, int(row["step"]))
            if row.get("val/knn_top1"):
                knn.append(round(float(row["val/knn_top1"]), 4))
    return {"steps": steps + 1, "epochs_validated": len(knn), "online_knn": knn}


def run_variant(name: str, data: str, minutes: float, out: Path, probe: bool, extra: list[str]) -> dict:
    folder = out / data / name
    folder.mkdir(parents=True, exist_ok=True)
    budget = time.strftime("%H:%M:%S", time.gmtime(minutes * 60))
    train = [
        sys.executable,
        "-m",
        "infomax.cli",
        "train",
        "--config",
        CONFIGS[data],
        "--trainer.max_time",
        f"00:{budget}",
        "--trainer.max_epochs",
        "1000",
        "--trainer.default_root_dir",
        str(folder / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--export.dirpath",
        str(folder / "artifact"),
        *VARIANTS[name][1],
        *extra,
    ]
    train_s = _run(train, folder / "train.log")
    report = folder / "eval.json"
    evaluate = [
        sys.executable,
        "-m",
        "infomax.cli",
        "eval",
        "--model",
        str(folder / "artifact"),
        "--data",
        data,
        "--no-pixels",
        "--json",
        str(report),
    ] + ([] if probe else ["--no-probe"])
    _run(evaluate, folder / "eval.log")
    rep = json.loads(report.read_text())
    return {
        "variant": name,
        "what": VARIANTS[name][0],
        "train_args": VARIANTS[name][1] + extra,
        "train_wall_s": round(train_s, 1),
        **_training_progress(folder / "runs"),
        "eval": {k: v for k, v in rep["results"]["encoder"].items() if k != "probe"},
    }


def markdown_table(results: dict) -> str:
    lines = ["| variant | what it changes | steps | weighted 200-NN | 1-NN | linear probe |", "|---|---|---|---|---|---|"]
    runs = results["runs"]
    for name in [n for n in VARIANTS if n in runs] + [n for n in runs if n not in VARIANTS]:
        row = runs[name]
        ev = row.get("eval")
        if ev is None:
            lines.append(f"| `{name}` | {row['what']} | failed: {row.get('error', '?')} | | | |")
            continue
        probe = "-" if ev.get("probe_top1") is None else f"{ev['probe_top1']:.4f}"
        lines.append(
            f"| `{name}` | {row['what']} | {row.get('steps', '?'):,} | {ev['knn_top1']:.4f} | {ev['nn1_top1']:.4f} | {probe} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=sorted(CONFIGS), default="fmnist")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per variant (default 3)")
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the linear probe")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "ablations")
    p.add_argument("--redo", action="store_true", help="rerun variants already in the results file")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--table", action="store_true", help="print the results file as a markdown table and exit")
    p.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more `infomax train` arguments for every variant (last on the line)",
    )
    args = p.parse_args()
    if args.list:
        for name, (what, targs) in VARIANTS.items():
            print(f"{name:18s} {what}\n{'':18s} {' '.join(targs)}")
        return 0
    if args.minutes <= 0:
        p.error(f"--minutes {args.minutes}: must be > 0")
    results_file = args.out / f"{args.data}-{args.minutes:g}min.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}}
    if args.table:
        print(markdown_table(results))
        return 0
    results["machine"] = f"{cpu_name()}, {os.cpu_count()} cores"
    results["budget_minutes"] = args.minutes
    os.environ.setdefault("INFOMAX_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    for name in args.only or list(VARIANTS):
        if name in results["runs"] and not args.redo:
            print(f"{name}: already measured, skipped (--redo to rerun)")
            continue
        print(f"{name}: training {args.minutes:g} min ...", flush=True)
        try:
            row = run_variant(name, args.data, args.minutes, args.out, args.probe, args.extra)
        except RuntimeError as e:
            print(f"{name}: {e}", flush=True)
            row = {"variant": name, "what": VARIANTS[name][0], "error": str(e)}
        results["runs"][name] = row
        args.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2))
        ev = row.get("eval", {})
        print(
            f"{name}: knn {ev.get('knn_top1')} 1-nn {ev.get('nn1_top1')} probe {ev.get('probe_top1')} steps {row.get('steps')}",
            flush=True,
        )
    print(f"results: {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
