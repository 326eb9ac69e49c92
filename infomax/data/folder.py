"""A folder of images: listing its files, their stable ids, class labels from subfolders, and
decoding them (all at once into memory, or one by one on access) with one rule for what counts as
an unreadable file."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import unicodedata
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import torch
from PIL import Image
from torch.utils.data import Dataset

from infomax.data.datadir import DataNotFoundError, PathLike
from infomax.errors import DataError
from infomax.imageio import _check_size_channels, load_image

__all__ = [
    "FileImages",
    "FolderData",
    "IMAGE_EXTENSIONS",
    "UNREADABLE_ERRORS",
    "error_reason",
    "folder_ids",
    "folder_labels",
    "folder_labels_note",
    "list_images",
    "load_image_folder",
    "path_id",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder: PathLike) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted, case-insensitive extension match).

    Hidden files and folders (name starting with ".", e.g. macOS "._x.jpg" resource forks)
    below ``folder`` are skipped; ``folder`` itself may sit inside a hidden directory.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            folder,
            [f"a folder of images ({', '.join(IMAGE_EXTENSIONS)})"],
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
            raise DataError(
                f"{a!r} and {b!r} in {folder or 'the folder'} "
                f"get the same id {id_} (their names are the same text once Unicode-normalised, or collide "
                f"by chance): rename one of them"
            )
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class FolderData:
    """Images decoded from a folder, in sorted path order."""

    images: torch.Tensor  # uint8 [N, C, S, S]
    labels: torch.Tensor  # int64 [N], -1 when the folder has no class structure
    paths: list[str]
    classes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# Errors that mean "this file is not a usable image" (not an image, truncated, too large, a broken
# header) rather than a bug in our code: such a file is skipped, wherever a folder is decoded.
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def error_reason(exc: BaseException, path: Path) -> str:
    """Short reason for a skipped file, without the path PIL likes to repeat in its messages."""
    message = str(exc)
    for variant in (repr(str(path)), str(path)):
        message = message.replace(variant, "")
    message = message.strip().rstrip(":").strip()
    return message or type(exc).__name__


def folder_labels(relative_paths: Sequence[Path]) -> tuple[torch.Tensor, list[str]]:
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
        return (
            f"{n} of {len(relative_paths)} images of {folder} {are} not in a class subfolder (e.g. {example}): "
            f"{them} no label; the others keep the labels of their {len(classes)} subfolders. "
            f"Move {'it' if n == 1 else 'them'} into a class subfolder to label {'it' if n == 1 else 'them'}"
        )
    return (
        f"{n} of {len(relative_paths)} images of {folder} {are} at its top (e.g. {example}), so its subfolders "
        f"are not taken as classes and no image has a label; put every image in a class subfolder (two or "
        f"more) for labels"
    )


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
        except UNREADABLE_ERRORS as exc:
            return error_reason(exc, path)

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
            folder,
            expected,
            hint=f"None of the {len(candidates)} image files could be read (e.g. {skipped[0][0]}: {skipped[0][1]}).",
        )
    relative = [p.relative_to(folder) for p in kept]
    labels, classes = folder_labels(relative)
    note = folder_labels_note(folder, relative, classes)
    if note:
        warnings.warn(note, stacklevel=2)
    return FolderData(torch.stack(tensors), labels, [str(p) for p in kept], classes, skipped)


class FileImages(Dataset):
    """Image files decoded on access (in DataLoader workers when there are any), as ``(uint8 image,
    id, error)``. An unreadable file gives a blank image and the reason, so that one bad file does
    not stop a large run; ``error`` is "" for a good image."""

    def __init__(self, paths: list[Path], ids: torch.Tensor, size: int, channels: int) -> None:
        self.paths, self.ids, self.size, self.channels = paths, ids, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        try:
            return load_image(self.paths[i], self.size, self.channels), self.ids[i], ""
        except UNREADABLE_ERRORS as e:
            blank = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
            return blank, self.ids[i], f"{type(e).__name__}: {error_reason(e, self.paths[i])}"
