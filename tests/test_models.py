"""The encoders shipped in models/: they load without training code, say how they were made and
measured, and are better than their architecture untrained."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from infomax import load_encoder
from infomax.artifact import InferenceEncoder, read_config
from infomax.data import load_dataset
from infomax.encoders import build_encoder
from infomax.evaluate import knn_eval, pixel_features

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
    assert encoder.embed(
        torch.zeros(2, encoder.in_channels, encoder.input_size, encoder.input_size, dtype=torch.uint8)
    ).shape == (2, encoder.z_dim)


@pytest.mark.parametrize("folder", MODELS, ids=lambda p: p.name)
def test_shipped_model_beats_its_architecture_untrained_and_raw_pixels(folder, data_dir):
    # On 5,000 train / 1,000 test images of its data set, with the vectors it serves (its output).
    shipped = load_encoder(folder)
    torch.manual_seed(0)
    untrained = InferenceEncoder(shipped.config, build_encoder(shipped.config["arch"], **shipped.config["arch_kwargs"]))
    data = shipped.config["dataset"]
    train, train_y = load_dataset(data, data_dir, "train")
    test, test_y = load_dataset(data, data_dir, "test")
    train, train_y, test, test_y = train[:5000], train_y[:5000], test[:1000], test_y[:1000]
    knn = {
        name: knn_eval(enc.embed(train), train_y, enc.embed(test), test_y)["knn_top1"]
        for name, enc in (("shipped", shipped), ("untrained", untrained))
    }
    px_train, px_test = pixel_features(train, test)
    knn["pixels"] = knn_eval(px_train, train_y, px_test, test_y)["knn_top1"]
    assert knn["shipped"] > knn["untrained"] + 0.02 and knn["shipped"] > knn["pixels"] + 0.02, knn
