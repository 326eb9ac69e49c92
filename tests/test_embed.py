"""`infomax embed` and `infomax index build`: the embeddings folder, its shards under 2-process DDP,
and the index built from it, on real CIFAR-10 images and a small real image folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infomax import load_encoder
from infomax.commands import embed as embed_cmd
from infomax.commands import index as index_cmd
from infomax.data import load_cifar10, load_image_folder, path_id
from infomax.embed import MANIFEST, embed, read_embeddings
from infomax.index import EmbeddingIndex

INFOMAX = str(Path(sys.executable).parent / "infomax")
N = 100  # images of the CIFAR-10 test split embedded here: several batches of 32 and a short one


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([INFOMAX, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def cifar_slice(data_dir):
    images, labels = load_cifar10(data_dir, "test")
    return images[:N], labels[:N]


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_artifact, data_dir):
    """The single-process embeddings of the first N test images (in-process Trainer.predict)."""
    out = tmp_path_factory.mktemp("emb") / "single"
    manifest = embed(tiny_artifact, "cifar10", out, split="test", limit=N, batch_size=32, data_dir=data_dir, progress=False)
    return out, manifest


def test_embeddings_of_a_data_set_are_the_encoders_codes_with_ids_sources_and_labels(single, cifar_slice, tiny_artifact):
    out, manifest = single
    images, labels = cifar_slice
    emb = read_embeddings(out)
    expected = load_encoder(tiny_artifact).embed(images)  # a plain batched forward pass
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (N, 32)
    np.testing.assert_allclose(emb.vectors, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(emb.ids, np.arange(N))
    assert emb.sources == [f"cifar10:test:{i}" for i in range(N)]
    assert emb.labels == labels.tolist()
    assert manifest == json.loads((out / MANIFEST).read_text())
    assert manifest["artifact"]["id"] == load_encoder(tiny_artifact).id
    assert manifest["count"] == N and manifest["z_dim"] == 32 and manifest["split"] == "test"
    assert manifest["classes"][3] == "cat" and [s["name"] for s in manifest["shards"]] == ["shard-00000-of-00001"]


def test_two_process_ddp_shards_together_equal_the_single_process_output(single, tmp_path, tiny_artifact, data_dir):
    out = tmp_path / "ddp"
    r = run_cli(
        "embed",
        "--model",
        str(tiny_artifact),
        "--data",
        "cifar10",
        "--split",
        "test",
        "--limit",
        str(N),
        "--batch-size",
        "32",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
        env_extra={"OMP_NUM_THREADS": "1", "INFOMAX_DATA_DIR": str(data_dir)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{N} vectors (z_dim 32) of cifar10:test" in r.stdout and "2 shard(s)" in r.stdout
    shards = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert shards == ["shard-00000-of-00002", "shard-00001-of-00002"]
    parts = [np.load(out / s / "ids.npy") for s in shards]
    assert all(len(p) > 0 for p in parts), "each rank must encode a share"
    assert not set(parts[0].tolist()) & set(parts[1].tolist()), "no image may be encoded twice"
    ddp, ref = read_embeddings(out), read_embeddings(single[0])
    np.testing.assert_array_equal(ddp.ids, ref.ids)
    np.testing.assert_allclose(ddp.vectors, ref.vectors, rtol=1e-5, atol=1e-5)
    assert ddp.sources == ref.sources and ddp.labels == ref.labels
    assert ddp.manifest["world_size"] == 2


def _write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """A real image folder: CIFAR images as PNGs in two class subfolders, plus one broken file."""
    for i, (im, y) in enumerate(zip(images, labels)):
        sub = root / ("cats" if y == 3 else "others")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(sub / f"img{i:02d}.png")
    (root / "others" / "broken.png").write_bytes(b"not a png")
    return root


def test_a_folder_is_embedded_in_sorted_file_order_with_subfolder_classes(tmp_path, tiny_artifact, cifar_slice):
    images, labels = cifar_slice
    folder = _write_folder(tmp_path / "photos", images[:12], labels[:12])
    manifest = embed(tiny_artifact, str(folder), tmp_path / "out", batch_size=5, num_workers=0, progress=False)
    emb = read_embeddings(tmp_path / "out")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    broken = files.index("others/broken.png")
    del broken
    kept = [f for f in files if f != "others/broken.png"]
    by_id = sorted(kept, key=path_id)  # shards list items by id
    assert emb.sources == by_id
    np.testing.assert_array_equal(emb.ids, [path_id(f) for f in by_id])
    assert manifest["classes"] == ["cats", "others"] and manifest["kind"] == "folder" and manifest["split"] is None
    assert manifest["ids"] == "path-sha256-53"
    assert emb.labels == [0 if s.startswith("cats/") else 1 for s in by_id]
    assert [s["source"] for s in manifest["skipped"]] == ["others/broken.png"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        reference = load_image_folder(folder, 32, 3)
    order = [kept.index(s) for s in by_id]
    np.testing.assert_allclose(
        emb.vectors, load_encoder(tiny_artifact).embed(reference.images[order]).numpy(), rtol=1e-5, atol=1e-5
    )


def test_folder_ids_are_stable_when_files_are_added_or_removed(tmp_path, tiny_artifact, cifar_slice):
    """Issue 13 item 3: ids were positions in the sorted file list, so adding or removing one file
    shifted every id after it, and re-embedding a changed folder no longer updated the same items."""
    folder = tmp_path / "photos"
    (folder / "dog").mkdir(parents=True)
    (folder / "cat").mkdir()
    for i, im in enumerate(cifar_slice[0][:6]):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / ("dog" if i % 2 else "cat") / f"IMG_{2010 + i}.JPG")
    embed(tiny_artifact, str(folder), tmp_path / "e1", num_workers=0, progress=False)
    before = dict(zip(read_embeddings(tmp_path / "e1").sources, read_embeddings(tmp_path / "e1").ids.tolist()))
    (folder / "cat" / "IMG_2010.JPG").unlink()  # the first file goes: every position after it would shift
    Image.fromarray(cifar_slice[0][7].permute(1, 2, 0).numpy()).save(folder / "dog" / "IMG_2099.JPG")
    embed(tiny_artifact, str(folder), tmp_path / "e2", num_workers=0, progress=False)
    after = dict(zip(read_embeddings(tmp_path / "e2").sources, read_embeddings(tmp_path / "e2").ids.tolist()))
    kept = set(before) - {"cat/IMG_2010.JPG"}
    assert kept < set(after) and {s: after[s] for s in kept} == {s: before[s] for s in kept}
    assert all(0 <= i < 2**53 for i in after.values()) and len(set(after.values())) == len(after)
    assert before["dog/IMG_2011.JPG"] == path_id("dog/IMG_2011.JPG") == path_id(Path("dog") / "IMG_2011.JPG")


def test_two_files_that_would_share_an_id_are_refused(tmp_path, tiny_artifact, cifar_slice):
    """A name written once with a composed and once with a decomposed accent (Linux keeps both; a
    user sees one name) gets one id: refused in one line naming both, not one item lost."""
    folder = tmp_path / "photos"
    folder.mkdir()
    png = Image.fromarray(cifar_slice[0][0].permute(1, 2, 0).numpy())
    png.save(folder / "caf\u00e9.png")
    png.save(folder / "cafe\u0301.png")
    with pytest.raises(ValueError, match="get the same id .*rename one of them"):
        embed(tiny_artifact, str(folder), tmp_path / "out", num_workers=0, progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_a_folder_without_subfolders_has_no_labels(tmp_path, tiny_artifact, cifar_slice):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i, im in enumerate(cifar_slice[0][:3]):
        Image.fromarray(im.permute(1, 2, 0).numpy()).resize((48, 40)).save(folder / f"{i}.jpg")
    manifest = embed(tiny_artifact, str(folder), tmp_path / "out", num_workers=0, progress=False)
    emb = read_embeddings(tmp_path / "out")
    assert emb.labels == [None, None, None] and manifest["classes"] is None
    assert emb.sources == ["0.jpg", "1.jpg", "2.jpg"]


def test_out_is_never_overwritten_without_the_flag_and_foreign_files_never(single, tmp_path, tiny_artifact, data_dir):
    out = tmp_path / "out"
    shutil.copytree(single[0], out)
    with pytest.raises(ValueError, match="is not empty: pass --overwrite"):
        embed(tiny_artifact, "cifar10", out, limit=10, data_dir=data_dir, progress=False)
    manifest = embed(tiny_artifact, "cifar10", out, limit=10, overwrite=True, data_dir=data_dir, progress=False)
    assert manifest["count"] == 10 and len(read_embeddings(out)) == 10
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not embeddings \(notes.txt\)"):
        embed(tiny_artifact, "cifar10", out, limit=10, overwrite=True, data_dir=data_dir, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args,error,match",
    [
        (["--model", "{tmp}/nowhere", "--data", "cifar10"], FileNotFoundError, "no artifact folder there"),
        (["--model", "{art}", "--data", "cifar100"], ValueError, "neither a data set name"),
        (["--model", "{grey}", "--data", "cifar10"], ValueError, "takes 1x28x28 images but cifar10 holds 3x32x32"),
        (
            ["--model", "{art}", "--data", "cifar10", "--data-dir", "{tmp}/nodata"],
            FileNotFoundError,
            "data not found in .*nodata.*INFOMAX_DATA_DIR",
        ),
        (["--model", "{art}", "--data", "{tmp}/empty"], FileNotFoundError, "no image files in"),
        (["--model", "{art}", "--data", "cifar10", "--batch-size", "0"], ValueError, "--batch-size 0"),
        (["--model", "{art}", "--data", "cifar10", "--limit", "0"], ValueError, "--limit 0"),
        (["--model", "{tmp}", "--data", "cifar10"], ValueError, "encoder.json is missing"),
    ],
)
def test_user_errors_name_the_problem(tmp_path, tiny_artifact, tiny_grey_artifact, args, error, match):
    (tmp_path / "empty").mkdir()
    fill = {"tmp": str(tmp_path), "art": str(tiny_artifact), "grey": str(tiny_grey_artifact)}
    argv = [a.format(**fill) for a in args] + ["--out", str(tmp_path / "out")]
    with pytest.raises(error, match=match):
        embed_cmd.main(argv)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_a_bad_split_is_refused():
    from infomax.data import check_split

    with pytest.raises(ValueError, match="split 'val' does not exist: use --split train or --split test"):
        check_split("val")


def test_the_command_prints_one_line_for_a_bad_input(tmp_path, tiny_artifact):
    r = run_cli("embed", "--model", str(tiny_artifact), "--data", "imagenet", "--out", str(tmp_path / "o"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("infomax embed: error: --data 'imagenet' is neither")
    assert "Traceback" not in r.stderr


def test_an_incomplete_or_damaged_embeddings_folder_is_detected(single, tmp_path):
    out = tmp_path / "emb"
    shutil.copytree(single[0], out)
    (out / MANIFEST).unlink()  # what a crash before the last write leaves
    with pytest.raises(ValueError, match="did not finish"):
        read_embeddings(out)
    shutil.copy(single[0] / MANIFEST, out / MANIFEST)
    shard = out / "shard-00000-of-00001"
    np.save(shard / "vectors.npy", np.zeros((N, 16), np.float32))
    with pytest.raises(ValueError, match="mismatched dimensions across shards"):
        read_embeddings(out)
    (shard / "vectors.npy").unlink()
    with pytest.raises(FileNotFoundError, match="vectors.npy is missing"):
        read_embeddings(out)
    with pytest.raises(FileNotFoundError, match="no embeddings folder"):
        read_embeddings(tmp_path / "nowhere")


def test_index_build_reads_the_shards_and_keeps_ids_sources_labels_and_the_artifact(single, tmp_path, capsys, tiny_artifact):
    emb_dir, manifest = single
    out = tmp_path / "index"
    assert index_cmd.main(["build", "--embeddings", str(emb_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("factory", "count            100 vectors of dimension 32", "search params", "recall@10", "latency"):
        assert word in printed
    emb = read_embeddings(emb_dir)
    with EmbeddingIndex.load(out, expected_artifact_id=load_encoder(tiny_artifact).id, read_only=True) as index:
        assert len(index) == N and index.dim == 32
        item = index.get(7)
        assert item["source"] == "cifar10:test:7" and item["label"] == emb.labels[7]
        assert item["meta"] == {"class": manifest["classes"][emb.labels[7]]}
        scores, ids = index.search(emb.vectors[[7, 42]], k=1)
        assert ids[:, 0].tolist() == [7, 42]
        assert index.info["artifact"]["path"] == manifest["artifact"]["path"]
    with pytest.raises(ValueError, match="not empty: pass --overwrite"):
        index_cmd.main(["build", "--embeddings", str(emb_dir), "--out", str(out)])
    assert (
        index_cmd.main(
            [
                "build",
                "--embeddings",
                str(emb_dir),
                "--out",
                str(out),
                "--overwrite",
                "--factory",
                "HNSW16",
                "--recall-target",
                "0.9",
            ]
        )
        == 0
    )
    assert "HNSW16" in capsys.readouterr().out


def test_index_build_refuses_an_unfinished_embeddings_folder(single, tmp_path):
    emb = tmp_path / "emb"
    shutil.copytree(single[0], emb)
    (emb / MANIFEST).unlink()
    with pytest.raises(ValueError, match="did not finish"):
        index_cmd.main(["build", "--embeddings", str(emb), "--out", str(tmp_path / "index")])
    assert not (tmp_path / "index").exists()


def test_index_build_with_images_stores_each_items_true_pixels(single, tmp_path, capsys, cifar_slice, data_dir):
    from infomax.imagestore import ImageStore

    images, _ = cifar_slice
    out = tmp_path / "index"
    assert (
        index_cmd.main(["build", "--embeddings", str(single[0]), "--out", str(out), "--images", "--data-dir", str(data_dir)]) == 0
    )
    assert f"pictures         {N} stored" in capsys.readouterr().out
    store = ImageStore(out, read_only=True)
    try:
        assert len(store) == N
        for i in (0, 17, N - 1):
            data, mime = store.get(i)
            assert mime == "image/png"
            with Image.open(io.BytesIO(data)) as png:  # lossless: exactly the data set's pixels
                np.testing.assert_array_equal(np.asarray(png.convert("RGB")), images[i].permute(1, 2, 0).numpy())
    finally:
        store.close()


def test_index_build_with_images_of_a_folder_keeps_small_files_and_thumbnails_large_ones(tmp_path, tiny_artifact, cifar_slice):
    from infomax.imagestore import ImageStore

    folder = tmp_path / "photos"
    folder.mkdir()
    small = folder / "a_small.png"
    Image.fromarray(cifar_slice[0][0].permute(1, 2, 0).numpy()).save(small)
    Image.fromarray(cifar_slice[0][1].permute(1, 2, 0).numpy()).resize((1200, 800)).save(folder / "b_large.png")
    embed(tiny_artifact, str(folder), tmp_path / "emb", num_workers=0, progress=False)
    assert index_cmd.main(["build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "ix"), "--images"]) == 0
    store = ImageStore(tmp_path / "ix", read_only=True)
    try:
        assert store.get(path_id("a_small.png")) == (small.read_bytes(), "image/png")  # stored as it is
        data, mime = store.get(path_id("b_large.png"))
        assert mime == "image/jpeg"
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.size == (256, 171)  # longest side 256, aspect kept
    finally:
        store.close()
