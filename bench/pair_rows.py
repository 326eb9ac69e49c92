"""The rows of a budgeted comparison table (docs/BENCHMARKS.md, issue 14 item 2), read from what
``bench/train_eval.sh NAME CORE ...`` left behind, so that no figure is copied by hand:

    python bench/pair_rows.py "recipe=pd150b" "the prior off (gamma 0)=pnp150" --at 30 60 90 120 150

Each run is LABEL=NAME (or NAME alone, its own label). Read, relative to the working directory
(the repository root, where train_eval.sh writes):

- ``artifacts/NAME/encoder.json``: steps trained, and the epoch whose checkpoint was exported;
- ``runs/NAME``: the steps of one epoch (the first validation's step in ``metrics.csv``) and the
  online k-NN at each minute of ``--at`` (the TensorBoard events, as ``bench/knn_minutes.py``);
- ``out/eval/NAME.json`` (mu and C(x), with the probe) and ``out/eval/NAME-white.json`` (C(x)
  whitened to 256 dimensions, what ``models/cifar10`` served until 2026-12-02, kept for every row).

Prints the Markdown table, one row per run, the columns of the item 2 tables: steps (epochs;
exported: the Nth), online k-NN at each mark, then weighted k-NN / 1-NN / P@10 (/ linear probe)
of mu, of C(x) and of the whitened C(x). The best value of each figure among the runs is in bold.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from knn_minutes import at, knn_curve, version_folder  # bench/knn_minutes.py (bench/ is on sys.path)
from loss_curves import metrics_files

FIGURES = ("knn_top1", "nn1_top1", "p10", "probe_top1")


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found ({what}); run bench/train_eval.sh for this name first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); was its step interrupted? see out/eval/progress.log") from None


def steps_per_epoch(version: Path) -> int:
    """The steps of one epoch: the run's first validation row is logged at the last step of epoch 0
    (steps count from 0). Read through loss_curves.metrics_files, so a resumed run's rows before
    the resume (metrics.partN.csv) come first, as they were logged."""
    paths = metrics_files(version)
    if not paths:
        raise ValueError(f"{version}/metrics.csv: not found; give a run trained with the CSV logger (infomax train's default)")
    for path in paths:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("val/knn_top1"):
                    return int(row["step"]) + 1
    raise ValueError(f"{paths[-1]}: no validation row yet; the steps of an epoch are read from the first one")


def run_figures(name: str, root: Path, marks: list[float]) -> dict:
    """What one row shows, as numbers (None where a figure was not measured)."""
    enc = _read_json(root / "artifacts" / name / "encoder.json", "the artifact infomax train exported")
    version = version_folder(root / "runs" / name)
    curve, _ = knn_curve(version)
    evals = _read_json(root / "out" / "eval" / f"{name}.json", "infomax eval --local of the artifact")["results"]
    white = _read_json(root / "out" / "eval" / f"{name}-white.json", "infomax eval of the whitened artifact")["results"]
    if "local" not in evals:
        raise ValueError(f"out/eval/{name}.json has no C(x) row: it was evaluated without --local")
    if not isinstance(enc.get("steps"), int):
        raise ValueError(f"artifacts/{name}/encoder.json records no steps: export it with infomax train, not infomax export")
    return {
        "steps": enc["steps"],
        "epochs": enc["steps"] / steps_per_epoch(version),
        "exported": int(enc.get("checkpoint_epochs", 0)) or None,
        "online": [at(curve, m) for m in marks],
        "mu": [evals["encoder"].get(k) for k in FIGURES],
        "local": [evals["local"].get(k) for k in FIGURES],
        "white": [white["encoder"].get(k) for k in FIGURES[:3]],
    }


def table(runs: dict[str, dict], marks: list[float]) -> str:
    """One Markdown row per run; in each column of figures the highest value is bold (all its ties)."""

    def cells(key: str, fmt: str) -> list[list[str]]:
        columns = list(zip(*(r[key] for r in runs.values())))
        best = [max((v for v in col if v is not None), default=None) for col in columns]

        def cell(v: float | None, b: float | None) -> str:
            if v is None:
                return "-"
            text = f"{v:{fmt}}"
            return f"**{text}**" if len(runs) > 1 and text == f"{b:{fmt}}" else text

        return [[cell(v, b) for v, b in zip(r[key], best)] for r in runs.values()]

    marks_txt = " / ".join(f"{m:g}" for m in marks)
    head = [
        "run",
        "steps (epochs; exported: the Nth)",
        f"online k-NN at {marks_txt} min",
        "mu: weighted 200-NN / 1-NN / P@10 / probe",
        "C(x): weighted 200-NN / 1-NN / P@10 / probe",
        "C(x) whitened to 256: weighted 200-NN / 1-NN / P@10",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    columns = {key: cells(key, fmt) for key, fmt in (("online", ".3f"), ("mu", ".4f"), ("local", ".4f"), ("white", ".4f"))}
    for i, (label, r) in enumerate(runs.items()):
        exported = f"; exported: {ordinal(r['exported'])}" if r["exported"] else ""
        row = [label, f"{r['steps']:,} ({r['epochs']:.1f}{exported})", *(" / ".join(columns[k][i]) for k in columns)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=NAME or NAME: a name given to bench/train_eval.sh")
    p.add_argument("--at", type=float, nargs="+", default=[30, 60, 90, 120, 150], help="minutes to read the online k-NN at")
    p.add_argument("--root", type=Path, default=Path("."), help="where runs/, artifacts/ and out/eval/ are (default: here)")
    a = p.parse_args(argv)
    runs: dict[str, dict] = {}
    for spec in a.runs:
        label, sep, name = spec.rpartition("=")
        label = label if sep else name
        if not label or not name or "/" in name:
            p.error(f"{spec!r}: give each run as LABEL=NAME or NAME, NAME as given to bench/train_eval.sh (no '/')")
        if label in runs:
            p.error(f"{label!r} is given twice: give each run its own label")
        try:
            runs[label] = run_figures(name, a.root, a.at)
        except ValueError as e:
            p.error(str(e))
    print(table(runs, a.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
