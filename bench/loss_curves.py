"""Loss curves of a training run, from the ``metrics.csv`` Lightning's CSV logger writes
(``<default_root_dir>/infomax/version_N/metrics.csv``): one SVG of three panels (loss, the MI
estimates and the prior term, the online k-NN accuracy) and a Markdown table of some epochs.

    python bench/loss_curves.py runs/infomax/version_0 --out docs/img/ref50-curves.svg --every 5

Training rows are logged every few steps; each epoch's training value here is the mean of its
rows (the curve a reader wants is per epoch, not the step-to-step noise of one batch). Validation
values are logged once an epoch. No plotting library: the SVG is written by hand, so the script
runs in the project's environment and its output diffs as text.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import escape

# (panel title, [(column, label, colour, dashed)])
PANELS = [
    ("loss: -alpha MI_global - beta MI_local + gamma KL", [
        ("train/loss", "train", "#1f77b4", False),
        ("val/loss", "validation", "#1f77b4", True),
    ]),
    ("MI estimates and prior KL", [
        ("train/global_mi", "global MI, train", "#d62728", False),
        ("val/global_mi", "global MI, val", "#d62728", True),
        ("train/local_mi", "local MI, train", "#2ca02c", False),
        ("val/local_mi", "local MI, val", "#2ca02c", True),
        ("train/prior", "prior KL, train", "#9467bd", False),
    ]),
    ("online weighted k-NN top-1 (validation)", [
        ("val/knn_top1", "k-NN top-1", "#ff7f0e", False),
    ]),
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


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _panel(x0: float, y0: float, w: float, h: float, title: str, series, curves) -> list[str]:
    present = [(c, label, colour, dashed) for c, label, colour, dashed in series if curves.get(c)]
    out = [f'<text x="{x0 + w / 2:.1f}" y="{y0 - 10:.1f}" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    if not present:
        return out + [f'<text x="{x0 + w / 2:.1f}" y="{y0 + h / 2:.1f}" text-anchor="middle">not logged</text>']
    xs = [e for c, *_ in present for e in curves[c]]
    ys = [v for c, *_ in present for v in curves[c].values()]
    ex0, ex1 = min(xs), max(max(xs), min(xs) + 1)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def px(e: float) -> float:
        return x0 + (e - ex0) / (ex1 - ex0) * w

    def py(v: float) -> float:
        return y0 + h - (v - lo) / (hi - lo) * h

    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>')
    for t in _ticks(ex0, ex1):
        out.append(f'<text x="{px(t):.1f}" y="{y0 + h + 14:.1f}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{x0 + w / 2:.1f}" y="{y0 + h + 30:.1f}" text-anchor="middle">epoch</text>')
    for i, (c, label, colour, dashed) in enumerate(present):
        points = " ".join(f"{px(e):.1f},{py(v):.1f}" for e, v in curves[c].items())
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        ly = y0 + h + 48 + 14 * i  # the legend under the panel, clear of the curves
        out.append(f'<line x1="{x0 + 8}" x2="{x0 + 28}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                   f'stroke-width="1.5"{dash}/>')
        out.append(f'<text x="{x0 + 32}" y="{ly}">{escape(label)}</text>')
    return out


def svg(curves: dict[str, dict[int, float]], title: str) -> str:
    w, h, left, gap, top = 330, 240, 60, 80, 56
    width = left + len(PANELS) * (w + gap) - gap + 20
    body = [f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i, (panel_title, series) in enumerate(PANELS):
        body += _panel(left + i * (w + gap), top, w, h, panel_title, series, curves)
    legend = 14 * max(len(series) for _, series in PANELS)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + h + 48 + legend}" '
            f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def table(curves: dict[str, dict[int, float]], every: int) -> str:
    columns = [c for c in ("train/loss", "train/global_mi", "train/local_mi", "train/prior", "val/loss",
                           "val/knn_top1") if c in curves]
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
    p.add_argument("--out", type=Path, required=True, help="SVG to write")
    p.add_argument("--title", default=None, help="figure title (default: the metrics path)")
    p.add_argument("--every", type=int, default=5, help="table: every N-th epoch, plus the first and last")
    a = p.parse_args(argv)
    files = metrics_files(a.metrics)
    if not files:
        p.error(f"no metrics at {a.metrics}: give a run folder (<default_root_dir>/infomax/version_N) or its metrics.csv")
    curves = per_epoch(files)
    if not curves:
        p.error(f"{a.metrics} holds no logged values")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(svg(curves, a.title or str(a.metrics)))
    print(table(curves, max(1, a.every)))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
