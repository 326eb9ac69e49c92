"""``bench/pair_rows.py``: a comparison table's rows read from what ``bench/train_eval.sh`` leaves
(the exported artifact's record, the run's logs, the two eval reports). The files are written here
with chosen numbers, so every expected cell follows from them by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def pair_rows(bench_script):
    return bench_script("pair_rows")


def _figures(knn: float, nn1: float, p10: float, probe: float | None) -> dict:
    return {"knn_top1": knn, "nn1_top1": nn1, "p10": p10, "probe_top1": probe, "dim": 8}


def _write_run(
    root: Path, name: str, tb_events, *, steps: int, per_epoch: int, exported: int, knn: list, mu, local, white
) -> None:
    """What train_eval.sh NAME leaves under root: artifacts/NAME/encoder.json, runs/NAME's
    version folder (events and metrics.csv), out/eval/NAME.json and NAME-white.json."""
    (root / "artifacts" / name).mkdir(parents=True)
    (root / "artifacts" / name / "encoder.json").write_text(json.dumps({"steps": steps, "checkpoint_epochs": exported}))
    version = tb_events(root / "runs" / name / "infomax" / "version_0", [(m, "val/knn_top1", v) for m, v in knn])
    # Training rows every 50 steps, then the first validation at the last step of epoch 0.
    header = "epoch,step,train/loss,val/knn_top1\n"
    rows = "".join(f"0,{s},-1.0,\n" for s in range(49, per_epoch, 50)) + f"0,{per_epoch - 1},,0.3\n1,{per_epoch + 48},-2.0,\n"
    (version / "metrics.csv").write_text(header + rows)
    (root / "out" / "eval").mkdir(parents=True, exist_ok=True)
    report = {"results": {"encoder": _figures(*mu), "local": _figures(*local)}}
    (root / "out" / "eval" / f"{name}.json").write_text(json.dumps(report))
    (root / "out" / "eval" / f"{name}-white.json").write_text(json.dumps({"results": {"encoder": _figures(*white, None)}}))


def test_rows_hold_each_runs_figures_with_the_best_of_each_in_bold(pair_rows, tb_events, tmp_path, capsys):
    _write_run(
        tmp_path, "pa", tb_events, steps=1053, per_epoch=351, exported=2,
        knn=[(10, 0.40), (25, 0.50)],
        mu=(0.58, 0.53, 0.46, 0.61), local=(0.57, 0.60, 0.50, 0.70), white=(0.71, 0.61, 0.50),
    )  # fmt: skip
    _write_run(
        tmp_path, "pb", tb_events, steps=12_289, per_epoch=351, exported=34,
        knn=[(5, 0.45), (15, 0.48), (28, 0.49)],
        mu=(0.59, 0.53, 0.47, 0.60), local=(0.55, 0.58, 0.48, 0.66), white=(0.69, 0.60, 0.51),
    )  # fmt: skip
    assert pair_rows.main(["recipe=pa", "pb", "--at", "12", "30", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | steps (epochs; exported: the Nth) | online k-NN at 12 / 30 min | mu:")
    assert len(lines) == 4
    # pa: 1,053 steps of 351 = 3 epochs; its 2nd epoch exported; k-NN at 12 is minute 10's, at 30
    # minute 25's. pb: 12,289 / 351 = 35.01 epochs; at 12 minute 5's, at 30 minute 28's. Bold: the
    # higher of each figure, both where they tie (mu 1-NN 0.53).
    assert lines[2] == (
        "| recipe | 1,053 (3.0; exported: 2nd) | 0.400 / **0.500** "
        "| 0.5800 / **0.5300** / 0.4600 / **0.6100** | **0.5700** / **0.6000** / **0.5000** / **0.7000** "
        "| **0.7100** / **0.6100** / 0.5000 |"
    )
    assert lines[3] == (
        "| pb | 12,289 (35.0; exported: 34th) | **0.450** / 0.490 "
        "| **0.5900** / **0.5300** / **0.4700** / 0.6000 | 0.5500 / 0.5800 / 0.4800 / 0.6600 "
        "| 0.6900 / 0.6000 / **0.5100** |"
    )


def test_a_resumed_run_reads_the_epoch_length_from_its_rows_before_the_resume(pair_rows, tb_events, tmp_path, capsys):
    figures = {"mu": (0.5, 0.5, 0.5, 0.5), "local": (0.5, 0.5, 0.5, 0.5), "white": (0.5, 0.5, 0.5)}
    _write_run(tmp_path, "re", tb_events, steps=1000, per_epoch=100, exported=9, knn=[(1, 0.5)], **figures)
    # infomax train --ckpt_path last set epoch 0's rows aside as metrics.part0.csv; the resumed
    # part's first validation (end of epoch 4, step 499) is not an epoch's length.
    version = tmp_path / "runs" / "re" / "infomax" / "version_0"
    (version / "metrics.csv").rename(version / "metrics.part0.csv")
    (version / "metrics.csv").write_text("epoch,step,train/loss,val/knn_top1\n4,449,-1.0,\n4,499,,0.4\n")
    assert pair_rows.main(["re", "--at", "1", "--root", str(tmp_path)]) == 0
    assert "| re | 1,000 (10.0; exported: 9th) |" in capsys.readouterr().out


def test_ordinals(pair_rows):
    assert [pair_rows.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 36, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "36th", "101st", "111th",
    ]  # fmt: skip


def test_refusals_name_the_missing_file_and_what_makes_it(pair_rows, tb_events, tmp_path, capsys):
    figures = {"mu": (0.5, 0.5, 0.5, 0.5), "local": (0.5, 0.5, 0.5, 0.5), "white": (0.5, 0.5, 0.5)}
    _write_run(tmp_path, "ok", tb_events, steps=100, per_epoch=50, exported=1, knn=[(1, 0.5)], **figures)
    _write_run(tmp_path, "nolocal", tb_events, steps=100, per_epoch=50, exported=1, knn=[(1, 0.5)], **figures)
    report = tmp_path / "out" / "eval" / "nolocal.json"
    report.write_text(json.dumps({"results": {"encoder": _figures(0.5, 0.5, 0.5, 0.5)}}))
    _write_run(tmp_path, "nosteps", tb_events, steps=100, per_epoch=50, exported=1, knn=[(1, 0.5)], **figures)
    (tmp_path / "artifacts" / "nosteps" / "encoder.json").write_text(json.dumps({"checkpoint_epochs": 1}))
    _write_run(tmp_path, "cut", tb_events, steps=100, per_epoch=50, exported=1, knn=[(1, 0.5)], **figures)
    (tmp_path / "out" / "eval" / "cut-white.json").write_text('{"results": ')
    _write_run(tmp_path, "noval", tb_events, steps=100, per_epoch=50, exported=1, knn=[(1, 0.5)], **figures)
    (tmp_path / "runs" / "noval" / "infomax" / "version_0" / "metrics.csv").write_text("epoch,step,train/loss\n0,49,-1.0\n")
    cases = [
        (["x=runs/ok"], "no '/'"),
        (["ok", "ok"], "'ok' is given twice"),
        (["missing"], "artifacts/missing/encoder.json: not found (the artifact infomax train exported)"),
        (["nolocal"], "out/eval/nolocal.json has no C(x) row: it was evaluated without --local"),
        (["nosteps"], "records no steps: export it with infomax train"),
        (["cut"], "cut-white.json: not JSON"),
        (["noval"], "metrics.csv: no validation row yet"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            pair_rows.main([*argv, "--root", str(tmp_path)])
        assert exit_.value.code == 2, argv
        assert message in capsys.readouterr().err, argv
