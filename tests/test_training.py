"""The training module and the `infomax train` / `infomax export` commands, on real CIFAR-10 images."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from infomax import load_encoder
from infomax.data import CIFAR10, load_cifar10
from infomax.module import DeepInfoMax, NonFiniteLossError

INFOMAX = str(Path(sys.executable).parent / "infomax")
CONFIG = str(Path(__file__).parents[1] / "training" / "configs" / "cifar10.yaml")
# A short run: 256 train images, 128 for validation, a small k-NN bank, and a narrow encoder
# (8-16-32 channels, 16-channel global blocks): what these tests check does not depend on the
# width, and the reference one (64-128-256) made each run ~5x dearer (issue 14: suite time).
SMALL = [
    "--model.arch_kwargs",
    "{base_width: 8, global_width: 16}",
    "--data.limit_train",
    "256",
    "--data.val_size",
    "128",
    "--data.batch_size",
    "32",
    "--knn.k",
    "20",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


@pytest.fixture(autouse=True, scope="module")
def _data_env(data_dir):
    """The commands find the real data the way users' runs do: through INFOMAX_DATA_DIR."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFOMAX_DATA_DIR", str(data_dir))
        yield


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([INFOMAX, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_loss_decreases_over_a_few_dozen_steps_on_real_images(data_dir):
    torch.manual_seed(0)
    images, _ = load_cifar10(data_dir, "test")
    batches = images[:128].split(32)
    # A narrow encoder: the same objective learns as clearly (mean loss 2.90 -> 1.62 over 40 steps,
    # against 2.79 -> 1.40 at the reference width) at a quarter of the time.
    model = DeepInfoMax(z_dim=64, arch_kwargs={"base_width": 16, "global_width": 64})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        loss = model._losses((batches[step % len(batches)],)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.3, losses


class _PoisonAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                module.encoder.mu.weight.fill_(float("nan"))


def test_a_nonfinite_loss_stops_training_naming_the_step(data_dir):
    dm = CIFAR10(data_dir=str(data_dir), limit_train=128, val_size=64, batch_size=16)
    model = DeepInfoMax(z_dim=16)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_PoisonAt(3)],
        num_sanity_val_steps=0,
    )
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        trainer.fit(model, datamodule=dm)


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.elapsed: list[float] = []  # the run's Timer reading at each record, where it has one

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, pl.callbacks.Timer)), None)
        if timer is not None:
            self.elapsed.append(timer.time_elapsed())


def _fit_cosine(data_dir, **trainer_kwargs) -> _RecordLR:
    dm = CIFAR10(data_dir=str(data_dir), limit_train=64, val_size=0, batch_size=16)
    model = DeepInfoMax(z_dim=16, arch_kwargs={"base_width": 8}, lr_schedule="cosine")
    rec = _RecordLR()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
        limit_val_batches=0,
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule=dm)
    return rec


def test_cosine_schedule_anneals_over_the_epochs(data_dir):
    lrs = _fit_cosine(data_dir, max_epochs=3).lrs  # 4 steps an epoch, 12 in all
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in range(1, 13)]
    assert lrs == pytest.approx(expected)


class _FakeClock:
    """Stands in for the ``time`` module of Lightning's Timer: ``monotonic()`` reads a clock that
    moves only when the test moves it, so the time the scheduler sees is known exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _TickEachBatch(pl.Callback):
    def __init__(self, clock: _FakeClock, dt: float) -> None:
        self.clock, self.dt = clock, dt

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.clock.now += self.dt


def test_cosine_schedule_anneals_over_a_time_budget(data_dir, monkeypatch):
    """``--trainer.max_time``: the rate is the cosine of the time spent over the budget, read from the
    run's own Timer. Its clock is a fake that advances 0.5 s at the start of each batch, so the
    elapsed time at each step is exact and the rate is checked to 1e-9 (a rate linear in time is
    1e-4 away), whatever the machine's load."""
    from pytorch_lightning.callbacks import timer as timer_module

    clock = _FakeClock()
    monkeypatch.setattr(timer_module, "time", clock)
    seconds, dt = 10, 0.5
    tick = _TickEachBatch(clock, dt)
    dm = CIFAR10(data_dir=str(data_dir), limit_train=64, val_size=0, batch_size=16)
    model = DeepInfoMax(z_dim=16, arch_kwargs={"base_width": 8}, lr_schedule="cosine")
    rec = _RecordLR()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[tick, rec],
        limit_val_batches=0,
        max_epochs=100_000,
        max_time={"seconds": seconds},
    )
    trainer.fit(model, datamodule=dm)
    lrs = rec.lrs
    # The budget ends the run: 20 steps of 0.5 s, far before the epochs would.
    assert len(lrs) == seconds / dt and trainer.global_step == len(lrs)
    assert rec.elapsed == pytest.approx([dt * s for s in range(1, len(lrs) + 1)], abs=1e-9)
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * min(t, seconds) / seconds)) for t in rec.elapsed]
    assert lrs == pytest.approx(expected, abs=1e-9)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0.0), "lr=0.0"),
        (dict(critic="cosine", critic_temperature=0.0), "temperature=0.0"),
        (dict(lr_schedule="step"), "lr_schedule='step'"),
        (dict(in_channels=1, mean=(0.5, 0.5, 0.5)), "one value per channel"),
        (dict(beta=-2.0), "beta=-2.0"),
    ],
)
def test_bad_module_settings_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepInfoMax(**kwargs)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    """One short real run of `infomax train`, shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    r = run_cli(
        "train",
        "--config",
        CONFIG,
        *SMALL,
        "--model.z_dim",
        "64",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "infomax" / "version_0", r


def test_train_writes_logs_checkpoints_and_the_artifact(trained_run):
    run, result = trained_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard log missing"
    assert (run / "config.yaml").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    knn = [float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")]
    assert len(knn) == 1 and 0.0 <= knn[0] <= 1.0
    config = json.loads((run / "artifact" / "encoder.json").read_text())
    assert config["arch"] == "conv" and config["dim"] == 64 and config["dataset"] == "cifar10"
    assert config["input_size"] == 32 and config["in_channels"] == 3
    assert config["normalization"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert "val/knn_top1" in config["metrics"]
    assert config["command"].startswith("infomax train --config")
    # no path of this machine: the checkpoint relative to the run root
    assert config["checkpoint"].startswith("infomax/version_0/checkpoints/best-"), config["checkpoint"]
    assert "serving artifact written to" in result.stderr
    assert "will be deleted" not in result.stderr  # Lightning's CSV-logger warning; nothing is deleted


def test_the_artifact_reproduces_the_trained_encoder_without_lightning(trained_run, data_dir):
    run, _ = trained_run
    config = json.loads((run / "artifact" / "encoder.json").read_text())
    state = torch.load(run.parents[1] / config["checkpoint"], map_location="cpu", weights_only=True)
    module = DeepInfoMax.from_checkpoint_state(state).eval()
    encoder = load_encoder(run / "artifact")
    images, _ = load_cifar10(data_dir, "test")
    x = images[:16]
    with torch.no_grad():
        expected = module(x)
    assert torch.allclose(encoder.embed(x), expected, atol=1e-5)
    # PIL images and HWC arrays go through the same preprocessing.
    from PIL import Image

    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in x[:4]]
    assert torch.allclose(encoder.embed(pil), expected[:4], atol=1e-5)
    assert torch.allclose(encoder.embed(x[:4].permute(0, 2, 3, 1).numpy()), expected[:4], atol=1e-5)


def test_export_from_a_checkpoint_gives_the_same_weights(trained_run, tmp_path, here):
    run, _ = trained_run
    config = json.loads((run / "artifact" / "encoder.json").read_text())
    r = here("export", "--checkpoint", str(run.parents[1] / config["checkpoint"]), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "a" / "encoder.json").read_text())
    assert again["checkpoint"] == config["checkpoint"]  # the run-relative path, not this machine's
    assert again["weights_sha256"] == config["weights_sha256"]
    r = here("export", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and "no checkpoint at" in r.stderr and "Traceback" not in r.stderr


def test_resume_continues_the_last_run(trained_run):
    run, _ = trained_run
    root = run.parents[1]
    # A new process, as a user resumes: Lightning's warnings reach its stderr (in this process
    # pytest would collect them), and one of them must not be there.
    r = run_cli(
        "train",
        "--config",
        CONFIG,
        *SMALL,
        "--model.z_dim",
        "64",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(root),
        "--ckpt_path",
        "last",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (root / "infomax" / "version_1").exists(), "resume must log into the same run folder"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 * (256 // 32)  # the second epoch ran on top of the first
    rows = [*csv.DictReader((run / "metrics.part0.csv").open()), *csv.DictReader((run / "metrics.csv").open())]
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/knn_top1")) == [0, 1]
    assert "will be deleted" not in r.stderr


def test_last_checkpoint_is_the_last_epoch_not_a_copy_of_the_best(tmp_path, here):
    """Lightning 2.6 alone rewrites last.ckpt only when the monitored figure improves; here it never
    does after epoch 0 (monitor `epoch`, mode min), so the last epoch's weights must still be in
    last.ckpt, while the export takes the best checkpoint."""
    r = here(
        "train",
        "--config",
        CONFIG,
        *SMALL,
        "--model.z_dim",
        "16",
        "--trainer.max_epochs",
        "2",
        "--checkpoint.monitor",
        "epoch",
        "--checkpoint.mode",
        "min",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = tmp_path / "infomax" / "version_0" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-000.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(ckpts / "best-000.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 2 * (256 // 32))
    assert best["global_step"] == 256 // 32
    config = json.loads((tmp_path / "infomax" / "version_0" / "artifact" / "encoder.json").read_text())
    assert config["checkpoint"].endswith("best-000.ckpt")
    # encoder.json tells the weights' progress apart from the run's
    assert (config["checkpoint_epochs"], config["checkpoint_steps"]) == (1, 256 // 32)
    assert (config["epochs"], config["steps"]) == (2, 2 * (256 // 32))
    r = here("export", "--checkpoint", str(ckpts / "last.ckpt"), "--out", str(tmp_path / "last"))
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "last" / "encoder.json").read_text())
    assert (again["checkpoint_epochs"], again["checkpoint_steps"]) == (2, 2 * (256 // 32))


@pytest.mark.parametrize(
    "args,match",
    [
        (["--model.alpha", "-1"], "alpha=-1.0"),
        (["--model.arch", "vit"], "arch='vit'"),
        (["--model.z_dim", "0"], "z_dim=0"),
        (["--data.batch_size", "0"], "batch_size=0"),
    ],
)
def test_bad_settings_fail_before_training_with_the_value(tmp_path, args, match, capsys):
    """In process (the command's own main; a subprocess per case cost ~7 s of start-up each): an
    exception other than the one-line user error would propagate here and fail the test."""
    from infomax.cli import main

    rc = main(["train", "--config", CONFIG, *SMALL, *args, "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert match in err and "infomax train: error:" in err, err[-2000:]
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_data_names_the_folder_and_the_variable(tmp_path, here, monkeypatch):
    monkeypatch.setenv("INFOMAX_DATA_DIR", str(tmp_path / "nowhere"))
    r = here("train", "--config", CONFIG, *SMALL, "--trainer.default_root_dir", str(tmp_path))
    assert r.returncode == 1
    assert str(tmp_path / "nowhere") in r.stderr and "INFOMAX_DATA_DIR" in r.stderr
    assert "Traceback" not in r.stderr


def test_ddp_with_two_cpu_processes(tmp_path):
    r = run_cli(
        "train",
        "--config",
        CONFIG,
        *SMALL,
        "--model.z_dim",
        "32",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.default_root_dir",
        str(tmp_path),
        env_extra={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "infomax" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 256 images over 2 processes of 32 per batch: 4 steps each, in lockstep.
    assert state["global_step"] == 256 // 32 // 2
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("val/knn_top1") for r in rows)
    assert load_encoder(run / "artifact").z_dim == 32


@pytest.mark.parametrize("config", sorted((Path(CONFIG).parent).glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_and_takes_effect(config, tmp_path):
    """Each YAML under training/configs builds its model, data module and trainer, and every model,
    data and trainer setting it names reaches the object (a misspelt key or a value of the wrong type
    fails here, not at the start of a user's run)."""
    import yaml

    from training.train import build_cli

    needs = []
    if config.name == "folder.yaml":  # its one required value: a folder of images
        from PIL import Image

        (tmp_path / "pics").mkdir()
        for i in range(4):
            Image.new("RGB", (40, 30), (60 * i, 10, 200)).save(tmp_path / "pics" / f"{i}.png")
        needs = ["--data.path", str(tmp_path / "pics")]
    cli = build_cli(["--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false", *needs])
    spec = yaml.safe_load(config.read_text())
    for key, value in (spec.get("model") or {}).items():
        assert cli.model.hparams[key] == value, key
    for key, value in ((spec.get("data") or {}).get("init_args") or {}).items():
        assert getattr(cli.datamodule, key, None) == value or cli.datamodule.hparams.get(key) == value, key
    assert type(cli.datamodule).__name__ == spec["data"]["class_path"].rsplit(".", 1)[1]
    if "max_time" in (spec.get("trainer") or {}):
        timer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, pl.callbacks.Timer))
        d, h, m, s = map(int, spec["trainer"]["max_time"].split(":"))
        assert timer.time_remaining() == ((d * 24 + h) * 60 + m) * 60 + s
    # The step and epoch bounds (cifar10-cpu-w32.yaml's budget is its max_steps).
    for key in ("max_steps", "max_epochs"):
        if key in (spec.get("trainer") or {}):
            assert getattr(cli.trainer, key) == spec["trainer"][key], key
    for key, value in (spec.get("export") or {}).items():
        from infomax.callbacks import ExportArtifact

        export = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ExportArtifact))
        assert getattr(export, key) == value, key


def test_encoder_json_records_checkpoints_without_this_machines_paths(tmp_path):
    from infomax.callbacks import run_relative

    ckpt = tmp_path / "runs" / "infomax" / "version_3" / "checkpoints" / "best-041.ckpt"
    assert run_relative(ckpt, tmp_path / "runs") == "infomax/version_3/checkpoints/best-041.ckpt"
    assert run_relative(ckpt) == "infomax/version_3/checkpoints/best-041.ckpt"  # `infomax export --checkpoint`
    assert run_relative(tmp_path / "elsewhere" / "my.ckpt", tmp_path / "runs") == "my.ckpt"
    assert not any(str(tmp_path) in run_relative(p, r) for p, r in ((ckpt, tmp_path / "runs"), (ckpt, None)))
