"""Online k-NN against wall-clock minutes, several training runs on one figure: the learning curve a
time-budgeted comparison is judged by (issue 14: every row the same minutes, not the same epochs).

    python bench/knn_minutes.py "global + prior=runs/pg150" "global + local + prior=runs/pd150" \\
        --out docs/img/cifar10-pair150-knn.svg --at 15 30 60 90 120 150

Each run is LABEL=PATH, PATH a ``--trainer.default_root_dir`` (its newest ``infomax/version_N`` is
read) or a version folder. The times come from the TensorBoard events Lightning's logger writes
beside ``metrics.csv`` (the CSV has no clock): minute 0 is the logger's first event, written when
training starts, and each point is a validation's ``val/knn_top1`` at the wall time it was logged.
A resumed run's events count from its first start, the pause included.

Prints a Markdown table: per run, the online k-NN of the last validation at or before each mark
(``--at``, minutes), the best and the minute it was reached, and the number of validations. The
figure is an SVG or a PNG by the suffix of ``--out`` (matplotlib, the ``test`` extra); an SVG is
the same bytes each time the same data is drawn.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
TAG = "val/knn_top1"


def version_folder(path: Path) -> Path:
    """The folder holding the run's events: ``path`` itself when it holds events, else the highest
    ``path/infomax/version_N``; ValueError naming what was looked for."""
    if any(path.glob("events.out.tfevents.*")):
        return path
    versions = [p for p in (path / "infomax").glob("version_*") if re.fullmatch(r"version_\d+", p.name)]
    if not versions:
        raise ValueError(
            f"{path}: no TensorBoard events here nor in {path / 'infomax'}/version_N; give a run's "
            "--trainer.default_root_dir or its version folder"
        )
    return max(versions, key=lambda p: int(p.name.removeprefix("version_")))


def knn_curve(folder: Path) -> tuple[list[tuple[float, float]], float]:
    """[(minutes since the logger's first event, online k-NN)] of one version folder, in order, and
    the minute of its last logged value of any kind (where the run stopped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    if TAG not in events.Tags()["scalars"]:
        raise ValueError(
            f"{folder}: no {TAG} logged yet (online k-NN is logged after each validation, when the "
            "data module has a validation split)"
        )
    start = events.FirstEventTimestamp()
    end = max(events.Scalars(tag)[-1].wall_time for tag in events.Tags()["scalars"])
    return sorted(((s.wall_time - start) / 60.0, float(s.value)) for s in events.Scalars(TAG)), (end - start) / 60.0


def at(curve: list[tuple[float, float]], minute: float) -> float | None:
    """The value of the last validation logged at or before ``minute``; None before the first."""
    seen = [v for m, v in curve if m <= minute]
    return seen[-1] if seen else None


Curves = dict[str, tuple[list[tuple[float, float]], float]]  # label -> (curve, minute it stopped)


def table(curves: Curves, marks: list[float]) -> str:
    """A mark before a run's first validation reads "-"; one more than a validation interval (the
    median time between two) after the run stopped reads "stopped": a run that ended at minute 70
    did not score its last value at minute 150, while a 150-minute run whose last row was logged at
    minute 149.9 is read at 150."""
    head = ["run", *[f"{m:g} min" for m in marks], "best (minute)", "validations"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, (curve, end) in curves.items():
        cells = [label]
        gaps = [b[0] - a[0] for a, b in zip(curve, curve[1:])]
        interval = statistics.median_high(gaps) if gaps else 0.0
        for m in marks:
            v = at(curve, m)
            cells.append("stopped" if m > end + interval else "-" if v is None else f"{v:.3f}")
        best_minute, best = max(curve, key=lambda mv: (mv[1], -mv[0]))  # the first time the best was reached
        cells += [f"{best:.3f} ({best_minute:.0f})", str(len(curve))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(curves: Curves, title: str, out: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise ValueError(f"{out}: draws .svg or .png, not {out.suffix or 'no suffix'}")
    with matplotlib.rc_context({"svg.hashsalt": "infomax-knn-minutes", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.set_title(title, fontsize=10)
        for i, (label, (curve, _)) in enumerate(curves.items()):
            minutes, values = zip(*curve)
            ax.plot(minutes, values, color=COLOURS[i % len(COLOURS)], linewidth=1.5, label=label, gid=f"run-{i}")
        ax.set_xlabel("minutes of training (wall clock)")
        ax.set_ylabel("online weighted k-NN top-1 (validation)")
        ax.grid(True, color="#ddd", linewidth=0.8)
        ax.legend(loc="lower right", frameon=False, fontsize=8)
        fig.savefig(out, format=fmt, metadata={"Date": None} if fmt == "svg" else {}, dpi=150 if fmt == "png" else "figure")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=PATH: a run's --trainer.default_root_dir or version folder")
    p.add_argument("--out", type=Path, default=None, help="the figure to write, .svg or .png (default: the table only)")
    p.add_argument("--title", default="online k-NN against minutes of training")
    p.add_argument("--at", type=float, nargs="+", default=[15, 30, 60, 90, 120, 150], help="table: minutes to read")
    a = p.parse_args(argv)
    if a.out is not None and a.out.suffix.lower() not in (".svg", ".png"):
        p.error(f"--out {a.out}: give a .svg or a .png")
    curves: Curves = {}
    for spec in a.runs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label or not path:
            p.error(f"{spec!r}: give each run as LABEL=PATH, e.g. 'global + prior=runs/pg150'")
        if label in curves:
            p.error(f"{label!r} is given twice: give each run its own label")
        try:
            curves[label] = knn_curve(version_folder(Path(path)))
        except ValueError as e:
            p.error(str(e))
    print(table(curves, a.at))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        draw(curves, a.title, a.out)
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
