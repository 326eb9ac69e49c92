"""The standard data sets read from their files: idx files (MNIST, Fashion-MNIST, plain or gzipped)
and CIFAR-10's python pickles, each into one uint8 image tensor and int64 labels.

Files are read directly rather than through ``torchvision.datasets``, because torchvision refuses
files whose md5 differs from the original release (the offline CIFAR-10 copy is such a case).
torchvision is still used to *download* missing files when ``download=True``.
"""

from __future__ import annotations

import gzip
import logging
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infomax.data.datadir import DataNotFoundError, PathLike, resolve_data_dir
from infomax.data.registry import canonical_dataset_name, check_split
from infomax.errors import DataError

__all__ = ["CIFAR10_FOLDER", "load_cifar10", "load_dataset", "load_fashion_mnist", "load_mnist", "read_idx"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# idx files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
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
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file (plain or gzipped) into a native-endian numpy array.

    Raises ValueError naming the file when the magic number, the dimensions or the length
    do not describe a valid idx file (e.g. a truncated download).
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an idx file (only {len(data)} bytes)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: bad idx magic number 0x{data[:4].hex()} (expected 0x0000TTNN)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(f"{path}: idx file {what}: dims {list(dims)} need {expected} data bytes, found {actual}")
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


def _load_idx_dataset(
    root: PathLike | None, folder_name: str, split: str, download: bool, downloader: Callable[[Path, str], None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST-layout data set from ``root/folder_name/raw``."""
    check_split(split)
    root = resolve_data_dir(root)
    raw = root / folder_name / "raw"
    stems = _idx_stems(split)
    files = [_idx_file(raw, stem) for stem in stems]
    if download and None in files:
        downloader(root, split)
        files = [_idx_file(raw, stem) for stem in stems]
    image_file, label_file = files
    if image_file is None or label_file is None:
        raise DataNotFoundError(raw, [f"{stem}[.gz]" for stem in stems])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{image_file}: expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
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


def load_mnist(root: PathLike | None = None, split: str = "train", download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from ``root/MNIST/raw``: uint8 images [N, 1, 28, 28] and int64 labels [N]."""
    return _load_idx_dataset(root, "MNIST", split, download, _torchvision_download("MNIST"))


def load_fashion_mnist(
    root: PathLike | None = None, split: str = "train", download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
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
            from numpy.core import multiarray  # type: ignore[no-redef]
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
        raise DataError(f"{path}: not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: unexpected CIFAR-10 shapes data={list(data.shape)} labels={list(labels.shape)}")
    return data, labels


def load_cifar10(root: PathLike | None = None, split: str = "train", download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from ``root/cifar-10-batches-py``: uint8 images [N, 3, 32, 32], int64 labels [N]."""
    check_split(split)
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


def load_dataset(
    name: str, root: PathLike | None = None, split: str = "train", download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a standard data set by name ("cifar10", "fmnist"/"fashion-mnist", "mnist")."""
    return _LOADERS[canonical_dataset_name(name)](root, split=split, download=download)
