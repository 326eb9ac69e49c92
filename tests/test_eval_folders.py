"""``infomax eval`` on a user's own folders (issue 13 item 7): a folder whose subfolders are classes
(a held-out part of every class as queries) or --bank / --queries folders; and the spread of the
cosine scores, which says so when the codes collapsed. Real PNGs of varied sizes, real artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infomax.commands import evaluate as eval_cmd
from infomax.evaluate import COLLAPSED_SCORE, evaluate_encoder
from infomax.module import DeepInfoMax

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"apples": (200, 40, 40), "leaves": (40, 170, 60), "sky": (60, 90, 210)}


def _photos(root: Path, per_class: int = 10, classes=COLOURS, seed: int = 0) -> Path:
    """One subfolder per class: noisy pictures of the class's colour, each of its own size."""
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(24, 80, 2))
            px = np.clip(np.array(colour) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"IMG_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def collapsed_artifact(tmp_path_factory) -> Path:
    """An encoder whose code head ignores the image: every code ~ the same vector (what a run whose
    codes collapsed gives), cosine ~1 between any two images."""
    torch.manual_seed(0)
    module = DeepInfoMax(z_dim=32, in_channels=3, input_size=32)
    with torch.no_grad():
        module.encoder.mu.weight.mul_(1e-4)
        module.encoder.mu.bias.fill_(1.0)
    return module.export(tmp_path_factory.mktemp("artifact") / "collapsed", dataset="cifar10", command="tests")


def test_eval_of_a_folder_holds_out_part_of_every_class(tmp_path, tiny_artifact, capsys):
    """Refused before: "unknown dataset '<the folder>'; valid names: cifar-10, ..."."""
    folder = _photos(tmp_path / "photos")
    out = tmp_path / "report.json"
    assert eval_cmd.main(["--model", str(tiny_artifact), "--data", str(folder), "--no-probe", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["classes"] == sorted(COLOURS) and (report["n_train"], report["n_test"]) == (24, 6)
    assert report["split"] == "20% of every class held out as queries (seed 0)"
    # the colours tell the classes apart: labels paired with the wrong images would drop this to chance
    assert report["results"]["pixels"]["knn_top1"] == 1.0 and report["results"]["pixels"]["nn1_top1"] == 1.0
    assert 0.0 <= report["results"]["encoder"]["knn_top1"] <= 1.0
    assert f"{folder}: 24 train (bank) / 6 test (queries), 20% of every class held out" in printed
    assert "| encoder (mu) | 32 |" in printed and "scores of encoder (mu): nearest neighbour" in printed


def test_bank_and_query_folders_are_matched_by_class_name(tmp_path, tiny_artifact):
    bank = _photos(tmp_path / "bank", per_class=6)
    queries = _photos(
        tmp_path / "queries",
        per_class=2,
        seed=1,
        classes={"sky": COLOURS["sky"], "apples": COLOURS["apples"], "snow": (240, 240, 240)},
    )
    with pytest.warns(UserWarning, match=r"2 queries of classes the bank lacks \(snow\) are left out"):
        report = evaluate_encoder(tiny_artifact, bank=bank, queries=queries, probe=False)
    assert (report["n_train"], report["n_test"]) == (18, 4) and report["classes"] == ["apples", "leaves", "sky", "snow"]
    assert report["results"]["pixels"]["nn1_top1"] == 1.0


def test_collapsed_codes_are_named_with_the_spread_of_their_scores(tmp_path, collapsed_artifact, capsys):
    folder = _photos(tmp_path / "photos")
    assert eval_cmd.main(["--model", str(collapsed_artifact), "--data", str(folder), "--no-probe"]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: the encoder (mu) vectors collapsed: two random images score 1.000 (median)" in printed
    report = evaluate_encoder(collapsed_artifact, str(folder), probe=False)
    scores = report["results"]["encoder"]["scores"]
    assert scores["collapsed"] and scores["random_pairs"]["median"] >= 0.99 and scores["nearest"]["p05"] >= 0.99
    # a trained encoder (the shipped CIFAR-10 one) spreads its codes: random pairs score ~0.1 on CIFAR-10
    healthy = evaluate_encoder(REPO / "models" / "cifar10", str(folder), probe=False)["results"]
    for row in ("encoder", "pixels"):
        assert not healthy[row]["scores"]["collapsed"]
        assert healthy[row]["scores"]["random_pairs"]["median"] < COLLAPSED_SCORE


@pytest.mark.parametrize(
    "args,match",
    [
        (["--data", "{flat}"], "its images are not sorted into class subfolders"),
        (["--data", "{tmp}/nowhere"], "unknown dataset .* and no folder there"),
        (["--data", "{photos}", "--bank", "{photos}", "--queries", "{photos}"], "two ways to name the images"),
        (["--bank", "{photos}"], "--bank and --queries go together"),
        (["--data", "{photos}", "--test-fraction", "1.5"], "--test-fraction 1.5"),
        (["--data", "{photos}", "--record"], "--record stores figures of the standard data sets"),
    ],
)
def test_bad_folder_inputs_name_the_problem(tmp_path, tiny_artifact, args, match):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 10), (i, 0, 0)).save(flat / f"{i}.png")
    fill = {"flat": str(flat), "tmp": str(tmp_path), "photos": str(_photos(tmp_path / "photos", per_class=2))}
    with pytest.raises(ValueError, match=match):
        eval_cmd.main(["--model", str(tiny_artifact), *[a.format(**fill) for a in args]])


def test_the_command_says_a_bad_folder_in_one_line(tmp_path, tiny_artifact):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "flat" / "a.png")
    r = subprocess.run(
        [str(Path(sys.executable).parent / "infomax"), "eval", "--model", str(tiny_artifact), "--data", str(tmp_path / "flat")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("infomax eval: error: --data ")
