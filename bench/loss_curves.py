"""Loss curves of a training run, from the ``metrics.csv`` Lightning's CSV logger writes
(``<default_root_dir>/infomax/version_N/metrics.csv``): one figure of three panels (loss, the MI
estimates and the prior term, the online k-NN accuracy), an SVG or a PNG by the suffix of --out, and
a Markdown table of some epochs.

    python bench/loss_curves.py runs/infomax/version_0 --out docs/img/ref50-curves.svg --every 5

Training rows are logged every few steps; each epoch's training value here is the mean of its
rows (the curve a reader wants is per epoch, not the step-to-step noise of one batch). Validation
values are logged once an epoch. The figure is drawn with matplotlib (the ``test`` extra installs
it); an SVG is the same bytes each time the same data is drawn, its text kept as text.

The figures under docs/img (cifar10-cpu80-curves.svg, cifar10-cpu-dim-curves.svg,
cifar10-ref50-curves.svg) were written by this script's earlier hand-written SVG drawer, from run
folders that are not kept; to draw them again, train the run docs/BENCHMARKS.md gives for each and
run this script on its version folder with the --out that page names.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib itself is imported when a figure is drawn
    from matplotlib.lines import Line2D

# (panel title, [(column, label, colour, dashed)])
PANELS = [
    (
        "loss: -alpha MI_global - beta MI_local + gamma KL",
        [
            ("train/loss", "train", "#1f77b4", False),
            ("val/loss", "validation", "#1f77b4", True),
        ],
    ),
    (
        "MI estimates and prior KL",
        [
            ("train/global_mi", "global MI, train", "#d62728", False),
            ("val/global_mi", "global MI, val", "#d62728", True),
            ("train/local_mi", "local MI, train", "#2ca02c", False),
            ("val/local_mi", "local MI, val", "#2ca02c", True),
            ("train/prior", "prior KL, train", "#9467bd", False),
        ],
    ),
    (
        "online weighted k-NN top-1 (validation)",
        [
            ("val/knn_top1", "k-NN top-1", "#ff7f0e", False),
        ],
    ),
]


def metrics_files(path: Path) -> list[Path]:
    """A metrics.csv, or a run folder: its metrics.partN.csv (the rows before each resume, set aside
    by ``infomax train --ckpt_path last``) in order, then metrics.csv."""
    if path.is_dir():
        parts = sorted(path.glob("metrics.part*.csv"), key=lambda q: int(q.stem.removeprefix("metrics.part") or 0))
        return [*parts, *([path / "metrics.csv"] if (path / "metrics.csv").is_file() else [])]
    return [path] if path.is_file() else []


def per_epoch(paths: list[Path]) -> dict[str, dict[int, float]]:
    """column -> epoch -> mean of the column's non-empty values in that epoch (a resumed epoch's
    rows from both parts together)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = int(row["epoch"])
                for column, value in row.items():
                    if column in ("epoch", "step") or value in ("", None):
                        continue
                    v = float(value)
                    if math.isfinite(v):
                        sums[column][epoch].append(v)
    return {c: {e: sum(vs) / len(vs) for e, vs in sorted(by_epoch.items())} for c, by_epoch in sums.items()}


def draw(curves: dict[str, dict[int, float]], title: str, out: Path) -> list[Line2D]:
    """Draw the three panels of PANELS into ``out`` (an ``.svg`` or a ``.png``, by its suffix) and
    return the curves drawn: one line per logged column, each an SVG group ``id="curve-<column>"``
    (its / as -); a panel none of whose columns was logged says "not logged". matplotlib with an Agg
    canvas attached to this figure only (pyplot and its global backend are left alone), imported only
    when a figure is drawn. An SVG is the same bytes each time the same data is drawn (a fixed
    ``svg.hashsalt``, no date) and keeps its text as text."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise ValueError(f"{out}: draws .svg or .png, not {out.suffix or 'no suffix'}")
    drawn: list[Line2D] = []
    with matplotlib.rc_context({"svg.hashsalt": "infomax-loss-curves", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(13, 4.6), layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(title, fontsize=12)
        for ax, (panel_title, series) in zip(fig.subplots(1, len(PANELS)), PANELS):
            ax.set_title(panel_title, fontweight="bold", fontsize=9)
            present = [(c, label, colour, dashed) for c, label, colour, dashed in series if curves.get(c)]
            if not present:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for c, label, colour, dashed in present:
                epochs, values = zip(*sorted(curves[c].items()))
                (line,) = ax.plot(
                    epochs,
                    values,
                    color=colour,
                    linewidth=1.5,
                    linestyle="--" if dashed else "-",
                    marker="o" if len(epochs) == 1 else None,
                    label=label,
                    gid="curve-" + c.replace("/", "-"),
                )  # the SVG's <g id="curve-train-loss">
                drawn.append(line)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, color="#ddd", linewidth=0.8)
            # The legend under the panel, clear of the curves.
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=8)
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(out, format=fmt, metadata=metadata, dpi=150 if fmt == "png" else "figure")
    return drawn


def table(curves: dict[str, dict[int, float]], every: int) -> str:
    columns = [
        c for c in ("train/loss", "train/global_mi", "train/local_mi", "train/prior", "val/loss", "val/knn_top1") if c in curves
    ]
    epochs = sorted({e for c in columns for e in curves[c]})
    shown = [e for e in epochs if e % every == every - 1 or e == epochs[0] or e == epochs[-1]]
    lines = ["| epoch | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for e in shown:
        cells = [f"{curves[c][e]:.4f}" if e in curves[c] else "" for c in columns]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", type=Path, help="a run folder (runs/infomax/version_N) or its metrics.csv")
    p.add_argument("--out", type=Path, required=True, help="the figure to write: .svg or .png")
    p.add_argument("--title", default=None, help="figure title (default: the metrics path)")
    p.add_argument("--every", type=int, default=5, help="table: every N-th epoch, plus the first and last")
    a = p.parse_args(argv)
    files = metrics_files(a.metrics)
    if not files:
        p.error(f"no metrics at {a.metrics}: give a run folder (<default_root_dir>/infomax/version_N) or its metrics.csv")
    curves = per_epoch(files)
    if not curves:
        p.error(f"{a.metrics} holds no logged values")
    if a.out.suffix.lower() not in (".svg", ".png"):
        p.error(f"--out {a.out}: give a .svg or a .png")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    draw(curves, a.title or str(a.metrics), a.out)
    print(table(curves, max(1, a.every)))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
