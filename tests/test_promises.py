"""Promises of the README and docs that had no test: ``--ckpt_path last`` among several runs and
with none, ``infomax serve`` flags over ``INFOMAX_*`` variables (in the process and in its workers),
and ``bench/loss_curves.py`` joining a resumed run's parts."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_service import copy_index, index_template, serve  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "training" / "configs" / "cifar10.yaml")


# ------------------------------------------------------------------ --ckpt_path last


def _fake_run(root: Path, version: int, mtime: float) -> Path:
    run = root / "infomax" / f"version_{version}"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"checkpoint of version %d" % version)
    os.utime(last, (mtime, mtime))
    (run / "metrics.csv").write_text("epoch,val/knn_top1\n0,0.5\n")
    return run


def test_ckpt_path_last_resumes_the_run_written_last_among_several(tmp_path, data_dir, monkeypatch):
    """Three runs; the one whose last.ckpt was written last is version_1 (resumed after version_2
    was started): its checkpoint is the one resumed, its folder is logged into, and its metrics.csv
    is set aside, not overwritten."""
    from training.train import build_cli

    monkeypatch.setenv("INFOMAX_DATA_DIR", str(data_dir))
    runs = [_fake_run(tmp_path, v, mtime) for v, mtime in ((0, 1_000_000), (1, 3_000_000), (2, 2_000_000))]
    cli = build_cli(["--config", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
    assert cli.config["ckpt_path"] == str(runs[1] / "checkpoints" / "last.ckpt")
    assert {logger.version for logger in cli.trainer.loggers} == {1}
    assert (runs[1] / "metrics.part0.csv").read_text() == "epoch,val/knn_top1\n0,0.5\n"
    assert (runs[0] / "metrics.csv").is_file() and (runs[2] / "metrics.csv").is_file()  # untouched
    assert not (tmp_path / "infomax" / "version_3").exists()


def test_ckpt_path_last_without_any_run_fails_in_one_line(tmp_path, data_dir):
    env = {**os.environ, "INFOMAX_DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "infomax"),
            "train",
            "--config",
            CONFIG,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--ckpt_path",
            "last",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "--ckpt_path last: no last.ckpt under" in r.stderr and str(tmp_path / "infomax") in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------ flags over INFOMAX_* variables


def test_serve_flags_take_precedence_over_infomax_variables(index_template, tiny_artifact, tmp_path):
    folder = copy_index(index_template, tmp_path / "index")
    env = {
        "INFOMAX_MAX_K": "5",
        "INFOMAX_DEFAULT_K": "3",
        "INFOMAX_MAX_UPLOAD_BYTES": "123456",
        "INFOMAX_BATCHING": "false",
        "INFOMAX_INDEX": str(tmp_path / "nowhere"),
        "INFOMAX_READ_ONLY": "true",
    }
    # --max-k and --index given as flags: they win; the variables alone set the others
    with serve(
        ["--model", str(tiny_artifact), "--index", str(folder), "--max-k", "7", "--no-access-log"], tmp_path / "one.log", env=env
    ) as srv:
        info = httpx.get(srv.url + "/v1/info").json()
        assert (info["max_k"], info["max_upload_bytes"], info["batching"], info["read_only"]) == (7, 123456, False, True)
        assert info["items"] == len(index_template["pngs"])  # the flag's index, not INFOMAX_INDEX's
        assert httpx.post(srv.url + "/v1/search", json={"id": 1, "k": 7}).status_code == 200
        r = httpx.post(srv.url + "/v1/search", json={"id": 1, "k": 8})
        assert r.status_code == 422 and "from 1 to 7" in r.json()["detail"]
    # workers are separate processes built from the environment: the flags still win there
    with serve(
        [
            "--model",
            str(tiny_artifact),
            "--index",
            str(folder),
            "--max-k",
            "7",
            "--workers",
            "2",
            "--batching",
            "--no-access-log",
        ],
        tmp_path / "two.log",
        env=env,
    ) as srv:
        for _ in range(6):  # new connections, spread over the workers
            with httpx.Client(base_url=srv.url) as c:
                info = c.get("/v1/info").json()
            assert (info["max_k"], info["batching"], info["max_upload_bytes"]) == (7, True, 123456)


# ------------------------------------------------------------------ loss curves of a resumed run


def _write_metrics(path: Path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def test_loss_curves_join_a_resumed_runs_parts(tmp_path):
    """A run resumed twice: metrics.part0.csv (epochs 0-1), metrics.part1.csv (epoch 2) and
    metrics.csv (epoch 3), as `infomax train --ckpt_path last` leaves them. The per-epoch table
    holds every epoch, in order, with its own values (training rows: their epoch's mean)."""
    run = tmp_path / "version_0"
    run.mkdir()

    def epoch(e: int, losses: tuple[float, float], knn: float) -> list[dict]:
        return [
            {"epoch": e, "step": 10 * e + 4, "train/loss": losses[0]},
            {"epoch": e, "step": 10 * e + 9, "train/loss": losses[1]},
            {"epoch": e, "step": 10 * e + 9, "val/loss": losses[1] + 0.5, "val/knn_top1": knn},
        ]

    _write_metrics(run / "metrics.part0.csv", epoch(0, (-1.0, -2.0), 0.20) + epoch(1, (-2.0, -3.0), 0.30))
    _write_metrics(run / "metrics.part1.csv", epoch(2, (-3.0, -4.0), 0.40))
    _write_metrics(run / "metrics.csv", epoch(3, (-4.0, -5.0), 0.50))
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loss_curves.py"), str(run), "--out", str(tmp_path / "c.svg"), "--every", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    assert "<svg" in (tmp_path / "c.svg").read_text()
    header, _, *rows = [line.strip("|").split("|") for line in r.stdout.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header]
    table = [{c: cell.strip() for c, cell in zip(columns, row)} for row in rows]
    assert [int(t["epoch"]) for t in table] == [0, 1, 2, 3], r.stdout
    for e, t in enumerate(table):
        assert float(t["train/loss"]) == pytest.approx(-1.5 - e)  # the mean of the epoch's two rows
        assert float(t["val/loss"]) == pytest.approx(-1.5 - e)
        assert float(t["val/knn_top1"]) == pytest.approx(0.2 + 0.1 * e)
