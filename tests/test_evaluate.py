"""`infomax eval` and ``infomax.evaluate``: k-NN / 1-NN against a naive reference on real slices of
CIFAR-10 and Fashion-MNIST, the raw-pixel baseline, and the linear probe's optimisation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infomax import load_encoder
from infomax.artifact import ArtifactError, record_eval
from infomax.commands import evaluate as eval_cmd
from infomax.data import load_dataset
from infomax.evaluate import (
    _fit_softmax,
    _objective,
    evaluate_codes,
    evaluate_encoder,
    knn_eval,
    linear_probe,
    pixel_features,
    probe_objective_grad,
)
from infomax.knn import knn_accuracy

N_TRAIN, N_TEST = 600, 200


def naive_knn(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray, k: int = 200, temperature: float = 0.1
) -> tuple[float, float, float]:
    """Weighted k-NN and 1-NN top-1 and the precision of the ten nearest, the slow, obvious way:
    float64, one query at a time, argsort."""
    train = train.astype(np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    knn_hits = nn1_hits = ten_hits = 0
    for q, y in zip(test.astype(np.float64), test_y):
        sims = train @ (q / np.linalg.norm(q))
        order = np.argsort(-sims, kind="stable")[:k]
        votes: dict[int, float] = {}
        for j in order:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + np.exp(sims[j] / temperature)
        knn_hits += max(votes, key=votes.get) == y
        nn1_hits += train_y[order[0]] == y
        ten_hits += sum(int(train_y[j] == y) for j in order[:10])
    return knn_hits / len(test), nn1_hits / len(test), ten_hits / (10 * len(test))


def naive_pixels(train_images: torch.Tensor, test_images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    train = train_images.numpy().reshape(len(train_images), -1).astype(np.float64) / 255.0
    test = test_images.numpy().reshape(len(test_images), -1).astype(np.float64) / 255.0
    mean = train.mean(axis=0)
    return train - mean, test - mean


@pytest.fixture(scope="module", params=["cifar10", "fmnist"])
def pixel_slice(request, data_dir):
    train, train_y = load_dataset(request.param, data_dir, "train")
    test, test_y = load_dataset(request.param, data_dir, "test")
    return request.param, train[:N_TRAIN], train_y[:N_TRAIN], test[:N_TEST], test_y[:N_TEST]


def test_raw_pixel_knn_equals_a_naive_reference(pixel_slice):
    _, train, train_y, test, test_y = pixel_slice
    tr, te = pixel_features(train, test)
    ref_tr, ref_te = naive_pixels(train, test)
    np.testing.assert_allclose(tr.numpy(), ref_tr, atol=1e-6)
    np.testing.assert_allclose(te.numpy(), ref_te, atol=1e-6)
    result = knn_eval(tr, train_y, te, test_y, k=200, temperature=0.1, chunk=64)
    knn, nn1, p10 = naive_knn(ref_tr, train_y.numpy(), ref_te, test_y.numpy())
    assert result["knn_top1"] == pytest.approx(knn, abs=1e-12)
    assert result["nn1_top1"] == pytest.approx(nn1, abs=1e-12)
    assert result["p10"] == pytest.approx(p10, abs=1e-6)
    # ... and the same figures as the project's k-NN monitor (infomax.knn), used in training.
    # (knn_accuracy averages in float32: equal up to its rounding)
    assert result["knn_top1"] == pytest.approx(knn_accuracy(te, test_y, tr, train_y, num_classes=10), abs=1e-6)
    assert result["nn1_top1"] == pytest.approx(
        knn_accuracy(te, test_y, tr, train_y, num_classes=10, k=1, weighted=False), abs=1e-6
    )


def test_the_probe_gradient_is_the_gradient_of_its_objective():
    torch.manual_seed(0)
    x, y = torch.randn(300, 20), torch.randint(0, 5, (300,))
    w, b = torch.randn(20, 5) * 0.1, torch.randn(5) * 0.1
    loss, gw, gb = _objective(x, y, w, b, 0.01)
    w_, b_ = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ref = F.cross_entropy(x @ w_ + b_, y) + 0.005 * (w_ * w_).sum()
    ref_gw, ref_gb = torch.autograd.grad(ref, [w_, b_])
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb, ref_gb, rtol=1e-4, atol=1e-6)


def test_the_probe_fit_reaches_the_optimum_and_the_sweep_picks_on_held_out_data(data_dir):
    images, labels = load_dataset("fmnist", data_dir, "train")
    x = images[:1000].reshape(1000, -1).float() / 255.0
    torch.manual_seed(0)
    feats = x @ torch.randn(784, 16)  # low-dimensional real features: L-BFGS converges in 100 steps
    feats = (feats - feats.mean(0)) / feats.std(0)
    w, b = _fit_softmax(feats, labels[:1000], 10, 1e-3, max_iter=200)
    start = probe_objective_grad(feats, labels[:1000], torch.zeros(16, 10), torch.zeros(10), 1e-3)
    assert probe_objective_grad(feats, labels[:1000], w, b, 1e-3) < 1e-3 * start

    out = linear_probe(feats[:800], labels[:800], feats[800:], labels[800:1000], num_classes=10)
    assert out["weight_decay"] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert out["val_top1"][str(out["weight_decay"])] == max(out["val_top1"].values())
    # far above the 0.1 of chance, and below the (optimistic) train accuracy plus slack
    assert 0.5 < out["probe_top1"] <= out["train_top1"] + 0.05


def test_evaluate_codes_reports_every_figure(data_dir):
    images, labels = load_dataset("fmnist", data_dir, "test")
    x = images[:300].reshape(300, -1).float()
    res = evaluate_codes(x[:200], labels[:200], x[200:], labels[200:300], k=50)
    knn, nn1, p10 = naive_knn(x[:200].numpy(), labels[:200].numpy(), x[200:].numpy(), labels[200:300].numpy(), k=50)
    assert res["knn_top1"] == pytest.approx(knn) and res["nn1_top1"] == pytest.approx(nn1) and res["p10"] == pytest.approx(p10)
    assert 0.0 <= res["probe_top1"] <= 1.0 and res["dim"] == 784 and res["n_train"] == 200 and res["n_test"] == 100
    assert evaluate_codes(x[:200], labels[:200], x[200:], labels[200:300], probe=False)["probe_top1"] is None


def test_eval_command_reports_the_encoder_and_raw_pixels_against_references(tmp_path, capsys, data_dir, tiny_artifact):
    out = tmp_path / "report.json"
    assert (
        eval_cmd.main(
            [
                "--model",
                str(tiny_artifact),
                "--data",
                "cifar10",
                "--limit-train",
                "300",
                "--limit-test",
                "100",
                "--json",
                str(out),
                "--data-dir",
                str(data_dir),
                "--no-probe",
                "--local",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["n_train"] == 300 and report["n_test"] == 100 and report["data"] == "cifar10"
    train, train_y = load_dataset("cifar10", data_dir, "train")
    test, test_y = load_dataset("cifar10", data_dir, "test")
    train, train_y, test, test_y = train[:300], train_y[:300], test[:100], test_y[:100]
    px = report["results"]["pixels"]
    ref_train, ref_test = naive_pixels(train, test)
    knn, nn1, p10 = naive_knn(ref_train, train_y.numpy(), ref_test, test_y.numpy())
    assert (px["knn_top1"], px["nn1_top1"], px["p10"]) == (pytest.approx(knn), pytest.approx(nn1), pytest.approx(p10))
    encoder = load_encoder(tiny_artifact)
    codes_tr, codes_te = encoder.embed(train).numpy(), encoder.embed(test).numpy()
    knn, nn1, _ = naive_knn(codes_tr, train_y.numpy(), codes_te, test_y.numpy())
    enc = report["results"]["encoder"]
    assert (enc["knn_top1"], enc["nn1_top1"]) == (pytest.approx(knn), pytest.approx(nn1))
    assert enc["dim"] == 32 and px["dim"] == 3072
    assert enc["probe_top1"] is None and px["probe_top1"] is None  # --no-probe (the probe is tested above)
    assert report["artifact"]["id"] == encoder.id
    # --local: the same protocol on the flattened local map, computed here straight from local_net.
    with torch.no_grad():
        maps_tr, maps_te = (encoder.encoder.local_net(encoder.normalize(x)).flatten(1).numpy() for x in (train, test))
    knn, nn1, _ = naive_knn(maps_tr, train_y.numpy(), maps_te, test_y.numpy())
    loc = report["results"]["local"]
    assert (loc["knn_top1"], loc["nn1_top1"]) == (pytest.approx(knn), pytest.approx(nn1))
    assert loc["dim"] == maps_tr.shape[1] == encoder.encoder.local_channels * encoder.encoder.local_size**2
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and table[1].startswith("| encoder (mu) | 32 | ")
    assert table[2].startswith(f"| local feature map C(x) | {loc['dim']} | ")
    assert table[3].startswith("| raw pixels | 3072 | ")
    assert table[3].endswith(f"| {px['knn_top1']:.4f} | {px['nn1_top1']:.4f} | - | {px['p10']:.4f} |")


def test_eval_pixels_only_needs_no_model(capsys, data_dir):
    assert (
        eval_cmd.main(
            [
                "--no-encoder",
                "--data",
                "fmnist",
                "--limit-train",
                "300",
                "--limit-test",
                "50",
                "--no-probe",
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| raw pixels")]
    assert len(rows) == 1 and rows[0].split(" | ")[4] == "-"  # no probe


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(model="{grey}", data="cifar10"), ValueError, "takes 1x28x28 images but cifar10 holds 3x32x32"),
        (dict(model="{art}", data="svhn"), ValueError, "unknown dataset 'svhn'"),
        (dict(model="{tmp}/nope", data="cifar10"), FileNotFoundError, "no artifact folder there"),
        (dict(model="{art}", data="cifar10", data_dir="{tmp}/nodata"), FileNotFoundError, "data not found in"),
        (dict(model="{art}", data="cifar10", limit_train=0), ValueError, "--limit-train 0"),
        (dict(model="{art}", data="cifar10", encoder=False, local=True), ValueError, "--local evaluates"),
    ],
)
def test_bad_inputs_name_the_problem(tmp_path, tiny_artifact, tiny_grey_artifact, kwargs, error, match):
    fill = {"tmp": str(tmp_path), "art": str(tiny_artifact), "grey": str(tiny_grey_artifact)}
    kwargs = {k: v.format(**fill) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        evaluate_encoder(kwargs.pop("model"), kwargs.pop("data"), **kwargs)


def test_eval_needs_a_model_unless_told_otherwise():
    with pytest.raises(ValueError, match="--model is required"):
        eval_cmd.main(["--data", "cifar10"])


def test_unknown_labels_are_refused():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="unknown"):
        knn_eval(x, torch.full((10,), -1), x, torch.zeros(10, dtype=torch.long))


def test_record_stores_the_figures_in_the_artifact_and_keeps_it_loadable(tmp_path, tiny_artifact, data_dir):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    weights_before = (art / "encoder.safetensors").read_bytes()
    report = evaluate_encoder(art, "cifar10", data_dir=data_dir, limit_train=200, limit_test=50, probe=False)
    record_eval(art, report)
    config = json.loads((art / "encoder.json").read_text())
    entry = config["eval"]["cifar10"]
    assert entry["results"]["encoder"]["knn_top1"] == report["results"]["encoder"]["knn_top1"]
    assert entry["results"]["pixels"]["nn1_top1"] == report["results"]["pixels"]["nn1_top1"]
    assert entry["results"]["encoder"]["p10"] == report["results"]["encoder"]["p10"] is not None
    assert (entry["k"], entry["n_train"], entry["n_test"]) == (200, 200, 50)
    assert (art / "encoder.safetensors").read_bytes() == weights_before
    assert load_encoder(art).id == report["artifact"]["id"]  # still loads: the hash is of the weights
    # A report of other weights is refused, and the file is left as it was.
    other = {**report, "artifact": {**report["artifact"], "id": "0" * 64}}
    with pytest.raises(ArtifactError, match="not of"):
        record_eval(art, other)
    assert json.loads((art / "encoder.json").read_text()) == config


def test_record_refuses_partial_evaluations(tiny_artifact):
    with pytest.raises(ValueError, match="cannot go with --no-encoder, --limit-train"):
        eval_cmd.main(["--model", str(tiny_artifact), "--data", "cifar10", "--limit-test", "10", "--record"])


def test_embed_names_an_unknown_feature_kind(tiny_artifact):
    with pytest.raises(ValueError, match="features='logvar'"):
        load_encoder(tiny_artifact).embed(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), features="logvar")
