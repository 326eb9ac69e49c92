"""The stress harness measures the product on real images: missing CIFAR-10 fails naming the
folder, instead of quietly indexing random pictures."""

from __future__ import annotations

import pytest


def test_build_index_without_cifar10_fails_naming_the_folder(tmp_path, tiny_artifact, monkeypatch):
    from stress.harness import build_index

    monkeypatch.setenv("INFOMAX_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="INFOMAX_DATA_DIR") as e:
        build_index(tmp_path / "index", tiny_artifact, n=5)
    assert str(tmp_path / "nowhere") in str(e.value)
    assert not (tmp_path / "index").exists()


def test_build_index_holds_the_first_cifar10_test_images(tmp_path, tiny_artifact, data_dir, monkeypatch):
    from stress.harness import build_index, png_bytes

    from infomax.data import load_cifar10
    from infomax.index import EmbeddingIndex

    monkeypatch.setenv("INFOMAX_DATA_DIR", str(data_dir))
    built = build_index(tmp_path / "index", tiny_artifact, n=5)
    images, labels = load_cifar10(data_dir, "test")
    assert built["pngs"] == [png_bytes(t.permute(1, 2, 0).numpy()) for t in images[:5]]
    with EmbeddingIndex.load(tmp_path / "index", read_only=True) as index:
        assert [index.get(i)["source"] for i in range(5)] == [f"cifar10:test:{i}" for i in range(5)]
        assert [index.get(i)["label"] for i in range(5)] == labels[:5].tolist()
