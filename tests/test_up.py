"""``infomax up FOLDER``: a folder that looks like a real one (sizes from 16 to 4,000 px, every
aspect ratio, EXIF orientation, alpha, palette and 16-bit PNGs, CMYK JPEG, GIF, WebP, BMP, nested
folders, names with spaces and accents, symlinks and a symlink loop, unreadable and zero-byte
files, a text file named .jpg) goes into a searchable index with pictures; a second run embeds only
what changed; training chains into the other steps; the service comes up on the index."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infomax.data.folder import path_id


def _pil(images: np.ndarray, i: int, size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)))
    return img.resize(size, Image.BICUBIC) if size else img


def make_messy_folder(root: Path, images: np.ndarray) -> tuple[set[str], set[str]]:
    """Writes the folder; returns (relative paths that must be indexed, those that must be listed
    as unreadable). Hidden files and non-image names are neither."""
    readable: set[str] = set()
    unreadable: set[str] = set()
    k = iter(range(len(images)))

    def save(rel: str, img: Image.Image, **kw) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kw)
        readable.add(rel)
        return path

    # photos from 16 px to 4,000 px on a side, every aspect ratio
    for w, h in [(16, 16), (4000, 3000), (3000, 4000), (4000, 16), (16, 4000), (640, 480), (37, 23), (100, 1000)]:
        save(f"photos/{w}x{h}.jpg", _pil(images, next(k), (w, h)), quality=90)
    for i in range(12):  # plain CIFAR pictures in class-like folders
        save(f"{'cats' if i % 2 else 'dogs'}/img_{i:03d}.png", _pil(images, next(k)))
    # a phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees to show)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("photos/phone portrait.jpg", _pil(images, next(k), (300, 200)), exif=exif.tobytes())
    rgba = _pil(images, next(k), (64, 48)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 48)))
    save("png/alpha.png", rgba)
    save("png/palette.png", _pil(images, next(k)).convert("P", palette=Image.ADAPTIVE, colors=16))
    pal_t = _pil(images, next(k)).convert("P", palette=Image.ADAPTIVE, colors=8)
    save("png/palette transparent.png", pal_t, transparency=0)
    grey16 = Image.fromarray(np.asarray(_pil(images, next(k)).convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode in ("I;16", "I")
    save("png/grey 16-bit.png", grey16)
    save("png/grey+alpha.png", _pil(images, next(k)).convert("LA"))
    save("formats/cmyk.jpg", _pil(images, next(k), (120, 90)).convert("CMYK"))
    save(
        "formats/anim.gif",
        _pil(images, next(k)).convert("P"),
        save_all=True,
        append_images=[_pil(images, next(k)).convert("P")],
        duration=100,
    )
    save("formats/pic.webp", _pil(images, next(k), (50, 70)))
    save("formats/pic.bmp", _pil(images, next(k)))
    save("formats/pic.tiff", _pil(images, next(k)))
    save("formats/UPPER.JPG", _pil(images, next(k)))
    # nested folders, spaces and non-ASCII names
    save("trips/2019/summer/beach day.png", _pil(images, next(k)))
    save("Fotos del día/café crème.jpg", _pil(images, next(k)))
    save("日本/写真 1.png", _pil(images, next(k)))
    save("top level.png", _pil(images, next(k)))
    # symlinks: a loop of folders (not followed), a link to a good file, a link to itself, a dangling one
    os.symlink("..", root / "trips" / "2019" / "back up")
    os.symlink("../dogs/img_000.png", root / "trips" / "link to a dog.png")
    readable.add("trips/link to a dog.png")
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("no such file.png", root / "dangling.png")
    unreadable |= {"loop.jpg", "dangling.png"}
    # unreadable files
    (root / "broken").mkdir()
    (root / "broken" / "empty.png").write_bytes(b"")
    (root / "broken" / "notes.jpg").write_text("this is not a picture\n")
    good = io.BytesIO()
    _pil(images, next(k), (200, 200)).save(good, "JPEG")
    (root / "broken" / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    unreadable |= {"broken/empty.png", "broken/notes.jpg", "broken/cut.jpg"}
    locked = save("broken/no permission.png", _pil(images, next(k)))
    locked.chmod(0)
    if not os.access(locked, os.R_OK):  # root reads it anyway: then it is a good picture
        readable.discard("broken/no permission.png")
        unreadable.add("broken/no permission.png")
    # neither: hidden files and folders, files that are not images by name
    (root / ".thumbs").mkdir()
    _pil(images, next(k)).save(root / ".thumbs" / "a.png")
    (root / "photos" / "._phone portrait.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "readme.txt").write_text("my photos\n")
    return readable, unreadable


@pytest.fixture(scope="module")
def cifar(data_dir) -> np.ndarray:
    from infomax.data import load_cifar10

    images, _ = load_cifar10(data_dir, "test")
    return images[:300].numpy()


def up(*args: str) -> int:
    from training.up import main

    return main([*map(str, args), "--no-serve", "--num-workers", "0", "--no-progress"])


def read_index(index_dir: Path):
    from infomax.imagestore import ImageStore
    from infomax.index import EmbeddingIndex

    index = EmbeddingIndex.load(index_dir, read_only=True)
    store = ImageStore(index_dir, read_only=True)
    try:
        ids = index.ids().tolist()
        items = dict(zip(ids, index.get_many(ids)))
        vectors = np.stack([index.vector(i) for i in ids]) if ids else np.empty((0, 0))
        found = index.search(vectors, k=3)[1] if ids else np.empty((0, 3))
        searchable = {i for i, row in zip(ids, found.tolist()) if i in row}
        pictures = {i: store.get(i) for i in ids}
    finally:
        store.close()
        index.close()
    return items, searchable, pictures


def test_messy_folder_indexed_then_updated_incrementally(tmp_path, tiny_artifact, cifar):
    folder = tmp_path / "My Photos"
    readable, unreadable = make_messy_folder(folder, cifar)
    assert up(folder, "--model", tiny_artifact) == 0
    work = folder / ".infomax"
    state = json.loads((work / "state.json").read_text())
    assert set(state["files"]) == readable
    assert set(state["skipped"]) == unreadable
    assert all(s["reason"] for s in state["skipped"].values())
    listed = [line.split("\t") for line in (work / "skipped.txt").read_text().splitlines()]
    assert sorted(rel for rel, _ in listed) == sorted(unreadable)  # each once
    assert all(reason.strip() for _, reason in listed)
    assert "loop.jpg" in dict(listed) and "dangling.png" in dict(listed)

    items, searchable, pictures = read_index(work / "index")
    expected = {path_id(rel): rel for rel in readable}
    assert set(items) == set(expected)
    assert {i: it["source"] for i, it in items.items()} == expected
    assert searchable == set(expected)  # every item is found by its own vector
    assert all(pictures[i] is not None for i in expected)
    beach = items[path_id("trips/2019/summer/beach day.png")]
    assert beach["meta"]["class"] == "trips/2019/summer"
    assert beach["meta"]["size"] == (folder / "trips/2019/summer/beach day.png").stat().st_size
    assert beach["meta"]["modified"].startswith("20")
    assert "class" not in items[path_id("top level.png")]["meta"]
    big = Image.open(io.BytesIO(pictures[path_id("photos/4000x3000.jpg")][0]))
    assert max(big.size) <= 256  # a thumbnail, not the 12 MP photo

    # add two files, delete one: only those change
    _pil(cifar, 290).save(folder / "dogs" / "new one.png")
    (folder / "trips" / "2019" / "nouveau été.jpg").write_bytes((folder / "Fotos del día" / "café crème.jpg").read_bytes())
    (folder / "cats" / "img_001.png").unlink()
    readable2 = readable - {"cats/img_001.png"} | {"dogs/new one.png", "trips/2019/nouveau été.jpg"}
    assert up(folder, "--model", tiny_artifact) == 0
    state2 = json.loads((work / "state.json").read_text())
    assert set(state2["files"]) == readable2
    assert state2["skipped"] == state["skipped"]
    for rel in readable - {"cats/img_001.png"}:
        assert state2["files"][rel] == state["files"][rel]
    embedded = json.loads((work / "embeddings" / "embeddings.json").read_text())
    assert embedded["count"] == 2 and not embedded["skipped"]  # only the new files were embedded
    items2, searchable2, pictures2 = read_index(work / "index")
    assert set(items2) == {path_id(rel) for rel in readable2} == searchable2
    for i in set(items) - {path_id("cats/img_001.png")}:  # kept their ids, metadata and pictures
        assert items2[i] == items[i] and pictures2[i] == pictures[i]

    # nothing changed: nothing embedded, the same index
    (work / "embeddings" / "embeddings.json").unlink()
    assert up(folder, "--model", tiny_artifact) == 0
    assert not (work / "embeddings" / "embeddings.json").exists()
    assert read_index(work / "index")[0] == items2

    # a picture replaced under the same name, an unreadable file mended: both embedded, under their ids
    _pil(cifar, 291).save(folder / "dogs" / "img_000.png")
    os.utime(folder / "dogs" / "img_000.png", ns=(1, 10**18))
    _pil(cifar, 292).save(folder / "broken" / "notes.jpg", format="JPEG")
    assert up(folder, "--model", tiny_artifact) == 0
    # 3: the symlink to the replaced picture changed with it
    assert json.loads((work / "embeddings" / "embeddings.json").read_text())["count"] == 3
    items3, searchable3, pictures3 = read_index(work / "index")
    assert set(items3) == searchable3 == set(items2) | {path_id("broken/notes.jpg")}
    for dog in path_id("dogs/img_000.png"), path_id("trips/link to a dog.png"):
        assert items3[dog]["meta"]["modified"] != items2[dog]["meta"]["modified"] and pictures3[dog] != pictures2[dog]
    assert "broken/notes.jpg" not in json.loads((work / "state.json").read_text())["skipped"]

    # another model: everything embedded again into a new index bound to it
    from conftest import make_artifact

    other = make_artifact(tmp_path / "other", seed=1)
    assert up(folder, "--model", other) == 0
    assert json.loads((work / "embeddings" / "embeddings.json").read_text())["count"] == len(items3)
    assert read_index(work / "index")[0] == items3
    assert json.loads((work / "index" / "index.json").read_text())["artifact"]["path"] == str(other)


def test_trains_within_the_budget_then_embeds_indexes(tmp_path, cifar, capsys):
    from infomax.artifact import load_encoder

    folder = tmp_path / "pics"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    for i in range(200):
        _pil(cifar, i).save(folder / ("a" if i % 2 else "b") / f"{i}.png")
    work = tmp_path / "work"
    from training.up import main

    assert main([str(folder), "--minutes", "0.1", "--work", str(work), "--no-serve", "--num-workers", "0"]) == 0
    assert "left=0:0" in capsys.readouterr().out  # the training bar shows the time left of the 6 s
    model = load_encoder(work / "model")
    assert json.loads((work / "model" / "encoder.json").read_text())["arch_kwargs"]["base_width"] == 16  # folder.yaml
    # folder.yaml trains all three terms: the local critic comes with the model, so searches can explain
    from infomax.explain import Explainer

    assert Explainer.from_artifact(model, work / "model").heatmaps(
        torch.zeros(model.config["arch_kwargs"]["z_dim"]), _pil(cifar, 0)
    ).shape == (1, 4, 4)
    state = json.loads((work / "state.json").read_text())
    assert state["artifact"] == model.id and len(state["files"]) == 200
    assert read_index(work / "index")[1] == {path_id(f"{'a' if i % 2 else 'b'}/{i}.png") for i in range(200)}
    assert up(folder, "--work", work) == 0  # the model is there: no training, nothing to embed
    err = capsys.readouterr().err
    assert "training skipped" in err and "embedding 0 new or changed" in err


def test_serves_the_folder(tmp_path, tiny_artifact, cifar):
    import httpx
    from stress.harness import ServerProcess, infomax_command

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(20):
        _pil(cifar, i).save(folder / f"{i}.png")

    class Up(ServerProcess):
        def command(self) -> list[str]:
            return [
                *infomax_command(),
                "up",
                str(folder),
                "--model",
                str(tiny_artifact),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num-workers",
                "0",
            ]

    with Up(tiny_artifact, folder / ".infomax" / "index", tmp_path / "up.log", env={"OMP_NUM_THREADS": "1"}) as srv:
        assert httpx.get(srv.url + "/v1/info").json()["items"] == 20
        id_ = path_id("3.png")
        image = base64.b64encode((folder / "3.png").read_bytes()).decode()
        hit = httpx.post(srv.url + "/v1/search", json={"image": image, "k": 1}).json()["neighbors"][0]
        assert hit["id"] == id_ and hit["source"] == "3.png"
        assert httpx.get(f"{srv.url}/v1/items/{id_}/image").status_code == 200
        assert f"serving http://127.0.0.1:{srv.port}/" in srv.log()
