"""``bench/loss_curves.py`` draws its figure with matplotlib: an SVG that parses, one line per
logged column (a named group each, a legend entry each), the same bytes when drawn again, and a
panel with nothing logged saying so. (Joining a resumed run's parts into the per-epoch table is
tests/test_promises.py's test_loss_curves_join_a_resumed_runs_parts.)"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def loss_curves(bench_script):
    return bench_script("loss_curves")


def _write(path: Path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _epoch(e: int, knn: bool = True) -> list[dict]:
    train = [
        {
            "epoch": e,
            "step": 10 * e + s,
            "train/loss": -1.0 - e - s / 10,
            "train/global_mi": 0.5 * e + s / 10,
            "train/local_mi": 0.3 * e,
            "train/prior": 0.1,
        }
        for s in (4, 9)
    ]
    val = {"epoch": e, "step": 10 * e + 9, "val/loss": -0.5 - e, "val/global_mi": 0.4 * e, "val/local_mi": 0.2 * e}
    return train + [{**val, **({"val/knn_top1": 0.2 + 0.1 * e} if knn else {})}]


def _run(root: Path, knn: bool = True) -> Path:
    """A run resumed once: metrics.part0.csv holds epochs 0-1, metrics.csv epochs 2-3."""
    run = root / "version_0"
    run.mkdir()
    _write(run / "metrics.part0.csv", _epoch(0, knn) + _epoch(1, knn))
    _write(run / "metrics.csv", _epoch(2, knn) + _epoch(3, knn))
    return run


def _texts(svg: Path) -> list[str]:
    return ["".join(t.itertext()).strip() for t in ET.parse(svg).getroot().iter(f"{SVG}text")]


def _curve_groups(svg: Path) -> list[str]:
    return [g.get("id", "") for g in ET.parse(svg).getroot().iter(f"{SVG}g") if g.get("id", "").startswith("curve-")]


def test_draws_one_line_per_logged_column_into_an_svg(tmp_path, loss_curves):
    run = _run(tmp_path)
    out = tmp_path / "figure" / "curves.svg"
    assert loss_curves.main([str(run), "--out", str(out), "--title", "a <resumed> run & co"]) == 0
    root = ET.parse(out).getroot()  # parses as XML, an <svg> root
    assert root.tag == f"{SVG}svg"
    columns = [c for _, series in loss_curves.PANELS for c, *_ in series]
    assert len(columns) == 8
    assert _curve_groups(out) == ["curve-" + c.replace("/", "-") for c in columns]
    texts = _texts(out)
    assert "a <resumed> run & co" in texts
    for panel_title, series in loss_curves.PANELS:
        assert panel_title in texts
        for _, label, *_ in series:
            assert texts.count(label) == 1, (label, texts)  # its legend entry

    # The lines the drawing returns: every column, with its epochs (both parts) and its epoch means.
    curves = loss_curves.per_epoch(loss_curves.metrics_files(run))
    lines = loss_curves.draw(curves, "again", tmp_path / "again.svg")
    assert [line.get_label() for line in lines] == [label for _, series in loss_curves.PANELS for _, label, *_ in series]
    by_label = {line.get_label(): line for line in lines}
    assert list(by_label["train"].get_xdata()) == [0, 1, 2, 3]
    assert list(by_label["train"].get_ydata()) == pytest.approx([-1.65 - e for e in range(4)])
    assert list(by_label["k-NN top-1"].get_ydata()) == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert by_label["validation"].get_linestyle() == "--" and by_label["train"].get_linestyle() == "-"


def test_svg_is_the_same_bytes_when_drawn_again_and_png_by_suffix(tmp_path, loss_curves):
    curves = loss_curves.per_epoch(loss_curves.metrics_files(_run(tmp_path)))
    loss_curves.draw(curves, "run", tmp_path / "a.svg")
    loss_curves.draw(curves, "run", tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    loss_curves.draw(curves, "run", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=".svg or .png"):
        loss_curves.draw(curves, "run", tmp_path / "c.pdf")


def test_a_panel_with_nothing_logged_says_so(tmp_path, loss_curves):
    out = tmp_path / "c.svg"
    assert loss_curves.main([str(_run(tmp_path, knn=False)), "--out", str(out)]) == 0
    assert "curve-val-knn_top1" not in _curve_groups(out)
    assert len(_curve_groups(out)) == 7
    texts = _texts(out)
    assert "not logged" in texts and "k-NN top-1" not in texts
