"""The encoders shipped in models/: they load without training code, say how they were made and
measured, and are better than their architecture untrained."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from infomax import load_encoder
from infomax.artifact import read_config
from infomax.data import load_dataset
from infomax.evaluate import knn_eval
from infomax.module import DeepInfoMax

ROOT = Path(__file__).parents[1]
MODELS = sorted(p for p in (ROOT / "models").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_shipped_model_loads_and_records_its_command_and_figures(folder):
    encoder = load_encoder(folder)  # checks the weights against the recorded sha256
    config = read_config(folder)
    # Small enough for git, and rebuilt from a config that is in the repository.
    assert (folder / "encoder.safetensors").stat().st_size < 8 * 2**20
    argv = shlex.split(config["command"])
    assert argv[:3] == ["infomax", "train", "--config"] and (ROOT / argv[3]).is_file()
    # The eval report of these weights, on the data set they were trained on, beside raw pixels.
    report = config["eval"][config["dataset"]]
    assert report["n_test"] == 10_000 and {"encoder", "pixels"} <= set(report["results"])
    assert encoder.embed(torch.zeros(2, encoder.in_channels, encoder.input_size, encoder.input_size,
                                     dtype=torch.uint8)).shape == (2, encoder.z_dim)


def test_shipped_fmnist_encoder_beats_its_architecture_untrained(data_dir):
    shipped = load_encoder(ROOT / "models" / "fmnist")
    config = read_config(ROOT / "models" / "fmnist")
    torch.manual_seed(0)
    untrained = DeepInfoMax(in_channels=1, input_size=28, mean=tuple(config["normalization"]["mean"]),
                            std=tuple(config["normalization"]["std"]),
                            arch_kwargs={k: v for k, v in config["arch_kwargs"].items()
                                         if k not in ("in_channels", "input_size", "z_dim")}).eval()
    train, train_y = load_dataset("fmnist", data_dir, "train")
    test, test_y = load_dataset("fmnist", data_dir, "test")
    train, train_y, test, test_y = train[:5000], train_y[:5000], test[:1000], test_y[:1000]
    with torch.no_grad():
        random_tr, random_te = untrained(train), untrained(test)
    knn_random = knn_eval(random_tr, train_y, random_te, test_y)["knn_top1"]
    knn_shipped = knn_eval(shipped.embed(train), train_y, shipped.embed(test), test_y)["knn_top1"]
    assert knn_shipped > knn_random + 0.03, (knn_shipped, knn_random)
