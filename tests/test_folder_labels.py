"""One stray image at the top of a class-per-folder tree (issue 13 item 6) used to turn off the
labels of every image, silently: no val/knn_top1, the checkpoint picked by val/loss, no labels in
the embeddings. Now the others keep their labels and a warning names the stray. Real PNGs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from infomax.callbacks import KNNMonitor
from infomax.data import ImageFolder, load_image_folder
from infomax.embed import embed, read_embeddings
from infomax.module import DeepInfoMax


def _tree(root: Path, per_class: int = 8) -> Path:
    """Two class folders of coloured noise (cats reddish, dogs bluish) and one stray file at the top."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 120, (20, 20, 3), dtype=np.uint8)
            px[..., 0 if c == 0 else 2] += 120
            Image.fromarray(px).save(root / name / f"IMG_{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "IMG_stray.png")
    return root


def test_a_stray_image_keeps_no_label_and_the_others_keep_theirs(tmp_path):
    folder = _tree(tmp_path / "photos")
    with pytest.warns(
        UserWarning,
        match=r"1 of 17 images of .*photos is not in a class subfolder "
        r"\(e.g. IMG_stray.png\): it has no label; the others keep",
    ):
        data = load_image_folder(folder, size=16)
    names = [Path(p).relative_to(folder).as_posix() for p in data.paths]
    assert data.classes == ["cat", "dog"]
    assert dict(zip(names, data.labels.tolist())) == {
        n: (-1 if n == "IMG_stray.png" else ["cat", "dog"].index(n[:3])) for n in names
    }


def test_a_folder_mostly_at_the_top_says_why_it_has_no_labels(tmp_path):
    folder = tmp_path / "mostly-flat"
    for rel in ("a.png", "b.png", "c.png", "x/d.png", "y/e.png"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / rel)
    with pytest.warns(UserWarning, match="3 of 5 images .* are at its top .* not taken as classes"):
        data = load_image_folder(folder, size=8)
    assert data.classes == [] and data.labels.tolist() == [-1] * 5


def test_training_leaves_the_stray_out_and_monitors_knn_on_the_labelled_images(tmp_path):
    folder = _tree(tmp_path / "photos")
    dm = ImageFolder(str(folder), input_size=16, batch_size=8, val_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    said = [str(w.message) for w in caught]
    assert any("it has no label" in m for m in said), said
    assert any(
        "1 image(s) of" in m
        and "without a class (e.g. IMG_stray.png) are left out of training, so that the other 16 keep their labels" in m
        for m in said
    ), said
    assert dm.num_classes == 2 and len(dm.train_images) + len(dm.val_images) == 16
    assert bool((dm.train_labels >= 0).all()) and bool((dm.val_labels >= 0).all())
    torch.manual_seed(0)
    model = DeepInfoMax(z_dim=8, in_channels=3, input_size=16, arch_kwargs={"base_width": 4})
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[KNNMonitor(k=5, bank_size=100)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on workers and tiny data
        trainer.validate(model, datamodule=dm, verbose=False)
    assert "val/knn_top1" in trainer.callback_metrics


def test_embeddings_keep_the_labels_of_the_images_in_class_folders(tmp_path, tiny_artifact):
    folder = _tree(tmp_path / "photos", per_class=3)
    with pytest.warns(UserWarning, match="1 of 7 images .* not in a class subfolder"):
        manifest = embed(tiny_artifact, str(folder), tmp_path / "emb", num_workers=0, progress=False)
    emb = read_embeddings(tmp_path / "emb")
    assert manifest["classes"] == ["cat", "dog"]
    assert {s: lab for s, lab in zip(emb.sources, emb.labels)} == {
        **{f"cat/IMG_{i}.png": 0 for i in range(3)},
        **{f"dog/IMG_{i}.png": 1 for i in range(3)},
        "IMG_stray.png": None,
    }
