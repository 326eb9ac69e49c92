"""The LightningDataModules training uses: CIFAR10, FashionMNIST, MNIST and ImageFolder. The only
part of ``infomax.data`` that imports Lightning (``infomax.data`` loads it on first use of these).

Each holds its train/val/test splits as uint8 tensors in memory (:mod:`infomax.data.datasets`).
Normalisation is left to the model, which does it on its own device after a cheap ``uint8``
transfer; the data modules expose the ``mean``/``std`` it needs.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from infomax.data.datadir import PathLike, resolve_data_dir
from infomax.data.datasets import DeviceBatches, InMemoryDataset, collate_batch
from infomax.data.folder import FolderData, load_image_folder
from infomax.data.readers import load_dataset
from infomax.data.registry import DATASET_STATS, SPLITS
from infomax.errors import DataError, SettingError
from infomax.imageio import _check_size_channels
from infomax.validate import non_negative_int, positive_int

__all__ = ["CIFAR10", "FashionMNIST", "ImageFolder", "InMemoryDataModule", "MNIST"]

logger = logging.getLogger(__name__)


@dataclass
class _Splits:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None


def _split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (train, val) index split; both sorted so data keeps its original order."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    return perm[val_size:].sort().values, perm[:val_size].sort().values


class InMemoryDataModule(pl.LightningDataModule):
    """Base class: train/val/test held as uint8 tensors, batched as ``(uint8 [B,C,H,W], int64 [B])``.

    Subclasses implement :meth:`_load` and the ``in_channels``/``input_size``/``mean``/``std``/
    ``num_classes``/``name`` properties. Labels are -1 where unknown. No normalisation here:
    the model normalises on its device.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, on_device: bool = False) -> None:
        super().__init__()
        positive_int("batch_size", batch_size)
        non_negative_int("num_workers", num_workers)
        self.on_device = on_device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self.val_images: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None
        self.test_images: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None
        self._loaded = False

    # -- to be provided by subclasses -----------------------------------------------------
    def _load(self) -> _Splits:
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    @property
    def mean(self) -> tuple[float, ...]:
        raise NotImplementedError

    @property
    def std(self) -> tuple[float, ...]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def name(self) -> str:  # type: ignore[override]  # LightningDataModule has a plain attribute
        raise NotImplementedError

    # -- loading ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load all splits once (later calls, e.g. per stage, are no-ops)."""
        if self._loaded:
            return
        splits = self._load()
        expected = (self.in_channels, self.input_size, self.input_size)
        for split in ("train", "val", "test"):
            images = getattr(splits, f"{split}_images")
            labels = getattr(splits, f"{split}_labels")
            if images is None:
                continue
            if images.dtype != torch.uint8 or tuple(images.shape[1:]) != expected:
                raise DataError(
                    f"{self.name} {split} images are {images.dtype} {list(images.shape)}, "
                    f"expected uint8 [N, {', '.join(map(str, expected))}]"
                )
            setattr(self, f"{split}_images", images.contiguous())
            setattr(self, f"{split}_labels", labels.to(torch.int64))
        self._loaded = True
        logger.info(
            "%s: %d train, %d val, %d test images",
            self.name,
            len(splits.train_images),
            0 if self.val_images is None else len(self.val_images),
            0 if self.test_images is None else len(self.test_images),
        )

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.setup()

    # -- loaders ----------------------------------------------------------------------------
    def _loader(self, images: torch.Tensor | None, labels: torch.Tensor | None, train: bool = False) -> DataLoader | list:
        self._ensure_loaded()
        if images is None or labels is None or len(images) == 0:  # setup sets both or neither
            return []
        drop_last = train
        if train and len(images) < self.batch_size:
            # drop_last would leave zero batches: better a short batch than silently no training.
            warnings.warn(
                f"{self.name}: only {len(images)} train images for batch_size={self.batch_size}; keeping the partial batch",
                stacklevel=3,
            )
            drop_last = False
        return DataLoader(
            InMemoryDataset(images, labels),
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_batch,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches | list:
        """Shuffled train batches, incomplete last batch dropped. With ``on_device`` and a GPU, the
        whole train split is copied to the GPU once and batches are sliced there."""
        self._ensure_loaded()
        trainer = getattr(self, "trainer", None)
        images, labels = self.train_images, self.train_labels
        if self.on_device and trainer is not None and trainer.strategy.root_device.type != "cpu":
            if images is None or labels is None or len(images) < self.batch_size * trainer.world_size:
                raise SettingError(
                    f"{self.name}: {0 if images is None else len(images)} train images are too few for batch_size="
                    f"{self.batch_size} on {trainer.world_size} device(s) with on_device=True",
                    setting="batch_size",
                )
            return DeviceBatches(
                images,
                labels,
                self.batch_size,
                trainer.strategy.root_device,
                seed=self.seed,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
            )
        return self._loader(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order, or [] when there is no validation split."""
        self._ensure_loaded()
        return self._loader(self.val_images, self.val_labels)

    def test_dataloader(self) -> DataLoader | list:
        """Test batches in order, or [] when there is no test split."""
        self._ensure_loaded()
        return self._loader(self.test_images, self.test_labels)

    def predict_dataloader(self) -> DataLoader | list:
        """The train split in its stored order, every image once (e.g. to build an index)."""
        self._ensure_loaded()
        return self._loader(self.train_images, self.train_labels)


class _StandardDataModule(InMemoryDataModule):
    """A standard data set: val carved from the official train split, test = official test."""

    dataset_name = ""  # key of DATASET_STATS, set by subclasses

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        val_size: int = 5000,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
        limit_train: int | None = None,
        on_device: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        non_negative_int("val_size", val_size)
        if limit_train is not None:
            positive_int("limit_train", limit_train)
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir)
        self.val_size = val_size
        self.download = download
        self.limit_train = limit_train
        self.train_indices: torch.Tensor | None = None  # into the official train split
        self.val_indices: torch.Tensor | None = None

    @property
    def _stats(self) -> dict[str, Any]:
        return DATASET_STATS[self.dataset_name]

    @property
    def in_channels(self) -> int:
        return self._stats["channels"]

    @property
    def input_size(self) -> int:
        return self._stats["size"]

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self._stats["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self._stats["std"])

    @property
    def num_classes(self) -> int:
        return self._stats["num_classes"]

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.dataset_name

    def prepare_data(self) -> None:
        """Download missing files (Lightning calls this on one process only)."""
        if self.download:
            for split in SPLITS:
                load_dataset(self.dataset_name, self.data_dir, split=split, download=True)

    def _load(self) -> _Splits:
        images, labels = load_dataset(self.dataset_name, self.data_dir, "train", download=self.download)
        if self.val_size >= len(images):
            raise SettingError(
                f"val_size={self.val_size} must be smaller than the {len(images)} train images", setting="val_size"
            )
        train_idx, val_idx = _split_indices(len(images), self.val_size, self.seed)
        if self.limit_train is not None:
            train_idx = train_idx[: self.limit_train]
        self.train_indices, self.val_indices = train_idx, val_idx
        test_images, test_labels = load_dataset(self.dataset_name, self.data_dir, "test", download=self.download)
        has_val = len(val_idx) > 0
        return _Splits(
            images[train_idx],
            labels[train_idx],
            images[val_idx] if has_val else None,
            labels[val_idx] if has_val else None,
            test_images,
            test_labels,
        )


class CIFAR10(_StandardDataModule):
    """CIFAR-10 (32x32 RGB, 10 classes) from ``data_dir/cifar-10-batches-py``."""

    dataset_name = "cifar10"


class FashionMNIST(_StandardDataModule):
    """Fashion-MNIST (28x28 grey, 10 classes) from ``data_dir/FashionMNIST/raw``."""

    dataset_name = "fmnist"


class MNIST(_StandardDataModule):
    """MNIST (28x28 grey, 10 classes) from ``data_dir/MNIST/raw``."""

    dataset_name = "mnist"


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images in [0, 1], in float64 chunks to bound memory."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.pow(2).sum(dim=(0, 2, 3))
    count = images.numel() / channels
    mean = total / count
    var = (total_sq / count - mean.pow(2)).clamp_min(0.0)
    # A constant channel would give std 0 and an infinite normalisation: floor at one grey level.
    std = var.sqrt().clamp_min(1.0 / 255.0)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def _parse_val_size(val_size: float | int) -> float | int:
    """Validate an ImageFolder ``val_size``: a fraction in [0, 1) or a non-negative count.

    Integral floats >= 1 count as counts, because a config/CLI value "500" may arrive as 500.0.
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or not math.isfinite(val_size):
        raise SettingError(f"val_size must be a fraction in [0, 1) or a count, got {val_size!r}", setting="val_size")
    if val_size < 0:
        raise SettingError(f"val_size must be non-negative, got {val_size!r}", setting="val_size")
    if isinstance(val_size, float) and val_size >= 1.0:
        if not val_size.is_integer():
            raise SettingError(f"val_size must be a fraction in [0, 1) or a whole count, got {val_size!r}", setting="val_size")
        return int(val_size)
    return val_size


def _labelled_only(data: FolderData, folder: PathLike) -> FolderData:
    """Training keeps only the images with a class when the folder has classes: the k-NN monitor
    (``val/knn_top1``, and the best checkpoint by it) needs every train and val image labelled, and
    a few stray files at the top must not cost the others their labels. Says what it left out."""
    keep = data.labels >= 0
    if not data.classes or bool(keep.all()):
        return data
    left_out = [Path(p).name for p, k in zip(data.paths, keep.tolist()) if not k]
    warnings.warn(
        f"{len(left_out)} image(s) of {folder} without a class (e.g. {left_out[0]}) are left out of "
        f"training, so that the other {int(keep.sum())} keep their labels (val/knn_top1 and the best "
        f"checkpoint by it); move them into a class subfolder to train on them",
        stacklevel=3,
    )
    paths = [p for p, k in zip(data.paths, keep.tolist()) if k]
    return FolderData(data.images[keep], data.labels[keep], paths, data.classes, data.skipped)


class ImageFolder(InMemoryDataModule):
    """A folder of images (optionally one subfolder per class), resized and center-cropped.

    ``val_size`` is a fraction (float in [0, 1)) or a count (int) of images held out, chosen
    with a seeded permutation. There is no test split. ``mean``/``std`` are computed from the
    train images; properties that need the data load it on first access.
    """

    def __init__(
        self,
        path: str,
        input_size: int = 32,
        channels: int = 3,
        batch_size: int = 64,
        val_size: float | int = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        on_device: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, on_device=on_device)
        positive_int("input_size", input_size)
        _check_size_channels(input_size, channels)
        self.save_hyperparameters()
        self.val_size = _parse_val_size(val_size)
        self.path = path
        self._input_size = input_size
        self._channels = channels
        self.classes: list[str] = []
        self.paths: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.train_indices: torch.Tensor | None = None  # into ``paths``
        self.val_indices: torch.Tensor | None = None
        self._mean: tuple[float, ...] | None = None
        self._std: tuple[float, ...] | None = None

    @property
    def in_channels(self) -> int:
        return self._channels

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self._stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._stats()[1]

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The train split's channel mean and std (measured by _load)."""
        self._ensure_loaded()
        if self._mean is None or self._std is None:  # _load measures them, or raises
            raise DataError(f"{self.path}: no train images to measure the channel statistics on")
        return self._mean, self._std

    @property
    def num_classes(self) -> int:
        self._ensure_loaded()
        return len(self.classes)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "imagefolder"

    def _val_count(self, n: int) -> int:
        count = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if count >= n:
            raise SettingError(f"val_size={self.val_size!r} leaves no train images out of {n} in {self.path}", setting="val_size")
        return count

    def _load(self) -> _Splits:
        data = _labelled_only(
            load_image_folder(self.path, self._input_size, self._channels, num_workers=self.num_workers), self.path
        )
        self.classes, self.paths, self.skipped = data.classes, data.paths, data.skipped
        train_idx, val_idx = _split_indices(len(data.images), self._val_count(len(data.images)), self.seed)
        self.train_indices, self.val_indices = train_idx, val_idx
        train_images = data.images[train_idx]
        self._mean, self._std = _channel_stats(train_images)
        has_val = len(val_idx) > 0
        return _Splits(
            train_images,
            data.labels[train_idx],
            data.images[val_idx] if has_val else None,
            data.labels[val_idx] if has_val else None,
        )
