"""`infomax knn-grid`: the picture's geometry, that tiles show the source pixels exactly (colour and
grey), the neighbour search against a naive reference, and the argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infomax import load_encoder
from infomax.commands import knn_grid as grid_cmd
from infomax.data import load_dataset
from infomax.grid import (
    MATCH_BORDER,
    MISS_BORDER,
    QUERY_BORDER,
    GridLayout,
    check_grid_args,
    knn_grid,
    make_knn_grid,
    nearest,
)


def upscaled(image: torch.Tensor, scale: int) -> np.ndarray:
    """The reference tile: (C, H, W) uint8 -> (H*s, W*s, 3), every pixel repeated s x s, grey -> R=G=B."""
    a = image.numpy().transpose(1, 2, 0)
    if a.shape[2] == 1:
        a = np.concatenate([a] * 3, axis=2)
    return a.repeat(scale, axis=0).repeat(scale, axis=1)


def crop(grid: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(grid.crop(box))


@pytest.fixture(scope="module")
def cifar(data_dir):
    train, train_y = load_dataset("cifar10", data_dir, "train")
    test, test_y = load_dataset("cifar10", data_dir, "test")
    return train[:300], train_y[:300], test[:40], test_y[:40]


@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_nearest_matches_a_naive_search(metric):
    torch.manual_seed(0)
    q, bank = torch.randn(5, 8), torch.randn(50, 8)
    scores, idx = nearest(q, bank, 4, metric, exclude=[3, -1, 10, -1, -1])
    for i in range(5):
        if metric == "cos":
            s = [float(q[i] @ b / (q[i].norm() * b.norm())) for b in bank]
            order = sorted(range(50), key=lambda j: -s[j])
        else:
            s = [float((q[i] - b).norm()) for b in bank]
            order = sorted(range(50), key=lambda j: s[j])
        order = [j for j in order if j != [3, -1, 10, -1, -1][i]][:4]
        assert idx[i].tolist() == order
        np.testing.assert_allclose(scores[i].numpy(), [s[j] for j in order], rtol=1e-4, atol=1e-5)


def test_the_grid_shows_the_source_pixels_and_marks_matches(cifar, tiny_artifact):
    train, train_y, test, test_y = cifar
    encoder = load_encoder(tiny_artifact)
    queries, k, scale = 4, 5, 3
    image, info = knn_grid(
        encoder,
        test,
        train,
        query_labels=test_y,
        bank_labels=train_y,
        class_names=[f"c{i}" for i in range(10)],
        queries=queries,
        k=k,
        scale=scale,
        seed=1,
    )
    layout = GridLayout(rows=queries, cols=k + 1, image_size=32, scale=scale)
    tile_w, tile_h = layout.tile_size
    assert tile_w >= 32 * scale
    assert (
        image.size == layout.size == ((k + 1) * (tile_w + layout.gap) + layout.gap, queries * (tile_h + layout.gap) + layout.gap)
    )
    assert image.mode == "RGB"
    # the neighbours are those of the encoder's codes
    codes = encoder.embed(train)
    _, ref_idx = nearest(encoder.embed(test[info["queries"]]), codes, k, "cos")
    assert info["neighbours"] == ref_idx.tolist()
    for row, qi in enumerate(info["queries"]):
        np.testing.assert_array_equal(crop(image, layout.image_box(row, 0)), upscaled(test[qi], scale))
        left, top, _, _ = layout.tile_box(row, 0)
        assert image.getpixel((left, top)) == QUERY_BORDER
        for col, ni in enumerate(info["neighbours"][row], start=1):
            np.testing.assert_array_equal(crop(image, layout.image_box(row, col)), upscaled(train[ni], scale))
            left, top, _, _ = layout.tile_box(row, col)
            expected = MATCH_BORDER if train_y[ni] == test_y[qi] else MISS_BORDER
            assert image.getpixel((left, top)) == expected


def test_grey_images_stay_grey(data_dir, tiny_grey_artifact):
    train, train_y = load_dataset("fmnist", data_dir, "test")  # any real grey images will do as a bank
    image, info = knn_grid(
        load_encoder(tiny_grey_artifact),
        train[:30],
        train[30:130],
        query_labels=train_y[:30],
        bank_labels=train_y[30:130],
        queries=2,
        k=3,
        scale=2,
    )
    layout = GridLayout(rows=2, cols=4, image_size=28, scale=2)
    assert image.size == layout.size
    q0 = info["queries"][0]
    np.testing.assert_array_equal(crop(image, layout.image_box(0, 0)), upscaled(train[q0], 2))
    n0 = info["neighbours"][0][0]
    np.testing.assert_array_equal(crop(image, layout.image_box(0, 1)), upscaled(train[30 + n0], 2))


def test_the_command_writes_the_png(tmp_path, capsys, data_dir, tiny_artifact):
    out = tmp_path / "grid.png"
    assert (
        grid_cmd.main(
            [
                "--model",
                str(tiny_artifact),
                "--data",
                "cifar10",
                "--out",
                str(out),
                "--queries",
                "3",
                "--k",
                "4",
                "--scale",
                "2",
                "--bank-limit",
                "200",
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == GridLayout(rows=3, cols=5, image_size=32, scale=2).size
    assert "3 queries x 4 neighbours" in capsys.readouterr().out


def test_queries_drawn_from_the_bank_are_not_their_own_neighbours(tmp_path, data_dir, tiny_artifact):
    info = make_knn_grid(
        str(tiny_artifact),
        "cifar10",
        str(tmp_path / "g.png"),
        split="train",
        queries=5,
        k=3,
        bank_limit=100,
        data_dir=str(data_dir),
        metric="l2",
    )
    for q, row in zip(info["queries"], info["neighbours"]):
        assert q not in row
    assert all(a <= b for row in info["scores"] for a, b in zip(row, row[1:])), "l2: closest (smallest) first"


def test_an_image_folder_is_its_own_bank(tmp_path, cifar, tiny_artifact):
    train, train_y, _, _ = cifar
    for i in range(8):
        sub = tmp_path / "photos" / ("cats" if train_y[i] == 3 else "other")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train[i].permute(1, 2, 0).numpy()).save(sub / f"{i}.png")
    info = make_knn_grid(str(tiny_artifact), str(tmp_path / "photos"), str(tmp_path / "g.png"), queries=2, k=3)
    assert (tmp_path / "g.png").is_file()
    for q, row in zip(info["queries"], info["neighbours"]):
        assert q not in row


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "k=0: must be a positive integer"),
        (dict(k=-3), "k=-3"),
        (dict(metric="dot"), "metric='dot': use 'cos'"),
        (dict(scale=0), "scale=0"),
        (dict(queries=0), "queries=0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, match):
    args = dict(k=10, metric="cos", scale=3, queries=10) | kwargs
    with pytest.raises(ValueError, match=match):
        check_grid_args(**args)
    # the command checks them before it even looks for the artifact
    with pytest.raises(ValueError, match=match):
        make_knn_grid(str(tmp_path / "no-artifact"), "cifar10", str(tmp_path / "g.png"), **args)


def test_too_many_neighbours_or_a_bad_output_are_refused(tmp_path, data_dir, tiny_artifact):
    with pytest.raises(ValueError, match="k=50: the bank has only 19 other images"):
        make_knn_grid(
            str(tiny_artifact),
            "cifar10",
            str(tmp_path / "g.png"),
            split="train",
            queries=2,
            k=50,
            bank_limit=20,
            data_dir=str(data_dir),
        )
    with pytest.raises(ValueError, match="ending in .png"):
        make_knn_grid(str(tiny_artifact), "cifar10", str(tmp_path / "g.jpg"))
    with pytest.raises(ValueError, match="takes 3x32x32 images but fmnist holds 1x28x28"):
        make_knn_grid(str(tiny_artifact), "fmnist", str(tmp_path / "g.png"), data_dir=str(data_dir))
