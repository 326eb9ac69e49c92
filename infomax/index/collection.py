"""An index and its image store as one collection: the rule "an item is never without its picture"
kept in one place, for the service, ``infomax up`` and ``infomax index build --images``.

    adding:   pictures first (durable), then vectors and metadata (durable): an item that a search
              can return has its picture; a crash in between leaves pictures without items, which
              nothing shows and the next write of those ids replaces.
    removing: vectors first, then pictures, for the same reason.
    failing:  an add that the index refuses takes its pictures back out: nothing of it stays.

A picture is ``(id, bytes, mime)``, as :class:`infomax.imagestore.ImageStore` stores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from infomax.imagestore import ImageStore
    from infomax.index.embedding_index import EmbeddingIndex

PICTURE_CHUNK = 2048  # pictures per transaction when storing many: bounded memory, few fsyncs


def store_pictures(store: ImageStore, pictures: Iterable[tuple[int, bytes, str]]) -> list[int]:
    """Writes ``pictures`` into ``store`` in transactions of :data:`PICTURE_CHUNK`; returns their ids."""
    it = iter(pictures)
    ids: list[int] = []
    while chunk := list(islice(it, PICTURE_CHUNK)):
        store.put_many(chunk)
        ids.extend(int(i) for i, _, _ in chunk)
    return ids


def store_pictures_in(folder: str | Path, pictures: Iterable[tuple[int, bytes, str]]) -> int:
    """:func:`store_pictures` into the image store of the index folder ``folder`` (created when
    missing; e.g. a folder being built, before it is renamed into place). Returns how many."""
    from infomax.imagestore import ImageStore

    store = ImageStore(folder)
    try:
        return len(store_pictures(store, pictures))
    finally:
        store.close()


class IdsTaken(ValueError):
    """An add named ids the index already holds (``ids``: those ids, in the order given)."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(f"ids already in the index: {ids[:10]}; remove them first to replace them")
        self.ids = ids


class Collection:
    """``index`` with its image store ``images`` (None: an index without pictures, where adds and
    removes touch the index only). Not a lock: the caller holds the index's writer (one writer per
    folder, :mod:`infomax.index.locks`) and serialises its own writes."""

    def __init__(self, index: EmbeddingIndex, images: ImageStore | None) -> None:
        self.index, self.images = index, images

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[int],
        metadata: Sequence[dict[str, Any]] | None = None,
        pictures: Iterable[tuple[int, bytes, str]] | None = None,
    ) -> list[int]:
        """Adds items ``ids`` (their vectors and metadata) after their ``pictures``; returns the ids
        once all of it is durable. ``ValueError`` before anything is written when an id is already
        in the index (:class:`IdsTaken`: its picture would be replaced); when the index refuses the vectors, the
        pictures just written are removed again and the error goes on."""
        ids = [int(i) for i in ids]
        present = self.index.get_many(np.asarray(ids, dtype=np.int64)) if ids else []
        taken = [i for i, m in zip(ids, present) if m is not None]
        if taken:
            raise IdsTaken(taken)
        if len(set(ids)) != len(ids):
            raise ValueError("the same id is given twice in one add")
        if pictures is not None:
            if self.images is None:
                raise ValueError("this index has no image store: add the items without pictures, or build it with pictures")
            unknown = set()
            wanted = set(ids)

            def checked():
                for p in pictures:
                    if int(p[0]) not in wanted:
                        unknown.add(int(p[0]))
                        continue
                    yield p

            # None of ids is in the index (checked above), so every picture of these ids is this add's
            # (or an orphan of an earlier crash): a failure takes them all back out.
            try:
                store_pictures(self.images, checked())
            except BaseException:
                self.images.delete(ids)  # the chunks already written
                raise
            if unknown:
                self.images.delete(ids)
                raise ValueError(f"pictures of ids that are not being added: {sorted(unknown)[:10]}")
        try:
            self.index.add(vectors, ids=ids, metadata=None if metadata is None else list(metadata))
        except BaseException:
            if pictures is not None and self.images is not None:
                self.images.delete(ids)  # nothing of the add stays behind, whatever went wrong
            raise
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Removes items: vectors and metadata first, then their pictures. Returns how many of
        ``ids`` were in the index."""
        ids = [int(i) for i in ids]
        n = self.index.remove(ids)
        if self.images is not None and ids:
            self.images.delete(ids)
        return int(n)
