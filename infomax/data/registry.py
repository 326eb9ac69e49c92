"""What is known of the standard data sets without reading them: their names and spellings, image
shape and per-channel statistics, class names and splits. Pure Python (no torch, no Lightning), so
the service and the commands can check a name or name a class before loading anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infomax.errors import SettingError

SPLITS = ("train", "test")

# Standard per-channel statistics of the official training splits (pixel values in [0, 1]).
DATASET_STATS: dict[str, dict[str, Any]] = {
    "cifar10": dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), size=32, channels=3, num_classes=10),
    "fmnist": dict(mean=(0.2860,), std=(0.3530,), size=28, channels=1, num_classes=10),
    "mnist": dict(mean=(0.1307,), std=(0.3081,), size=28, channels=1, num_classes=10),
}

# Accepted spellings of each data set name, mapped to the canonical key of DATASET_STATS.
_DATASET_ALIASES = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "fmnist": "fmnist",
    "fashion-mnist": "fmnist",
    "fashion_mnist": "fmnist",
    "fashionmnist": "fmnist",
    "mnist": "mnist",
}

# The class names of each data set, in label order.
CLASS_NAMES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


def canonical_dataset_name(name: str) -> str:
    """Map a user-facing data set name (any accepted spelling) to its DATASET_STATS key."""
    key = str(name).strip().lower()
    if key not in _DATASET_ALIASES:
        valid = ", ".join(sorted(_DATASET_ALIASES))
        raise SettingError(f"unknown dataset {name!r}; valid names: {valid}")
    return _DATASET_ALIASES[key]


def is_dataset_name(data: str) -> bool:
    """Whether ``data`` names a standard data set (any accepted spelling) rather than a folder."""
    try:
        canonical_dataset_name(data)
        return True
    except ValueError:
        return False


def check_split(split: str) -> str:
    """``split`` itself when a standard data set has it; a ValueError naming the choices otherwise."""
    if split not in SPLITS:
        raise SettingError(f"split {split!r} does not exist: use --split train or --split test", setting="split")
    return split


def check_fits(encoder_shape: tuple[int, int], name: str, model: str | Path | None = None) -> None:
    """Refuse a data set whose images do not have the shape the encoder takes (channels, size)."""
    stats = DATASET_STATS[name]
    channels, size = encoder_shape
    if (stats["channels"], stats["size"]) != (channels, size):
        which = f"the artifact {model}" if model else "the encoder"
        raise SettingError(
            f"{which} takes {channels}x{size}x{size} images but {name} holds "
            f"{stats['channels']}x{stats['size']}x{stats['size']}: use an encoder trained on {name} "
            f"(or an image folder, which is resized to fit)"
        )


def recorded_classes(record: dict | None) -> list[str] | None:
    """The class names of the labels of an index, from what its ``index.json`` records of the
    embedded data (``infomax index build`` copies them from the embeddings): its own ``classes``
    (a folder's subfolders), else the registry's names of the data set it names, else None."""
    record = record or {}
    classes = record.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return classes
    data = record.get("data")
    return CLASS_NAMES.get(data) if isinstance(data, str) else None
