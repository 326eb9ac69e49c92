"""``bench/knn_minutes.py``: online k-NN read against the minutes a run had trained, from the
TensorBoard events Lightning writes. The events here are written record by record with chosen wall
times, so every expected cell of the table follows from the numbers below by hand."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def knn_minutes(bench_script):
    return bench_script("knn_minutes")


def _run(events, folder: Path, knn: list[tuple[float, float]], last_row: float) -> Path:
    """A run's events: validations (minute, k-NN), a training row half a minute after each, and the
    run's last row at ``last_row``."""
    rows = [(m, "val/knn_top1", v) for m, v in knn] + [(m + 0.5, "train/loss", -1.0) for m, _ in knn]
    return events(folder, sorted([*rows, (last_row, "train/loss", -2.0)]))


def test_table_reads_each_run_at_the_minutes_it_had_trained(knn_minutes, tb_events, tmp_path, capsys):
    # A root folder holding two versions: the newest (version_10, not version_9 by string order) is read.
    _run(tb_events, tmp_path / "a" / "infomax" / "version_9", [(5, 0.9)], last_row=6)
    _run(tb_events, tmp_path / "a" / "infomax" / "version_10", [(10, 0.30), (20, 0.50), (30, 0.45), (40, 0.50)], last_row=41)
    # A version folder given directly; it stopped at minute 25 (validations every 10 minutes).
    b = _run(tb_events, tmp_path / "b" / "version_0", [(5, 0.20), (15, 0.40), (25, 0.40)], last_row=25.5)
    code = knn_minutes.main([f"long=a={tmp_path / 'a'}", f"short={b}", "--at", "9", "15", "29", "36", "60"])
    assert code == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    # long (a label may hold '='): nothing yet at 9; at 15 the value of minute 10; at 29 minute 20's,
    # not minute 30's; 60 is more than an interval (10 min) past its last row at 41: stopped.
    # Best 0.50, first reached at minute 20; four validations.
    assert rows[0] == ["| long=a", "-", "0.300", "0.500", "0.450", "stopped", "0.500 (20)", "4 |"]
    # short: at 15 its validation of minute 15 (at or before the mark); 29 is within an interval of
    # its last row (25.5) and reads minute 25's; 36 is past it: stopped.
    assert rows[1] == ["| short", "0.200", "0.400", "0.400", "stopped", "stopped", "0.400 (15)", "3 |"]


def test_refusals_name_what_to_give(knn_minutes, tb_events, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_knn = tb_events(tmp_path / "noknn", [(1, "train/loss", -1.0)])
    run = _run(tb_events, tmp_path / "ok", [(1, 0.5)], last_row=2)
    cases = [
        ([str(run)], "give each run as LABEL=PATH"),
        ([f"x={empty}"], "no TensorBoard events here nor in"),
        ([f"x={no_knn}"], "no val/knn_top1 logged yet"),
        ([f"x={run}", f"x={run}"], "'x' is given twice"),
        ([f"x={run}", "--out", str(tmp_path / "k.pdf")], "give a .svg or a .png"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            knn_minutes.main(argv)
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_figure_draws_one_named_line_per_run_the_same_bytes_each_time(knn_minutes, tb_events, tmp_path):
    a = _run(tb_events, tmp_path / "a", [(2, 0.3), (4, 0.4)], last_row=5)
    b = _run(tb_events, tmp_path / "b", [(3, 0.2), (6, 0.5)], last_row=7)
    outs = [tmp_path / "one.svg", tmp_path / "two.svg"]
    for out in outs:
        assert knn_minutes.main([f"A={a}", f"B={b}", "--out", str(out)]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    root = ET.parse(outs[0]).getroot()
    groups = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {"run-0", "run-1"} <= groups and "run-2" not in groups
    text = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "A" in text and "B" in text and "minutes of training" in text
