"""Data loading for Deep INFOMAX: standard data sets, image folders and LightningDataModules.

Everything is decoded once into a single ``uint8`` tensor per split and kept in memory:
CIFAR-10 (150 MB), (Fashion-)MNIST (47 MB) and typical image folders fit easily, and batching
then costs one tensor index per batch instead of per-image PIL work in the training loop.
Normalisation is left to the model, which does it on its own device after a cheap ``uint8``
transfer; the data modules expose the ``mean``/``std`` it needs.

Files are read directly (CIFAR-10 pickles, idx files for MNIST-style data) rather than through
``torchvision.datasets``, because torchvision refuses files whose md5 differs from the original
release (the offline CIFAR-10 copy is such a case). torchvision is still used to *download*
missing files when ``download=True``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import pickle
import struct
import unicodedata
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, BinaryIO, Callable, Sequence, Union

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

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

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
from infomax.imageio import ImageSource  # noqa: E402

DATA_DIR_ENV = "INFOMAX_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/infomax/data")
SPLITS = ("train", "test")

# Standard per-channel statistics of the official training splits (pixel values in [0, 1]).
DATASET_STATS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), size=32, channels=3, num_classes=10
    ),
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# Errors and data directory
# --------------------------------------------------------------------------------------------


class DataNotFoundError(FileNotFoundError):
    """Data files are missing: says where we looked, what we expected and how to fix it."""

    DEFAULT_HINT = (
        f"Set {DATA_DIR_ENV} to the folder holding the data, pass data_dir=..., "
        "or use download=True to fetch it."
    )

    def __init__(self, folder: PathLike, expected: Sequence[str] = (), hint: str | None = None) -> None:
        self.folder = Path(folder)
        self.expected = tuple(expected)
        self.hint = self.DEFAULT_HINT if hint is None else hint
        wanted = f": expected {', '.join(self.expected)}" if self.expected else ""
        super().__init__(f"data not found in {self.folder}{wanted}. {self.hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are re-created from their args when pickled (DataLoader workers, DDP);
        # ours has a richer signature than the single message FileNotFoundError stores.
        return (type(self), (self.folder, self.expected, self.hint))


def resolve_data_dir(data_dir: PathLike | None = None) -> Path:
    """Return the data root: explicit ``data_dir`` > ``$INFOMAX_DATA_DIR`` > ``~/.cache/infomax/data``.

    The folder is not created or checked here; loaders raise :class:`DataNotFoundError` when
    their files are missing.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def canonical_dataset_name(name: str) -> str:
    """Map a user-facing data set name (any accepted spelling) to its DATASET_STATS key."""
    key = str(name).strip().lower()
    if key not in _DATASET_ALIASES:
        valid = ", ".join(sorted(_DATASET_ALIASES))
        raise ValueError(f"unknown dataset {name!r}; valid names: {valid}")
    return _DATASET_ALIASES[key]


# --------------------------------------------------------------------------------------------
# idx files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    """Read a file's bytes, transparently decompressing gzip (detected by content, not name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file (plain or gzipped) into a native-endian numpy array.

    Raises ValueError naming the file when the magic number, the dimensions or the length
    do not describe a valid idx file (e.g. a truncated download).
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an idx file (only {len(data)} bytes)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: bad idx magic number 0x{data[:4].hex()} (expected 0x0000TTNN)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: idx file {what}: dims {list(dims)} need {expected} data bytes, found {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    # astype copies into native byte order and gives a writable array (torch.from_numpy wants one).
    return array.astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    """Find ``stem`` in ``folder``, preferring the decompressed file over ``stem.gz``."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _load_idx_dataset(root: PathLike | None, folder_name: str, split: str, download: bool,
                      downloader: Callable[[Path, str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST-layout data set from ``root/folder_name/raw``."""
    _check_split(split)
    root = resolve_data_dir(root)
    raw = root / folder_name / "raw"
    stems = _idx_stems(split)
    files = [_idx_file(raw, stem) for stem in stems]
    if download and None in files:
        downloader(root, split)
        files = [_idx_file(raw, stem) for stem in stems]
    if None in files:
        raise DataNotFoundError(raw, [f"{stem}[.gz]" for stem in stems])
    image_file, label_file = files
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_file}: expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{label_file}: expected {len(images)} labels to match {image_file.name}, got shape {list(labels.shape)}"
        )
    return torch.from_numpy(images).unsqueeze(1).contiguous(), torch.from_numpy(labels.astype(np.int64))


def _torchvision_download(cls_name: str) -> Callable[[Path, str], None]:
    """Return a function that downloads a torchvision data set into ``root`` (online use only)."""

    def download(root: Path, split: str) -> None:
        import torchvision.datasets  # imported lazily: only needed for downloads

        logger.info("downloading %s (%s) into %s", cls_name, split, root)
        root.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, cls_name)(str(root), train=split == "train", download=True)

    return download


def load_mnist(root: PathLike | None = None, split: str = "train",
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from ``root/MNIST/raw``: uint8 images [N, 1, 28, 28] and int64 labels [N]."""
    return _load_idx_dataset(root, "MNIST", split, download, _torchvision_download("MNIST"))


def load_fashion_mnist(root: PathLike | None = None, split: str = "train",
                       download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from ``root/FashionMNIST/raw``: uint8 images [N, 1, 28, 28], int64 labels [N]."""
    return _load_idx_dataset(root, "FashionMNIST", split, download, _torchvision_download("FashionMNIST"))


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# --------------------------------------------------------------------------------------------

CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _numpy_multiarray(name: str) -> Callable[[], Any]:
    def get() -> Any:
        try:  # numpy >= 2 moved the internals; importing numpy.core would warn there
            from numpy._core import multiarray
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)

    return get


def _codecs_encode() -> Callable[..., bytes]:
    import codecs

    return codecs.encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain data: a data file must not run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_multiarray("_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_multiarray("_reconstruct"),
        ("numpy.core.multiarray", "scalar"): _numpy_multiarray("scalar"),
        ("numpy._core.multiarray", "scalar"): _numpy_multiarray("scalar"),
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol-2 pickles.
        ("_codecs", "encode"): _codecs_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return factory()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: (uint8 [N, 3072], int64 [N])."""
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: unexpected CIFAR-10 shapes data={list(data.shape)} labels={list(labels.shape)}")
    return data, labels


def load_cifar10(root: PathLike | None = None, split: str = "train",
                 download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``root/cifar-10-batches-py``: uint8 images [N, 3, 32, 32], int64 labels [N]."""
    _check_split(split)
    root = resolve_data_dir(root)
    folder = root / CIFAR10_FOLDER
    names = _CIFAR10_FILES[split]
    missing = lambda: [n for n in names if not (folder / n).is_file()]  # noqa: E731
    if download and missing():
        _torchvision_download("CIFAR10")(root, split)
    if missing():
        raise DataNotFoundError(folder, names)
    parts = [_read_cifar_batch(folder / n) for n in names]
    data = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    # Rows hold the R, G and B planes of 32x32 in row-major order, i.e. already CHW.
    images = torch.from_numpy(data).reshape(-1, 3, 32, 32).contiguous()
    return images, torch.from_numpy(labels)


_LOADERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "cifar10": load_cifar10,
    "fmnist": load_fashion_mnist,
    "mnist": load_mnist,
}


def load_dataset(name: str, root: PathLike | None = None, split: str = "train",
                 download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a standard data set by name ("cifar10", "fmnist"/"fashion-mnist", "mnist")."""
    return _LOADERS[canonical_dataset_name(name)](root, split=split, download=download)


# --------------------------------------------------------------------------------------------
# Single images and image folders
# --------------------------------------------------------------------------------------------


from infomax.imageio import (  # noqa: E402  (re-exported: the image decoding lives in a Lightning-free module)
    _check_size_channels,
    _high_bit_depth_to_l,
    _pil_to_tensor,
    _prepare,
    _resize_center_crop,
    _to_mode,
    load_image,
)


def list_images(folder: PathLike) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted, case-insensitive extension match).

    Hidden files and folders (name starting with ".", e.g. macOS "._x.jpg" resource forks)
    below ``folder`` are skipped; ``folder`` itself may sit inside a hidden directory.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            folder, [f"a folder of images ({', '.join(IMAGE_EXTENSIONS)})"],
            hint="Pass the path of an existing folder of images.",
        )
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden dirs
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


ID_BITS = 53  # folder ids are below 2**53: exact as JSON numbers everywhere (see path_id)


def path_id(relative: PathLike) -> int:
    """The stable id of a file of a folder: the first 53 bits of the sha256 of its path relative
    to the folder (POSIX separators, Unicode NFC), a non-negative int64 and so never -1.

    Derived from the name alone, so a file keeps its id when others are added or removed, and
    re-embedding a changed folder updates the same items. 53 bits, not 63: JavaScript (the web
    page) and other JSON readers hold numbers as doubles, exact only below 2^53; at a million files
    the odds of a collision (refused by :func:`folder_ids`) are still 1 in 18,000. NFC: the same
    name written by macOS (decomposed accents) and by Linux or Windows (composed) is one file to a
    user."""
    posix = unicodedata.normalize("NFC", PurePath(relative).as_posix())
    return int.from_bytes(hashlib.sha256(posix.encode("utf-8")).digest()[:8], "big") >> (64 - ID_BITS)


def folder_ids(relative_paths: Sequence[PathLike], folder: PathLike = "") -> torch.Tensor:
    """int64 ids (:func:`path_id`) of a folder's files; refuses two files that get one id (two
    names that differ only in their Unicode normalisation, or, at odds of about n^2 / 2^54, a
    hash collision), since one item would silently replace the other in an index."""
    ids = [path_id(p) for p in relative_paths]
    first: dict[int, int] = {}
    for k, id_ in enumerate(ids):
        j = first.setdefault(id_, k)
        if j != k:
            a, b = (PurePath(relative_paths[i]).as_posix() for i in (j, k))
            raise ValueError(
                f"{a!r} and {b!r} in {folder or 'the folder'} "
                f"get the same id {id_} (their names are the same text once Unicode-normalised, or collide "
                f"by chance): rename one of them")
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class FolderData:
    """Images decoded from a folder, in sorted path order."""

    images: torch.Tensor  # uint8 [N, C, S, S]
    labels: torch.Tensor  # int64 [N], -1 when the folder has no class structure
    paths: list[str]
    classes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# Errors that mean "this file is not a usable image" rather than a bug in our code.
_UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _error_reason(exc: BaseException, path: Path) -> str:
    """Short reason for a skipped file, without the path PIL likes to repeat in its messages."""
    message = str(exc)
    for variant in (repr(str(path)), str(path)):
        message = message.replace(variant, "")
    message = message.strip().rstrip(":").strip()
    return message or type(exc).__name__


def _folder_labels(relative_paths: Sequence[Path]) -> tuple[torch.Tensor, list[str]]:
    """Class labels from first-level subfolders when at least two hold more than half of the
    images; an image outside them (a stray file at the top) gets -1, so that one stray file does not
    turn off the labels of all the others. Otherwise all -1 (a flat folder, or one subfolder)."""
    in_classes = [p for p in relative_paths if len(p.parts) >= 2]
    classes = sorted({p.parts[0] for p in in_classes})
    if len(classes) < 2 or 2 * len(in_classes) <= len(relative_paths):
        return torch.full((len(relative_paths),), -1, dtype=torch.int64), []
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[p.parts[0]] if len(p.parts) >= 2 else -1 for p in relative_paths]
    return torch.tensor(labels, dtype=torch.int64), classes


def folder_labels_note(folder: PathLike, relative_paths: Sequence[Path], classes: Sequence[str]) -> str | None:
    """One line saying which images of a folder have no class, when that is not the whole folder's
    plain layout: strays beside the class subfolders, or subfolders holding too few images to be
    taken as classes. None when every image has a class or the folder has no subfolders."""
    outside = [p for p in relative_paths if len(p.parts) < 2]
    if not outside or len(outside) == len(relative_paths):
        return None
    n, example = len(outside), PurePath(outside[0]).as_posix()
    them, are = ("it has", "is") if n == 1 else ("they have", "are")
    if classes:
        return (f"{n} of {len(relative_paths)} images of {folder} {are} not in a class subfolder (e.g. {example}): "
                f"{them} no label; the others keep the labels of their {len(classes)} subfolders. "
                f"Move {'it' if n == 1 else 'them'} into a class subfolder to label {'it' if n == 1 else 'them'}")
    return (f"{n} of {len(relative_paths)} images of {folder} {are} at its top (e.g. {example}), so its subfolders "
            f"are not taken as classes and no image has a label; put every image in a class subfolder (two or "
            f"more) for labels")


def load_image_folder(folder: PathLike, size: int, channels: int = 3, num_workers: int = 0) -> FolderData:
    """Decode every image under ``folder`` to uint8 [N, channels, size, size].

    Unreadable files are skipped and reported once with a single warning. Labels come from
    first-level subfolders when every image sits in one and there are at least two; otherwise
    they are all -1. ``num_workers`` > 0 decodes with that many threads (PIL releases the GIL).
    Raises :class:`DataNotFoundError` when no readable image is found.
    """
    _check_size_channels(size, channels)
    folder = Path(folder).expanduser().absolute()
    candidates = list_images(folder)
    expected = [f"image files ({', '.join(IMAGE_EXTENSIONS)})"]
    if not candidates:
        raise DataNotFoundError(folder, expected, hint="The folder contains no image files.")

    def decode(path: Path) -> torch.Tensor | str:
        try:
            return load_image(path, size, channels)
        except _UNREADABLE_ERRORS as exc:
            return _error_reason(exc, path)

    if num_workers > 0:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(decode, candidates))
    else:
        results = [decode(p) for p in candidates]

    tensors: list[torch.Tensor] = []
    kept: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for path, result in zip(candidates, results):
        if isinstance(result, str):
            skipped.append((str(path), result))
            logger.debug("skipping unreadable image %s: %s", path, result)
        else:
            tensors.append(result)
            kept.append(path)
    if skipped:
        first_path, first_reason = skipped[0]
        noun = "file" if len(skipped) == 1 else "files"
        warnings.warn(
            f"skipped {len(skipped)} unreadable {noun} in {folder}, "
            f"e.g. {Path(first_path).relative_to(folder).as_posix()}: {first_reason}",
            stacklevel=2,
        )
    if not tensors:
        raise DataNotFoundError(
            folder, expected,
            hint=f"None of the {len(candidates)} image files could be read (e.g. {skipped[0][0]}: {skipped[0][1]}).",
        )
    relative = [p.relative_to(folder) for p in kept]
    labels, classes = _folder_labels(relative)
    note = folder_labels_note(folder, relative, classes)
    if note:
        warnings.warn(note, stacklevel=2)
    return FolderData(torch.stack(tensors), labels, [str(p) for p in kept], classes, skipped)


# --------------------------------------------------------------------------------------------
# Datasets and DataModules
# --------------------------------------------------------------------------------------------


class InMemoryDataset(Dataset):
    """(image, label) pairs backed by two tensors; batches are gathered with one index op.

    ``__getitems__`` returns an already stacked ``(images, labels)`` batch, which the DataLoader
    hands to :func:`collate_batch` unchanged. It works with any sampler, including the
    DistributedSampler Lightning installs under DDP.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def collate_batch(batch: Any) -> Any:
    """Pass through batches stacked by ``__getitems__``; stack lists of samples otherwise."""
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


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


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_non_negative(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


class DeviceBatches:
    """Shuffled train batches of a uint8 data set held on one device (a GPU): the data crosses to
    the device once, and each step only slices it, so the loader costs no host work per step.

    Under DDP every rank holds the whole set and takes its own share of each epoch's permutation
    (the same seed on every rank, so shares are disjoint). Incomplete last batches are dropped.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device | str,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.per_rank = len(images) // world_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.images), generator=generator)[: self.per_rank * self.world_size]
        mine = perm[self.rank :: self.world_size].to(self.images.device)
        for i in range(len(self)):
            idx = mine[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


class InMemoryDataModule(pl.LightningDataModule):
    """Base class: train/val/test held as uint8 tensors, batched as ``(uint8 [B,C,H,W], int64 [B])``.

    Subclasses implement :meth:`_load` and the ``in_channels``/``input_size``/``mean``/``std``/
    ``num_classes``/``name`` properties. Labels are -1 where unknown. No normalisation here:
    the model normalises on its device.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, on_device: bool = False) -> None:
        super().__init__()
        _check_positive("batch_size", batch_size)
        _check_non_negative("num_workers", num_workers)
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
                raise ValueError(
                    f"{self.name} {split} images are {images.dtype} {list(images.shape)}, "
                    f"expected uint8 [N, {', '.join(map(str, expected))}]"
                )
            setattr(self, f"{split}_images", images.contiguous())
            setattr(self, f"{split}_labels", labels.to(torch.int64))
        self._loaded = True
        logger.info(
            "%s: %d train, %d val, %d test images", self.name, len(self.train_images),
            0 if self.val_images is None else len(self.val_images),
            0 if self.test_images is None else len(self.test_images),
        )

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.setup()

    # -- loaders ----------------------------------------------------------------------------
    def _loader(self, images: torch.Tensor | None, labels: torch.Tensor | None, train: bool = False
                ) -> DataLoader | list:
        self._ensure_loaded()
        if images is None or len(images) == 0:
            return []
        drop_last = train
        if train and len(images) < self.batch_size:
            # drop_last would leave zero batches: better a short batch than silently no training.
            warnings.warn(
                f"{self.name}: only {len(images)} train images for batch_size={self.batch_size}; "
                "keeping the partial batch",
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
        if self.on_device and trainer is not None and trainer.strategy.root_device.type != "cpu":
            if len(self.train_images) < self.batch_size * trainer.world_size:
                raise ValueError(
                    f"{self.name}: {len(self.train_images)} train images are too few for batch_size="
                    f"{self.batch_size} on {trainer.world_size} device(s) with on_device=True"
                )
            return DeviceBatches(
                self.train_images, self.train_labels, self.batch_size, trainer.strategy.root_device,
                seed=self.seed, rank=trainer.global_rank, world_size=trainer.world_size,
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
        _check_non_negative("val_size", val_size)
        if limit_train is not None:
            _check_positive("limit_train", limit_train)
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
            raise ValueError(f"val_size={self.val_size} must be smaller than the {len(images)} train images")
        train_idx, val_idx = _split_indices(len(images), self.val_size, self.seed)
        if self.limit_train is not None:
            train_idx = train_idx[: self.limit_train]
        self.train_indices, self.val_indices = train_idx, val_idx
        test_images, test_labels = load_dataset(self.dataset_name, self.data_dir, "test", download=self.download)
        has_val = len(val_idx) > 0
        return _Splits(
            images[train_idx], labels[train_idx],
            images[val_idx] if has_val else None, labels[val_idx] if has_val else None,
            test_images, test_labels,
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
        raise ValueError(f"val_size must be a fraction in [0, 1) or a count, got {val_size!r}")
    if val_size < 0:
        raise ValueError(f"val_size must be non-negative, got {val_size!r}")
    if isinstance(val_size, float) and val_size >= 1.0:
        if not val_size.is_integer():
            raise ValueError(f"val_size must be a fraction in [0, 1) or a whole count, got {val_size!r}")
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
    warnings.warn(f"{len(left_out)} image(s) of {folder} without a class (e.g. {left_out[0]}) are left out of "
                  f"training, so that the other {int(keep.sum())} keep their labels (val/knn_top1 and the best "
                  f"checkpoint by it); move them into a class subfolder to train on them", stacklevel=3)
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
        _check_positive("input_size", input_size)
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
        self._ensure_loaded()
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        self._ensure_loaded()
        return self._std

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
            raise ValueError(f"val_size={self.val_size!r} leaves no train images out of {n} in {self.path}")
        return count

    def _load(self) -> _Splits:
        data = _labelled_only(load_image_folder(self.path, self._input_size, self._channels,
                                                num_workers=self.num_workers), self.path)
        self.classes, self.paths, self.skipped = data.classes, data.paths, data.skipped
        train_idx, val_idx = _split_indices(len(data.images), self._val_count(len(data.images)), self.seed)
        self.train_indices, self.val_indices = train_idx, val_idx
        train_images = data.images[train_idx]
        self._mean, self._std = _channel_stats(train_images)
        has_val = len(val_idx) > 0
        return _Splits(
            train_images, data.labels[train_idx],
            data.images[val_idx] if has_val else None, data.labels[val_idx] if has_val else None,
        )
