"""The GPU recipe (training/configs/cifar10-gpu-resnet18.yaml) checked on the CPU: its linear warm-up
before the cosine against the formula, step by step, and two real training steps of the recipe
itself with tiny overrides (precision 32, no compile, 32 images), so that a run on a lent GPU
needs no more work."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from infomax.data import CIFAR10
from infomax.module import DeepInfoMax

RECIPE = Path(__file__).parents[1] / "training" / "configs" / "cifar10-gpu-resnet18.yaml"
# The check documented at the top of the recipe.
CPU_CHECK = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.precision",
    "32",
    "--model.compile",
    "false",
    "--trainer.max_steps",
    "2",
    "--data.limit_train",
    "32",
    "--data.val_size",
    "32",
    "--data.batch_size",
    "16",
    "--knn.k",
    "10",
]


class _RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(data_dir, **model_kwargs) -> list[float]:
    dm = CIFAR10(data_dir=str(data_dir), limit_train=64, val_size=0, batch_size=16)
    model = DeepInfoMax(z_dim=16, arch_kwargs={"base_width": 8}, **model_kwargs)
    rec = _RecordLR()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
        limit_val_batches=0,
        max_epochs=3,
    )
    trainer.fit(model, datamodule=dm)
    return rec.lrs


def _warm_cosine(s: int, total: int, warmup: float) -> float:
    frac = s / total
    if frac < warmup:
        return frac / warmup
    return 0.5 * (1 + math.cos(math.pi * (frac - warmup) / (1 - warmup)))


def test_linear_warmup_then_cosine(data_dir):
    """12 steps, warm-up over the first quarter: the rate after step s (1..12) is 1e-3 * s / 3 while
    s / 12 < 0.25, then the cosine over the remaining 9 steps, reaching 0 at the end."""
    lrs = _fit(data_dir, lr_schedule="cosine", lr_warmup=0.25)
    expected = [1e-3 * _warm_cosine(s, 12, 0.25) for s in range(1, 13)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3]) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_linear_warmup_before_a_constant_rate(data_dir):
    lrs = _fit(data_dir, lr_warmup=0.5)
    assert lrs == pytest.approx([1e-3 * min(1.0, s / 6) for s in range(1, 13)], abs=1e-12)


def test_the_gpu_recipe_parses_with_its_settings():
    import yaml

    from training.train import build_cli

    spec = yaml.safe_load(RECIPE.read_text())
    model = spec["model"]
    assert model["alpha"] > 0 and model["beta"] > 0 and model["gamma"] > 0  # the three-term objective
    assert spec["data"]["init_args"] == {"batch_size": 512, "on_device": True}
    assert spec["trainer"]["precision"] == "bf16-mixed"
    assert model["compile"] and model["channels_last"] and model["lr_schedule"] == "cosine" and model["lr_warmup"] > 0
    cli = build_cli(["--config", str(RECIPE), "--trainer.logger", "false", "--trainer.accelerator", "cpu"])
    for key, value in model.items():
        assert cli.model.hparams[key] == value, key
    assert cli.model.objective.extra_critics is not None and cli.model.objective.score_clip == 20.0


def test_the_gpu_recipe_trains_two_steps_on_the_cpu(tmp_path, data_dir, here, monkeypatch):
    # In process (the command's own main): a new process would add ~10 s of imports to the check.
    monkeypatch.setenv("INFOMAX_DATA_DIR", str(data_dir))
    r = here(
        "train",
        "--config",
        str(RECIPE),
        *CPU_CHECK,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "infomax" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["extra_local_maps"] == ["layer4"]
    assert any(k.startswith("objective.extra_critics.0.") for k in state["state_dict"])
    config = json.loads((run / "artifact" / "encoder.json").read_text())
    assert config["arch"] == "resnet18" and config["dim"] == 256
    metrics = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/score_penalty" in metrics
