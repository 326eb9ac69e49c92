"""The images a command works on, named by one ``--data`` value: a standard data set's split or a
folder of images, with each image's stable id, source and label. ``infomax embed`` reads them
through :meth:`ImageSource.dataset`; a data set is held decoded, a folder is decoded lazily (each
rank of a distributed run only decodes its own slice)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from infomax.data.datasets import InMemoryDataset
from infomax.data.folder import IMAGE_EXTENSIONS, FileImages, folder_ids, folder_labels, folder_labels_note, list_images
from infomax.data.readers import load_dataset
from infomax.data.registry import CLASS_NAMES, canonical_dataset_name, check_fits, check_split, is_dataset_name
from infomax.errors import MissingFileError, SettingError
from infomax.validate import optional_positive_int

__all__ = ["ImageSource", "resolve_source"]


@dataclass
class ImageSource:
    """The images to embed, their ids, sources and labels.

    Data sets are held decoded (``images`` uint8 (N, C, S, S)); folders are decoded lazily from
    ``paths`` at the encoder's size and channels, so each rank of a distributed run only decodes
    its own slice. ``labels`` is int64 (N,), -1 where unknown.
    """

    name: str  # data set name ("cifar10") or the folder's absolute path
    kind: str  # "dataset" | "folder"
    split: str | None
    ids: torch.Tensor  # int64 (N,)
    labels: torch.Tensor  # int64 (N,)
    sources: list[str]
    classes: list[str] | None
    images: torch.Tensor | None = None  # uint8 (N, C, S, S), datasets only
    paths: list[Path] | None = None  # folders only
    size: int = 0
    channels: int = 0
    _source_of: dict[int, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def dataset(self) -> Dataset:
        """A map-style dataset of the images and their ids: a data set's ``(images, ids)`` are
        gathered a batch at a time (:class:`InMemoryDataset`, every image good); a folder's files
        give ``(uint8 image, id, error)`` with ``error`` "" for a good image (:class:`FileImages`)."""
        if self.images is not None:
            return InMemoryDataset(self.images, self.ids)
        if self.paths is None:
            raise ValueError(f"image source {self.name!r} holds neither images nor paths")
        return FileImages(self.paths, self.ids, self.size, self.channels)

    def position(self, id_: int) -> int:
        """Index in this source of the image with id ``id_``."""
        if not self._source_of:
            self._source_of = {int(i): p for p, i in enumerate(self.ids.tolist())}
        return self._source_of[int(id_)]

    def label_or_none(self, position: int) -> int | None:
        label = int(self.labels[position])
        return None if label < 0 else label


def resolve_source(
    data: str,
    split: str = "test",
    *,
    channels: int,
    size: int,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    model: str | Path | None = None,
) -> ImageSource:
    """The images named by ``data``: a data set name (cifar10, fmnist, mnist: ``split`` of it,
    read from ``data_dir`` / $INFOMAX_DATA_DIR) or an image folder (all images under it, sorted).

    ``channels``/``size`` are the encoder's; a data set of another shape is refused. ``limit``
    keeps the first N images (a quick trial). Raises ValueError / FileNotFoundError naming what
    is wrong and how to fix it.
    """
    optional_positive_int("limit", limit, what="a positive number of images", sep=" ")
    if is_dataset_name(data):
        name = canonical_dataset_name(data)
        check_split(split)
        check_fits((channels, size), name, model)
        images, labels = load_dataset(name, data_dir, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        n = len(images)
        return ImageSource(
            name=name,
            kind="dataset",
            split=split,
            ids=torch.arange(n, dtype=torch.int64),
            labels=labels,
            sources=[f"{name}:{split}:{i}" for i in range(n)],
            classes=CLASS_NAMES.get(name),
            images=images,
            size=size,
            channels=channels,
        )
    folder = Path(data).expanduser()
    if not folder.exists():
        names = ", ".join(sorted(CLASS_NAMES))
        raise SettingError(
            f"data {data!r} is neither a data set name ({names}) nor an existing folder: "
            f"give one of those names or the path of a folder of images",
            setting="data",
        )
    if not folder.is_dir():
        raise SettingError(f"data {data!r} is a file, not a folder: give the folder that holds the images", setting="data")
    folder = folder.absolute()
    paths = list_images(folder)
    if not paths:
        raise MissingFileError(
            f"no image files in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}, hidden files skipped): "
            f"give a folder that holds images",
            setting="data",
        )
    if limit is not None:
        paths = paths[:limit]
    relative = [p.relative_to(folder) for p in paths]
    labels, classes = folder_labels(relative)
    note = folder_labels_note(folder, relative, classes)
    if note:
        warnings.warn(note, stacklevel=2)
    return ImageSource(
        name=str(folder),
        kind="folder",
        split=None,
        ids=folder_ids(relative, folder),
        labels=labels,
        sources=[r.as_posix() for r in relative],
        classes=classes or None,
        paths=paths,
        size=size,
        channels=channels,
    )
