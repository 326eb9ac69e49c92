"""The online k-NN monitor (``val/knn_top1``, the figure that picks the exported checkpoint) against a
naive weighted k-NN on the same bank and queries, on real CIFAR-10 images and a real Trainer."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from infomax.callbacks import KNNMonitor
from infomax.data import CIFAR10
from infomax.module import DeepInfoMax

N_TRAIN, N_VAL, K, T = 301, 75, 15, 0.1  # odd sizes: DDP ranks get unequal shards


def naive_weighted_knn_top1(queries, query_labels, bank, bank_labels, k, temperature):
    """One query at a time, in plain Python over the similarities: the k most similar bank items
    vote for their class with weight exp(cos / T); top-1 is the share of queries whose vote wins."""
    bank = [b / b.norm() for b in bank.double()]
    right = 0
    for q, label in zip(queries.double(), query_labels.tolist()):
        q = q / q.norm()
        sims = sorted(((float(q @ b), int(lb)) for b, lb in zip(bank, bank_labels.tolist())), reverse=True)
        votes: dict[int, float] = {}
        for s, lb in sims[:k]:
            votes[lb] = votes.get(lb, 0.0) + math.exp(s / temperature)
        right += max(votes, key=votes.get) == label
    return right / len(query_labels)


def _datamodule(data_dir) -> CIFAR10:
    """Real images with their class painted into a stripe at the top: even a random encoder's codes
    then carry the label (weighted k-NN ~0.7 on mu, ~0.95 on C(x), against ~0.13 without), so codes
    paired with the wrong labels anywhere in the monitor drop the figure to chance."""
    dm = CIFAR10(data_dir=str(data_dir), limit_train=N_TRAIN, val_size=N_VAL, batch_size=32)
    dm.setup("validate")
    colours = torch.randint(0, 256, (10, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for images, labels in ((dm.train_images, dm.train_labels), (dm.val_images, dm.val_labels)):
        images[:, :, :12, :] = colours[labels][:, :, None, None]
    return dm


def _model(seed: int = 0) -> DeepInfoMax:
    torch.manual_seed(seed)
    return DeepInfoMax(z_dim=16, arch_kwargs={"base_width": 8})


def _validate(model, dm, monitor) -> float:
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
        enable_checkpointing=False,
    )
    trainer.validate(model, datamodule=dm, verbose=False)
    return float(trainer.callback_metrics["val/knn_top1"])


@pytest.mark.parametrize("features", ["mu", "local"])
def test_logged_knn_equals_a_naive_weighted_knn_on_the_same_bank_and_queries(data_dir, features):
    dm, model = _datamodule(data_dir), _model()
    # The bank and the queries hold the whole train and validation splits: no subset to re-derive.
    got = _validate(
        model, dm, KNNMonitor(k=K, temperature=T, bank_size=10_000, max_queries=10_000, batch_size=64, features=features)
    )
    model.eval()
    with torch.no_grad():
        bank, queries = model(dm.train_images, features), model(dm.val_images, features)
    want = naive_weighted_knn_top1(queries, dm.val_labels, bank, dm.train_labels, K, T)
    assert got == pytest.approx(want, abs=1e-6)
    assert want > 0.5  # the codes carry the label (the stripe): a mispairing cannot pass unseen
    # The figure tells codes apart: the same queries with the labels of other queries score otherwise.
    shuffled = dm.val_labels.roll(1)
    assert naive_weighted_knn_top1(queries, shuffled, bank, dm.train_labels, K, T) != pytest.approx(want, abs=1e-6)


def test_bank_size_is_the_number_of_bank_items(data_dir):
    """A bank of one image predicts its class for every query: the logged top-1 is then the share of
    validation images of that one class (k=200 asks for more neighbours than the bank holds)."""
    dm, model = _datamodule(data_dir), _model()
    got = _validate(model, dm, KNNMonitor(k=200, bank_size=1, max_queries=10_000))
    shares = {c: n / N_VAL for c, n in Counter(dm.val_labels.tolist()).items()}
    assert any(got == pytest.approx(s, abs=1e-6) for s in shares.values()), (got, shares)
    # max_queries bounds the queries the same way: a single query scores 0 or 1.
    got = _validate(model, dm, KNNMonitor(k=K, bank_size=10_000, max_queries=1))
    assert got in (0.0, 1.0)


def test_every_n_epochs_logs_only_those_epochs(data_dir, tmp_path):
    dm = CIFAR10(data_dir=str(data_dir), limit_train=64, val_size=32, batch_size=32)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        max_epochs=5,
        limit_train_batches=1,
        num_sanity_val_steps=0,
        callbacks=[KNNMonitor(k=5, every_n_epochs=2)],
    )
    trainer.fit(_model(), datamodule=dm)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert sorted(int(r["epoch"]) for r in rows if r.get("val/loss")) == [0, 1, 2, 3, 4]
    assert [int(r["epoch"]) for r in rows if r.get("val/knn_top1")] == [1, 3]  # the 2nd and the 4th epoch


def test_knn_flags_reach_the_monitor(tmp_path):
    from training.train import build_cli

    config = Path(__file__).parents[1] / "training" / "configs" / "cifar10.yaml"
    cli = build_cli(
        [
            "--config",
            str(config),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger",
            "false",
            "--knn.every_n_epochs",
            "3",
            "--knn.bank_size",
            "77",
            "--knn.k",
            "9",
            "--knn.temperature",
            "0.5",
            "--export.output",
            "local",
        ]
    )
    (monitor,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, KNNMonitor)]
    assert (monitor.every_n_epochs, monitor.bank_size, monitor.k, monitor.temperature) == (3, 77, 9, 0.5)
    assert monitor.features == "local"  # linked to what the artifact serves


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import pytorch_lightning as pl
    import torch
    sys.path.insert(0, {tests!r})
    from test_knn_monitor import _datamodule, _model, K, T
    from infomax.callbacks import KNNMonitor

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[KNNMonitor(k=K, temperature=T, batch_size=64)])
    trainer.validate(_model(), datamodule=_datamodule({data!r}), verbose=False)
    out = {{"rank": trainer.global_rank, "knn": float(trainer.callback_metrics["val/knn_top1"])}}
    with open(os.path.join({out!r}, f"rank{{trainer.global_rank}}.json"), "w") as f:
        json.dump(out, f)
    # Both ranks' files are written once both pass the barrier; then leave without the interpreter's
    # teardown, where gloo's threads sometimes abort the process ("terminate called without an
    # active exception", exit -6) after the work is done.
    torch.distributed.barrier()
    os._exit(0)
    """
)


def test_two_ddp_processes_log_the_same_value_as_one(data_dir, tmp_path):
    dm, model = _datamodule(data_dir), _model()
    one = _validate(model, dm, KNNMonitor(k=K, temperature=T, batch_size=64))
    script = tmp_path / "ddp_knn.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(data_dir), out=str(tmp_path)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert one > 0.5  # the codes carry the label: a rank's codes gathered out of order would show
    assert [x["knn"] for x in ranks] == [pytest.approx(one, abs=1e-6)] * 2
