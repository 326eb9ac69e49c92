"""Tests for infomax.data: real CIFAR-10 / Fashion-MNIST files, idx reader, images, DataModules."""

from __future__ import annotations

import gc
import gzip
import io
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DistributedSampler

from infomax import data as D
from infomax.data import (
    CIFAR10,
    DATASET_STATS,
    MNIST,
    DataNotFoundError,
    FashionMNIST,
    ImageFolder,
    list_images,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image,
    load_image_folder,
    load_mnist,
    read_idx,
    resolve_data_dir,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the idx format (big-endian header and data)."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    payload = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def synthetic_images(n: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first pixel is their index (to identify them after shuffling), labels i % 10."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n, dtype=np.uint8)
    return images, (np.arange(n) % 10).astype(np.uint8)


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz_train: bool = True) -> Path:
    """A small MNIST tree: gzipped train files, plain test files (both forms are supported)."""
    raw = root / "MNIST" / "raw"
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, not gz_train)):
        images, labels = synthetic_images(n)
        suffix = ".gz" if gz else ""
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


def ids(images: torch.Tensor) -> list[int]:
    """Identities of synthetic images (their first pixel)."""
    return images[:, 0, 0, 0].tolist()


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# data directory and errors
# --------------------------------------------------------------------------------------------


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFOMAX_DATA_DIR", raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "infomax" / "data"
    monkeypatch.setenv("INFOMAX_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"


@pytest.mark.parametrize("name", ["cifar10", "fmnist", "mnist"])
def test_missing_data_names_folder_and_fix(tmp_path, name):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path) in message and "INFOMAX_DATA_DIR" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)
    # Survives pickling (raised inside DataLoader workers / DDP processes).
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == message and clone.folder == info.value.folder


def test_missing_data_uses_env_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("INFOMAX_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="INFOMAX_DATA_DIR") as info:
        load_cifar10(split="test")
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in ("cifar10", "fmnist", "mnist"))
    with pytest.raises(ValueError, match="'valid'"):
        load_dataset("mnist", split="valid")


# --------------------------------------------------------------------------------------------
# real data sets
# --------------------------------------------------------------------------------------------


def test_cifar10_test_batch_real(data_dir):
    images, labels = load_cifar10(data_dir, "test")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert labels[:5].tolist() == [3, 8, 8, 0, 6]  # as in the original release
    # Channel planes land in the right place: pixel (c, 0, 0) is column c * 1024 of the raw row.
    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"]
    assert images[7].flatten().tolist() == raw[7].tolist()
    # Channel means of the test split are close to the standard (train) statistics.
    mean = images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(DATASET_STATS["cifar10"]["mean"]), atol=0.01)


def test_fashion_mnist_t10k_real(data_dir):
    images, labels = load_fashion_mnist(data_dir, "test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8 and images.is_contiguous()
    assert labels.dtype == torch.int64 and torch.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert labels[0].item() == 9  # ankle boot, as in the original release
    mean = images.float().div(255).mean().item()
    assert abs(mean - DATASET_STATS["fmnist"]["mean"][0]) < 0.01
    for alias in ("fashion-mnist", "fashion_mnist", "FMNIST"):
        _, alias_labels = load_dataset(alias, data_dir, "test")
        assert torch.equal(alias_labels, labels)


# --------------------------------------------------------------------------------------------
# idx reader and MNIST
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "a-idx3-ubyte", array, gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b"\x08\x03" + b[2:], "magic"),  # first two bytes must be zero
        (lambda b: b[:2] + b"\x07" + b[3:], "magic"),  # unknown type code
        (lambda b: b[:-10], "truncated"),  # data cut short
        (lambda b: b[:7], "truncated"),  # header cut short
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:3], "not an idx file"),
        (lambda b: gzip.compress(b)[:-12], "gzip"),  # truncated gzip stream
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path, mutate, match):
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((2, 4, 4), np.uint8))))
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_load_mnist_gz_and_plain(tmp_path):
    write_mnist(tmp_path, n_train=30, n_test=12)  # train gzipped, test plain
    images, labels = load_mnist(tmp_path, "train")
    expected, expected_labels = synthetic_images(30)
    assert images.shape == (30, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images[:, 0], torch.from_numpy(expected))
    assert labels.tolist() == expected_labels.tolist()
    test_images, _ = load_dataset("MNIST", tmp_path, "test")
    assert test_images.shape == (12, 1, 28, 28)


def test_load_mnist_prefers_plain_file_over_gz(tmp_path):
    write_mnist(tmp_path, n_train=10, n_test=10)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.full(10, 7, np.uint8))  # beside the .gz one
    assert load_mnist(tmp_path)[1].tolist() == [7] * 10


def test_load_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, n_train=10)
    label_file = write_idx(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="10 labels") as info:
        load_mnist(tmp_path)
    assert str(label_file) in str(info.value)


# --------------------------------------------------------------------------------------------
# CIFAR-10 pickle safety
# --------------------------------------------------------------------------------------------


def test_cifar10_small_batch_and_unsafe_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [1, 2, 3, 4], "batch_label": "x"}, f, protocol=2)
    images, labels = load_cifar10(tmp_path, "test")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [1, 2, 3, 4]
    assert images[1, 2, 0, 0].item() == data[1, 2048]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print") as info:
        load_cifar10(tmp_path, "test")
    assert "test_batch" in str(info.value)


# --------------------------------------------------------------------------------------------
# single images
# --------------------------------------------------------------------------------------------


def three_bands(width: int, height: int, horizontal: bool = True) -> Image.Image:
    """Red | green | blue thirds, along the width (horizontal) or the height."""
    arr = np.zeros((height, width, 3), np.uint8)
    n = width if horizontal else height
    for i, sl in enumerate((slice(0, n // 3), slice(n // 3, 2 * n // 3), slice(2 * n // 3, n))):
        if horizontal:
            arr[:, sl, i] = 255
        else:
            arr[sl, :, i] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("horizontal", [True, False])
def test_load_image_resizes_shorter_side_and_center_crops(horizontal):
    img = three_bands(90, 30) if horizontal else three_bands(30, 90, horizontal=False)
    out = load_image(img, size=10, channels=3)
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    inner = out[:, 2:8, 2:8].int()
    assert (inner[1] > 200).all() and (inner[0] < 50).all() and (inner[2] < 50).all()  # the green middle


def test_load_image_sources_and_channels(tmp_path):
    img = Image.new("RGB", (20, 12), (255, 0, 0))
    path = tmp_path / "red.png"
    img.save(path)
    from_path = load_image(path, 8, 3)
    from_str = load_image(str(path), 8, 3)
    from_bytes = load_image(path.read_bytes(), 8, 3)
    fileobj = io.BytesIO(path.read_bytes())
    from_file = load_image(fileobj, 8, 3)
    assert not fileobj.closed  # the caller's file stays usable
    for out in (from_path, from_str, from_bytes, from_file):
        assert out.shape == (3, 8, 8) and out[:, 4, 4].tolist() == [255, 0, 0]
    grey = load_image(path, 8, channels=1)
    assert grey.shape == (1, 8, 8) and abs(grey[0, 4, 4].item() - 76) <= 1  # ITU-R 601 luma of red
    upscaled = load_image(Image.new("L", (4, 4), 100), 16, channels=3)
    assert upscaled.shape == (3, 16, 16) and (upscaled == 100).all()  # L replicated to RGB
    with pytest.raises(ValueError, match="channels"):
        load_image(img, 8, channels=2)
    with pytest.raises(ValueError, match="size"):
        load_image(img, 0, 3)
    with pytest.raises(UnidentifiedImageError):
        load_image(b"not an image", 8, 3)


def test_load_image_modes():
    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert (load_image(transparent, 8, 3) == 255).all()  # composited on white, not red/black
    half = Image.new("LA", (10, 10), (0, 128))
    assert abs(load_image(half, 8, 1)[0, 4, 4].item() - 127) <= 1

    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert load_image(palette, 8, 3)[:, 4, 4].tolist() == [0, 0, 255]
    palette.info["transparency"] = 1
    assert load_image(palette, 8, 3)[:, 4, 4].tolist() == [255, 255, 255]

    sixteen = Image.fromarray(np.array([[0, 257 * 100], [65535, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    out = load_image(sixteen, 2, 1)
    assert out[0].tolist() == [[0, 100], [255, 255]]  # rescaled, not clipped to white
    as_i = load_image(sixteen.convert("I"), 2, 3)
    assert as_i[:, 0, 1].tolist() == [100, 100, 100]
    floats = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    assert load_image(floats, 4, 1)[0, 0, 0].item() in (127, 128)

    bilevel = Image.new("1", (9, 9), 1)
    assert (load_image(bilevel, 4, 1) == 255).all()

    cmyk = Image.open(io.BytesIO(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)))
    assert cmyk.mode == "CMYK"
    red = load_image(cmyk, 8, 3)[:, 4, 4].tolist()
    assert red[0] > 230 and red[1] < 30 and red[2] < 30


def test_load_image_applies_exif_orientation():
    # Stored wide: left half red, right half blue. Orientation 6 = display rotated 90 deg clockwise,
    # so the displayed image is tall with red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(jpeg, 20, 3).int()
    top, bottom = out[:, 2, 10], out[:, 17, 10]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_load_image_large_jpeg_uses_draft_and_extreme_aspect():
    big = encode(Image.new("RGB", (1600, 1200), (10, 200, 30)), "JPEG", quality=90)
    out = load_image(big, 16, 3)
    assert out.shape == (3, 16, 16) and abs(out[1, 8, 8].item() - 200) <= 3
    strip = Image.new("RGB", (4000, 3), (0, 0, 255))
    assert load_image(strip, 64, 3).shape == (3, 64, 64)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def make_image_folder(root: Path) -> dict[str, str]:
    """Images of many formats/modes/sizes in cat/ and dog/, plus unreadable and ignored files.

    Returns {relative path: class} for the readable images.
    """
    rng = np.random.default_rng(1)

    def rgb(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    files = {
        "cat/a_palette.png": (rgb(40, 30).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", {}),
        "cat/b_rgba.png": (rgb(20, 50).convert("RGBA"), "PNG", {}),
        "cat/c_grey.JPG": (rgb(64, 64).convert("L"), "JPEG", {}),
        "cat/sub/d_nested.bmp": (rgb(17, 23), "BMP", {}),
        "dog/e_16bit.png": (Image.fromarray(rng.integers(0, 65536, (30, 30), dtype=np.uint16)), "PNG", {}),
        "dog/f_cmyk.jpeg": (rgb(33, 21).convert("CMYK"), "JPEG", {}),
        "dog/g_anim.gif": (rgb(25, 25).convert("P"), "GIF", {}),
        "dog/h.webp": (rgb(12, 40), "WEBP", {}),
        "dog/i.tiff": (rgb(8, 8), "TIFF", {}),
    }
    for rel, (img, fmt, kwargs) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format=fmt, **kwargs)
    good_png = encode(rgb(64, 64), "PNG")
    (root / "dog" / "broken.png").write_bytes(good_png[: len(good_png) // 2])  # truncated
    (root / "cat" / "notes.png").write_text("this is text, not a PNG")
    (root / "cat" / "readme.txt").write_text("ignored: not an image extension")
    (root / "cat" / ".hidden.png").write_bytes(good_png)  # hidden: ignored
    (root / ".thumbs").mkdir()
    (root / ".thumbs" / "x.png").write_bytes(good_png)  # in a hidden folder: ignored
    return {rel: rel.split("/")[0] for rel in files}


def test_list_images_recursive_sorted_filtered(tmp_path):
    root = tmp_path / ".cache" / "imgs"  # the folder itself may sit in a hidden directory
    readable = make_image_folder(root)
    found = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert found == sorted(list(readable) + ["dog/broken.png", "cat/notes.png"])
    with pytest.raises(DataNotFoundError, match="missing"):
        list_images(tmp_path / "missing")


def test_load_image_folder_mixed_files(tmp_path):
    readable = make_image_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_image_folder(tmp_path, size=12, channels=3)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1, messages  # reported once, not per file
    assert messages[0].startswith(f"skipped 2 unreadable files in {tmp_path}, e.g. cat/notes.png: ")
    assert "cannot identify image file" in messages[0]
    assert sorted(Path(p).name for p, _ in data.skipped) == ["broken.png", "notes.png"]

    assert data.images.shape == (len(readable), 3, 12, 12) and data.images.dtype == torch.uint8
    assert data.classes == ["cat", "dog"] and data.labels.dtype == torch.int64
    rel_paths = [Path(p).relative_to(tmp_path).as_posix() for p in data.paths]
    assert rel_paths == sorted(readable)
    assert data.labels.tolist() == [data.classes.index(readable[rel]) for rel in rel_paths]

    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        grey = load_image_folder(tmp_path, size=12, channels=1, num_workers=2)  # threaded decode
        threaded = load_image_folder(tmp_path, size=12, num_workers=2)
    assert grey.images.shape == (len(readable), 1, 12, 12) and grey.paths == data.paths
    assert torch.equal(threaded.images, data.images)


def test_load_image_folder_unlabelled_layouts(tmp_path):
    img = Image.new("RGB", (10, 10), (1, 2, 3))
    flat, single, mixed = tmp_path / "flat", tmp_path / "single", tmp_path / "mixed"
    for path in (
        flat / "a.png",
        flat / "b.png",
        single / "only" / "a.png",
        single / "only" / "b.png",
        mixed / "top.png",
        mixed / "x" / "a.png",
        mixed / "y" / "b.png",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    for folder, n in ((flat, 2), (single, 2)):
        data = load_image_folder(folder, size=8)
        assert data.classes == [] and data.labels.tolist() == [-1] * n and data.skipped == []
    # a stray file beside two class folders: the others keep their labels (tests/test_folder_labels.py)
    with pytest.warns(UserWarning, match="1 of 3 images .* not in a class subfolder"):
        data = load_image_folder(mixed, size=8)
    assert data.classes == ["x", "y"] and data.labels.tolist() == [-1, 0, 1]


def test_load_image_folder_empty_or_unreadable(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_image_folder(tmp_path / "empty", size=8)
    assert str(tmp_path / "empty") in str(info.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_text("nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataNotFoundError, match="could be read") as info:
            load_image_folder(bad, size=8)
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    return write_mnist(tmp_path, n_train=60, n_test=20)


def test_datamodule_split_batches_and_properties(mnist_root):
    dm = MNIST(data_dir=str(mnist_root), batch_size=8, val_size=12, seed=3)
    assert (dm.in_channels, dm.input_size, dm.num_classes, dm.name) == (1, 28, 10, "mnist")
    assert dm.mean == DATASET_STATS["mnist"]["mean"] and dm.std == DATASET_STATS["mnist"]["std"]
    assert dm.hparams["val_size"] == 12 and dm.hparams["batch_size"] == 8
    dm.setup("fit")
    train_ids, val_ids = ids(dm.train_images), ids(dm.val_images)
    assert len(train_ids) == 48 and len(val_ids) == 12
    assert set(train_ids).isdisjoint(val_ids) and set(train_ids) | set(val_ids) == set(range(60))
    assert train_ids == dm.train_indices.tolist() and val_ids == dm.val_indices.tolist()
    assert dm.train_labels.tolist() == [i % 10 for i in train_ids]
    assert dm.test_images.shape == (20, 1, 28, 28)

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert labels.tolist() == [i % 10 for i in ids(images)]

    seen = [i for images, _ in dm.train_dataloader() for i in ids(images)]
    assert sorted(seen) == sorted(train_ids)  # 48 = 6 full batches: every index exactly once
    dm.batch_size = 7  # 48 = 6 * 7 + 6: the short batch is dropped, nothing repeats
    seen = [i for images, _ in dm.train_dataloader() for i in ids(images)]
    assert len(seen) == 42 == len(set(seen)) and set(seen) <= set(train_ids)

    assert [i for b, _ in dm.val_dataloader() for i in ids(b)] == val_ids
    assert [i for b, _ in dm.predict_dataloader() for i in ids(b)] == train_ids  # in order, all
    assert sum(len(b) for b, _ in dm.test_dataloader()) == 20


def test_datamodule_split_is_seeded(mnist_root):
    def split(seed: int, **kwargs) -> tuple[list[int], list[int]]:
        dm = MNIST(data_dir=str(mnist_root), val_size=10, seed=seed, **kwargs)
        dm.setup()
        return ids(dm.train_images), ids(dm.val_images)

    assert split(0) == split(0)
    assert split(0)[1] != split(1)[1]
    train, val = split(0, limit_train=5)
    assert train == split(0)[0][:5] and val == split(0)[1]


def test_datamodule_without_val_and_bad_args(mnist_root):
    dm = MNIST(data_dir=str(mnist_root), val_size=0, batch_size=16)
    dm.setup()
    assert dm.val_dataloader() == [] and dm.val_images is None and len(dm.train_images) == 60
    for kwargs, quoted in (({"batch_size": 0}, "0"), ({"val_size": -1}, "-1"), ({"limit_train": 0}, "0")):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}.*{quoted}"):
            MNIST(data_dir=str(mnist_root), **kwargs)
    with pytest.raises(ValueError, match="val_size=60"):
        MNIST(data_dir=str(mnist_root), val_size=60).setup()


def test_datamodule_under_distributed_sampler(mnist_root):
    """What Lightning does under DDP: rebuild the loader around a DistributedSampler per rank."""
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader

    dm = MNIST(data_dir=str(mnist_root), batch_size=4, val_size=20)
    dm.setup()
    loader = dm.train_dataloader()
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        ddp_loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert ddp_loader.collate_fn is D.collate_batch and ddp_loader.drop_last
        batches = list(ddp_loader)
        assert all(b.shape == (4, 1, 28, 28) and b.dtype == torch.uint8 for b, _ in batches)
        per_rank.append([i for b, _ in batches for i in ids(b)])
    assert len(per_rank[0]) == len(per_rank[1]) == 20
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and set(per_rank[0]) | set(per_rank[1]) == set(ids(dm.train_images))


def test_datamodule_worker_processes(mnist_root):
    dm = MNIST(data_dir=str(mnist_root), batch_size=10, val_size=0, num_workers=2)
    loader = dm.train_dataloader()
    seen = [i for images, _ in loader for i in ids(images)]
    assert sorted(seen) == list(range(60))
    # getitem path (no __getitems__) still yields the same batch structure via default collation
    sample = loader.dataset[3]
    assert sample[0].shape == (1, 28, 28) and D.collate_batch([sample, sample])[0].shape == (2, 1, 28, 28)
    del loader  # stop the persistent workers now rather than at some later garbage collection
    gc.collect()


def test_datamodule_in_trainer(mnist_root):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(28 * 28, 2)
            self.seen: list[tuple[torch.dtype, tuple[int, ...]]] = []

        def training_step(self, batch, batch_idx):
            images, labels = batch
            self.seen.append((images.dtype, tuple(images.shape)))
            return self.layer(images.flatten(1).float() / 255).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.seen.append((batch[0].dtype, tuple(batch[0].shape)))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for val_size in (10, 0):
        probe = Probe()
        trainer = pl.Trainer(
            max_steps=2,
            limit_val_batches=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            val_check_interval=2,
        )
        trainer.fit(probe, datamodule=MNIST(data_dir=str(mnist_root), batch_size=8, val_size=val_size))
        assert trainer.global_step == 2
        assert all(dtype == torch.uint8 and shape[1:] == (1, 28, 28) for dtype, shape in probe.seen)
        assert len(probe.seen) == (3 if val_size else 2)


@pytest.mark.parametrize("cls, shape", [(CIFAR10, (3, 32, 32)), (FashionMNIST, (1, 28, 28))])
def test_real_datamodules(data_dir, cls, shape):
    dm = cls(data_dir=str(data_dir), batch_size=16, val_size=1000, limit_train=256, seed=0)
    dm.setup()
    assert dm.train_images.shape == (256, *shape) and dm.val_images.shape == (1000, *shape)
    assert dm.test_images.shape == (10000, *shape) and dm.num_classes == 10
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (16, *shape) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert len(dm.mean) == len(dm.std) == shape[0] == dm.in_channels and dm.input_size == shape[1]


def test_imagefolder_datamodule(tmp_path):
    rng = np.random.default_rng(2)
    for cls_name, n in (("ants", 7), ("bees", 5)):
        (tmp_path / cls_name).mkdir()
        for i in range(n):
            size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / cls_name / f"{i}.png")
    dm = ImageFolder(path=str(tmp_path), input_size=16, batch_size=4, val_size=0.25, seed=1)
    assert (dm.in_channels, dm.input_size, dm.name) == (3, 16, "imagefolder")
    assert dm.num_classes == 2  # loads the folder on first access (the CLI links it at instantiation)
    assert len(dm.mean) == len(dm.std) == 3
    expected_mean = dm.train_images.float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(dm.mean), expected_mean, atol=1e-4)
    assert all(0.2 < s < 0.4 for s in dm.std)  # uniform noise: std ~ 0.29
    assert len(dm.train_images) == 9 and len(dm.val_images) == 3
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    assert dm.test_dataloader() == []

    grey = ImageFolder(path=str(tmp_path), input_size=8, channels=1, val_size=2, batch_size=64)
    grey.setup()
    assert grey.train_images.shape == (10, 1, 8, 8) and len(grey.mean) == 1
    with pytest.warns(UserWarning, match="partial batch"):
        assert len(next(iter(grey.train_dataloader()))[0]) == 10  # fewer images than one batch
    assert ImageFolder(path=str(tmp_path), val_size=3.0).val_size == 3  # "3" from a config file

    for bad in (1.5, -1, True, float("nan")):
        with pytest.raises(ValueError, match="val_size"):
            ImageFolder(path=str(tmp_path), val_size=bad)
    with pytest.raises(ValueError, match="val_size=12"):
        ImageFolder(path=str(tmp_path), val_size=12).setup()
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(path=str(tmp_path), channels=4)
