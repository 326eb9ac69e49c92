"""infomax.index.collection: an index and its image store written as one (picture before vector,
vector removed before picture, nothing left of a refused add), on a real index folder."""

from __future__ import annotations

import numpy as np
import pytest

from infomax.imagestore import ImageStore
from infomax.index import EmbeddingIndex
from infomax.index.collection import Collection, store_pictures_in


class WatchedStore(ImageStore):
    """The real store, noting how many items the index held at each write (the order of the writes)."""

    def __init__(self, folder, index_of) -> None:
        super().__init__(folder)
        self.index_of, self.seen = index_of, []

    def put_many(self, items):
        items = list(items)
        self.seen.append(("put", [i for i, _, _ in items], len(self.index_of())))
        super().put_many(items)

    def delete(self, ids):
        ids = list(ids)
        self.seen.append(("delete", ids, len(self.index_of())))
        super().delete(ids)


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def _pics(ids):
    return [(i, f"picture {i}".encode(), "image/png") for i in ids]


@pytest.fixture
def collection(tmp_path):
    index = EmbeddingIndex.create(8, path=tmp_path / "ix")
    store = WatchedStore(tmp_path / "ix", lambda: index)
    yield Collection(index, store)
    store.close()
    index.close()


def test_pictures_are_written_before_vectors_and_removed_after_them(collection):
    assert collection.add(_vectors(3), [5, 6, 7], [{"n": i} for i in range(3)], _pics([5, 6, 7])) == [5, 6, 7]
    assert collection.images.seen == [("put", [5, 6, 7], 0)]  # the index held none of them yet
    assert len(collection.index) == 3 and collection.images.get(6) == (b"picture 6", "image/png")
    assert collection.index.get(7)["meta"] == {"n": 2}
    assert collection.remove([6, 99]) == 1
    assert collection.images.seen[-1] == ("delete", [6, 99], 2)  # the vector was already gone
    assert collection.images.get(6) is None and collection.index.get(6) is None and len(collection.index) == 2


def test_an_add_the_index_refuses_leaves_nothing_behind(collection):
    with pytest.raises(ValueError):
        collection.add(np.zeros((2, 5), np.float32), [1, 2], None, _pics([1, 2]))  # wrong dimension
    assert collection.images.get(1) is None and collection.images.get(2) is None and len(collection.index) == 0


def test_an_id_already_there_is_refused_before_its_picture_is_touched(collection):
    collection.add(_vectors(1), [3], None, _pics([3]))
    with pytest.raises(ValueError, match=r"ids already in the index: \[3\]"):
        collection.add(_vectors(2, seed=1), [4, 3], None, [(4, b"new 4", "image/png"), (3, b"new 3", "image/png")])
    assert collection.images.get(3) == (b"picture 3", "image/png") and collection.images.get(4) is None
    assert len(collection.index) == 1


def test_a_picture_write_that_fails_midway_takes_the_written_chunks_back_out(collection, monkeypatch):
    import infomax.index.collection as collection_module

    monkeypatch.setattr(collection_module, "PICTURE_CHUNK", 2)

    def pictures():
        yield from _pics([1, 2, 3])  # two chunks of two, then the source fails (a file gone, a full disk)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        collection.add(_vectors(4), [1, 2, 3, 4], None, pictures())
    assert [collection.images.get(i) for i in (1, 2, 3, 4)] == [None] * 4 and len(collection.index) == 0


def test_pictures_of_ids_not_being_added_are_refused(collection):
    with pytest.raises(ValueError, match=r"not being added: \[9\]"):
        collection.add(_vectors(1), [1], None, _pics([1, 9]))
    assert collection.images.get(1) is None and collection.images.get(9) is None and len(collection.index) == 0
    with pytest.raises(ValueError, match="same id is given twice"):
        collection.add(_vectors(2), [1, 1], None, _pics([1]))


def test_without_an_image_store_pictures_are_refused_and_vectors_still_add(tmp_path):
    with EmbeddingIndex.create(8, path=tmp_path / "ix") as index:
        plain = Collection(index, None)
        with pytest.raises(ValueError, match="no image store"):
            plain.add(_vectors(1), [1], None, _pics([1]))
        assert len(index) == 0
        assert plain.add(_vectors(1), [1]) == [1] and plain.remove([1]) == 1


def test_store_pictures_in_writes_a_folder_in_chunks(tmp_path, monkeypatch):
    import infomax.index.collection as collection_module

    monkeypatch.setattr(collection_module, "PICTURE_CHUNK", 3)
    assert store_pictures_in(tmp_path / "f", iter(_pics(range(7)))) == 7
    store = ImageStore(tmp_path / "f", read_only=True)
    try:
        assert len(store) == 7 and store.get(6) == (b"picture 6", "image/png")
    finally:
        store.close()
