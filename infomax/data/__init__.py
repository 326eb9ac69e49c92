"""Data for Deep INFOMAX: the standard data sets and folders of images, read into memory, and the
LightningDataModules that train on them.

    registry     names, statistics, class names and splits of the standard data sets (pure Python)
    datadir      where the data lives ($INFOMAX_DATA_DIR) and DataNotFoundError
    readers      CIFAR-10 pickles and idx files (MNIST, Fashion-MNIST) -> uint8 tensors
    folder       a folder of images: listing, stable ids, class labels, decoding, unreadable files
    sources      resolve_source: what one ``--data`` value names (embed and the commands)
    datasets     in-memory uint8 data sets and their batching
    datamodules  CIFAR10, FashionMNIST, MNIST, ImageFolder: the only part that imports Lightning

Every name is imported on first use (module ``__getattr__``), so reading a data set or checking a
name never imports Lightning, and ``infomax.data.CIFAR10`` (the ``class_path`` of the training
configs and of saved hyper-parameters) still resolves.
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it.
_EXPORTS = {
    **dict.fromkeys(
        [
            "CLASS_NAMES",
            "DATASET_STATS",
            "SPLITS",
            "canonical_dataset_name",
            "check_fits",
            "check_split",
            "is_dataset_name",
            "recorded_classes",
        ],
        "registry",
    ),
    **dict.fromkeys(["DATA_DIR_ENV", "DEFAULT_DATA_DIR", "DataNotFoundError", "resolve_data_dir"], "datadir"),
    **dict.fromkeys(
        ["CIFAR10_FOLDER", "load_cifar10", "load_dataset", "load_fashion_mnist", "load_mnist", "read_idx"], "readers"
    ),
    **dict.fromkeys(
        [
            "FileImages",
            "FolderData",
            "ID_BITS",
            "IMAGE_EXTENSIONS",
            "UNREADABLE_ERRORS",
            "error_reason",
            "folder_ids",
            "folder_labels",
            "folder_labels_note",
            "list_images",
            "load_image_folder",
            "path_id",
        ],
        "folder",
    ),
    **dict.fromkeys(["resolve_source"], "sources"),
    **dict.fromkeys(["DeviceBatches", "InMemoryDataset", "collate_batch"], "datasets"),
    **dict.fromkeys(["CIFAR10", "FashionMNIST", "ImageFolder", "InMemoryDataModule", "MNIST"], "datamodules"),
}
# Decoding one image lives in infomax.imageio (the service uses it); re-exported as before.
_IMAGEIO = ("ImageSource", "load_image")
_SUBMODULES = ("datadir", "datamodules", "datasets", "folder", "readers", "registry", "sources")

__all__ = [
    "DATASET_STATS",
    "CIFAR10",
    "DataNotFoundError",
    "FashionMNIST",
    "FolderData",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "InMemoryDataModule",
    "InMemoryDataset",
    "MNIST",
    "collate_batch",
    "folder_ids",
    "list_images",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_image",
    "load_image_folder",
    "load_mnist",
    "path_id",
    "read_idx",
    "resolve_data_dir",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _IMAGEIO:
        return getattr(importlib.import_module("infomax.imageio"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_IMAGEIO, *_SUBMODULES})
