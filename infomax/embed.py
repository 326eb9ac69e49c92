"""Batched and distributed embedding of a data set or an image folder, and the folder it writes.

``infomax embed`` computes the vector the artifact serves (its ``output``: the code mu, or the
flattened local map) of every image with Lightning's own prediction loop: a LightningModule
whose ``predict_step`` runs the :class:`~infomax.artifact.InferenceEncoder`, and
``Trainer.predict`` over a plain DataLoader. On one device that is a batched loop; on several
devices or nodes (strategy ``ddp``) Lightning gives every rank a disjoint slice of the images
(``UnrepeatedDistributedSamplerWrapper``: no padding, so no image is encoded twice) and every
rank writes its own shard. Rank 0 writes the manifest once every shard is complete.

The embeddings folder (a contract: ``infomax index build`` and other code read it)::

    DIR/embeddings.json                    manifest, written LAST and atomically: without it the
                                           folder is incomplete (a crashed or running embed)
    DIR/shard-00000-of-00002/vectors.npy   float32 (n_r, z_dim): vectors of the images of rank r
    DIR/shard-00000-of-00002/ids.npy       int64 (n_r,): their ids, ascending within the shard
    DIR/shard-00000-of-00002/meta.jsonl    n_r lines {"id": int, "source": str, "label": int|null}
                                           in the order of ids.npy
    DIR/shard-00000-of-00002/shard.json    {"rank", "world_size", "count", "z_dim", "skipped"},
                                           written last in the shard

Ids are deterministic and stable: the image's index in the data set split, or for a folder's file
the first 53 bits of the sha256 of its path relative to the folder (POSIX, Unicode NFC;
``infomax.data.path_id``), so a file keeps its id when others are added or removed and embedding a
changed folder again gives the same items the same ids (the manifest's ``ids`` names the scheme).
Two files that would get one id are refused. Ids are unique across shards; together the shards
hold every id exactly once (minus unreadable files, listed in ``skipped``). Sources are ``"cifar10:test:123"`` for data sets and the path relative to the folder
(posix) for folders; labels are the data set's class or the first-level subfolder's class index
(``classes`` in the manifest), null where unknown.

``embeddings.json``: ``{"format": "infomax-embeddings", "format_version": 1, "artifact": {"id",
"weights_sha256", "output", "path", "z_dim", "dataset", ...}, "z_dim", "data", "kind": "dataset"|"folder",
"split", "count", "classes", "shards": [{"name", "count"}], "skipped": [{"source", "reason"}],
"world_size", "batch_size", "seconds", "created_at", "command", "ids": "position"|"path-sha256-53"}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from infomax.atomic import atomic_path, atomic_write_json, atomic_write_text
from infomax.data.datasets import collate_batch
from infomax.data.sources import ImageSource, resolve_source
from infomax.errors import DataError, MissingFileError, SettingError
from infomax.validate import positive_int

MANIFEST = "embeddings.json"
FORMAT = "infomax-embeddings"
FORMAT_VERSION = 1
SHARD_PREFIX = "shard-"
VECTORS, IDS, META, SHARD_INFO = "vectors.npy", "ids.npy", "meta.jsonl", "shard.json"

# How ids are made, recorded in the manifest: a data set's images keep their index in the split;
# a folder's files get a hash of their relative path (infomax.data.path_id), stable across runs.
ID_SCHEMES = {"dataset": "position", "folder": "path-sha256-53"}


# --------------------------------------------------------------------------------------------
# What to embed: the images of infomax.data.resolve_source, in batches
# --------------------------------------------------------------------------------------------


def make_loader(source: ImageSource, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """The images in id order, ``batch_size`` at a time: ``(uint8 (B, C, S, S), int64 ids (B,))``,
    and for a folder's files a third item, the errors (one str per image, "" for a good one).
    Lightning replaces its sampler with a distributed one under DDP."""
    return DataLoader(
        source.dataset(),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


# --------------------------------------------------------------------------------------------
# Lightning: predict_step and the shard writer
# --------------------------------------------------------------------------------------------


class EncoderPredictor(pl.LightningModule):
    """Wraps an InferenceEncoder for ``Trainer.predict``: ``predict_step`` returns ``{"ids",
    "vectors", "skipped"}`` of a batch: vectors of the good images (float32 (b, z_dim), on the CPU),
    their ids, and ``[(id, reason)]`` of unreadable files."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        images, ids = batch[0], batch[1]
        errors = batch[2] if len(batch) > 2 else None  # a decoded data set's batches have no unreadable images
        skipped = []
        if errors is not None and any(errors):
            good = torch.tensor([not e for e in errors])
            skipped = [(int(i), e) for i, e in zip(ids.tolist(), errors) if e]
            images, ids = images[good.to(images.device)], ids[good.to(ids.device)]
        vectors = self(images).float().cpu() if len(images) else torch.empty(0, 0)
        return {"ids": ids.cpu(), "vectors": vectors, "skipped": skipped}


class ShardWriter(BasePredictionWriter):
    """Gathers one rank's predictions and writes them as its shard at the end of the prediction
    epoch, then waits for every rank (so that rank 0 may check the shards and write the manifest).

    ``write_interval="batch"``: Lightning keeps no list of predictions; this writer holds only the
    ids and vectors of its rank (n_r x z_dim floats)."""

    def __init__(self, out: Path, source: ImageSource, z_dim: int) -> None:
        super().__init__(write_interval="batch")
        self.out, self.source, self.z_dim = out, source, z_dim
        self.ids: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.skipped: list[tuple[int, str]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        if len(prediction["ids"]):
            self.ids.append(prediction["ids"])
            self.vectors.append(prediction["vectors"])
        self.skipped.extend(prediction["skipped"])

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        ids = torch.cat(self.ids).numpy() if self.ids else np.empty(0, np.int64)
        vectors = torch.cat(self.vectors).numpy() if self.vectors else np.empty((0, self.z_dim), np.float32)
        write_shard(self.out, trainer.global_rank, trainer.world_size, ids, vectors, self.source, self.skipped)
        trainer.strategy.barrier("infomax-embed-shards")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def shard_name(rank: int, world_size: int) -> str:
    return f"{SHARD_PREFIX}{rank:05d}-of-{world_size:05d}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would add ".npy"
        np.save(f, array)


def write_shard(
    out: Path,
    rank: int,
    world_size: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    source: ImageSource,
    skipped: Sequence[tuple[int, str]] = (),
) -> Path:
    """Writes one rank's shard: vectors (n, z_dim) float32 and ids (n,) int64, sorted by id, their
    sources and labels, and ``shard.json`` last (a shard without it is incomplete)."""
    order = np.argsort(ids, kind="stable")
    ids = np.ascontiguousarray(ids[order], dtype=np.int64)
    vectors = np.ascontiguousarray(vectors[order], dtype=np.float32)
    folder = Path(out) / shard_name(rank, world_size)
    folder.mkdir(parents=True, exist_ok=True)
    _save_npy(folder / VECTORS, vectors)
    _save_npy(folder / IDS, ids)
    lines = []
    for id_ in ids.tolist():
        pos = source.position(id_)
        lines.append(
            json.dumps({"id": id_, "source": source.sources[pos], "label": source.label_or_none(pos)}, ensure_ascii=False)
        )
    atomic_write_text(folder / META, "".join(line + "\n" for line in lines))
    info = {
        "rank": rank,
        "world_size": world_size,
        "count": int(len(ids)),
        "z_dim": int(vectors.shape[1]),
        "skipped": [{"source": source.sources[source.position(i)], "reason": r} for i, r in skipped],
    }
    atomic_write_json(folder / SHARD_INFO, info)
    return folder


def prepare_output(out: str | Path, overwrite: bool = False) -> Path:
    """Checks that ``out`` may receive embeddings: absent, empty, or (with ``overwrite``) an
    earlier embeddings folder, whose manifest is removed first (so the folder reads as incomplete
    until the new run finishes) and then its shards. Anything else is refused, never deleted."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SettingError(f"out {out} is a file: give a folder for the embeddings", setting="out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SettingError(
                f"--out {out} is not empty: pass --overwrite to replace the embeddings there, or choose another folder",
                setting="out",
            )
        ours = [
            p
            for p in out.iterdir()
            if p.name == MANIFEST or (p.is_dir() and p.name.startswith(SHARD_PREFIX)) or (p.name.startswith(f".{MANIFEST}.tmp-"))
        ]
        others = sorted(p.name for p in out.iterdir() if p not in ours)
        if others:
            raise SettingError(
                f"out {out} holds files that are not embeddings ({', '.join(others[:5])}): "
                f"refusing to overwrite it; choose another folder",
                setting="out",
            )
        (out / MANIFEST).unlink(missing_ok=True)
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_manifest(
    out: Path,
    source: ImageSource,
    encoder,
    *,
    world_size: int,
    batch_size: int,
    seconds: float,
    model_path: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """Checks that the ``world_size`` shards together hold every image once, then writes
    ``embeddings.json`` atomically. Called by rank 0 after every rank wrote its shard."""
    shards, skipped, total, seen = [], [], 0, 0
    for rank in range(world_size):
        folder = out / shard_name(rank, world_size)
        if not (folder / SHARD_INFO).is_file():
            raise MissingFileError(
                f"{folder / SHARD_INFO} is missing after every rank finished: `out` must be on a file system "
                f"that all nodes share",
                setting="out",
            )
        info = json.loads((folder / SHARD_INFO).read_text())
        shards.append({"name": folder.name, "count": int(info["count"])})
        skipped.extend(info["skipped"])
        total += int(info["count"])
        seen += int(info["count"]) + len(info["skipped"])
    if seen != len(source):
        raise RuntimeError(f"the {world_size} shards hold {seen} images, expected {len(source)}")
    config = encoder.config
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "artifact": {
            "id": encoder.id,
            "weights_sha256": config["weights_sha256"],
            "output": encoder.output,
            "path": str(Path(model_path).expanduser().absolute()) if model_path is not None else None,
            "z_dim": int(encoder.dim),
            "dataset": config.get("dataset"),
            "arch": config.get("arch"),
            # measured for these vectors (bench/duplicates.py); `index build` carries it to the index
            "duplicates_threshold": config.get("duplicates_threshold"),
            "input_size": int(encoder.input_size),
            "in_channels": int(encoder.in_channels),
        },
        "z_dim": int(encoder.dim),
        "data": source.name,
        "kind": source.kind,
        "split": source.split,
        "count": total,
        "classes": source.classes,
        "shards": shards,
        "skipped": skipped,
        "world_size": world_size,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "ids": ID_SCHEMES[source.kind],
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _check_devices(accelerator: str, devices: int, num_nodes: int) -> None:
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise SettingError(f"accelerator {accelerator!r}: use auto, cpu or gpu", setting="accelerator")
    for setting, value in (("devices", devices), ("num_nodes", num_nodes)):
        positive_int(setting, value, sep=" ")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available == 0:
            raise SettingError(
                f"accelerator {accelerator}: no CUDA GPU is visible here; use `accelerator` cpu or auto", setting="accelerator"
            )
        if devices > available:
            raise SettingError(f"devices {devices}: only {available} GPU(s) visible on this node", setting="devices")


def embed_source(
    encoder,
    source: ImageSource,
    out: str | Path,
    *,
    batch_size: int = 256,
    devices: int = 1,
    accelerator: str = "auto",
    num_nodes: int = 1,
    num_workers: int | None = None,
    progress: bool = True,
    model_path: str | Path | None = None,
    command: str | None = None,
) -> dict | None:
    """Encodes ``source`` with ``encoder`` through ``Trainer.predict`` into the (prepared) folder
    ``out``. Returns the manifest on global rank 0, None on the other ranks."""
    positive_int("batch_size", batch_size, sep=" ")
    _check_devices(accelerator, devices, num_nodes)
    out = Path(out)
    if num_workers is None:
        # Folders are decoded in the loader: use the cores; decoded data sets need no workers.
        num_workers = min(8, os.cpu_count() or 1) if source.kind == "folder" else 0
    distributed = devices * num_nodes > 1
    if devices * num_nodes > len(source):
        # A rank without images would skip the prediction loop and never reach the shard barrier.
        raise SettingError(
            f"{devices * num_nodes} processes (`devices` x `num_nodes`) for {len(source)} images: use fewer devices",
            setting="devices",
        )
    trainer = pl.Trainer(
        accelerator="gpu" if accelerator == "cuda" else accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if distributed else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[ShardWriter(out, source, encoder.dim)],
    )
    loader = make_loader(source, batch_size, num_workers, pin_memory=isinstance(trainer.accelerator, CUDAAccelerator))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")  # a deprecation inside Lightning itself
        trainer.predict(EncoderPredictor(encoder), dataloaders=loader, return_predictions=False)
    seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    return write_manifest(
        out,
        source,
        encoder,
        world_size=trainer.world_size,
        batch_size=batch_size,
        seconds=seconds,
        model_path=model_path,
        command=command,
    )


def embed(
    model: str | Path,
    data: str,
    out: str | Path,
    *,
    split: str = "test",
    batch_size: int = 256,
    devices: int = 1,
    accelerator: str = "auto",
    num_nodes: int = 1,
    overwrite: bool = False,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict | None:
    """``infomax embed``: loads the artifact ``model``, resolves ``data`` (data set name or folder),
    checks ``out`` and writes the embeddings folder. Every argument is checked before any work
    starts (and before other ranks are launched). Returns the manifest on rank 0."""
    from infomax.artifact import load_encoder

    _check_devices(accelerator, devices, num_nodes)
    positive_int("batch_size", batch_size, sep=" ")
    encoder = load_encoder(model, "cpu", setting="model")
    source = resolve_source(
        data, split, channels=encoder.in_channels, size=encoder.input_size, data_dir=data_dir, limit=limit, model=model
    )
    out = prepare_output(out, overwrite)
    return embed_source(
        encoder,
        source,
        out,
        batch_size=batch_size,
        devices=devices,
        accelerator=accelerator,
        num_nodes=num_nodes,
        num_workers=num_workers,
        progress=progress,
        model_path=model,
        command=command,
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """An embeddings folder read back: all shards, sorted by id."""

    vectors: np.ndarray  # float32 (N, z_dim)
    ids: np.ndarray  # int64 (N,)
    sources: list[str]
    labels: list[int | None]
    manifest: dict

    def __len__(self) -> int:
        return len(self.ids)


def read_embeddings(folder: str | Path) -> Embeddings:
    """Reads every shard of an embeddings folder and checks it against ``embeddings.json``: each
    shard present with its count, one dimension everywhere, ids unique. Raises FileNotFoundError /
    ValueError naming the file and the fix."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"no embeddings folder at {folder}: run `infomax embed --out {folder}` first")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if any(p.name.startswith(SHARD_PREFIX) for p in folder.iterdir()):
            raise DataError(
                f"{folder} has shards but no {MANIFEST}: the `infomax embed` run did not finish; run it again with --overwrite"
            )
        raise MissingFileError(
            f"{manifest_path} is missing: {folder} is not an embeddings folder (write one with `infomax embed --out {folder}`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{manifest_path} is not valid JSON ({e}); run `infomax embed` again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f'{manifest_path} is not an infomax embeddings manifest (no "format": "{FORMAT}")')
    if manifest.get("format_version", 1) > FORMAT_VERSION:
        raise DataError(
            f"{manifest_path} has format_version {manifest['format_version']}, newer than this "
            f"infomax reads ({FORMAT_VERSION}); upgrade infomax"
        )
    z_dim = int(manifest["z_dim"])
    vectors: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    sources: list[str] = []
    labels: list[int] = []
    for shard in manifest["shards"]:
        sdir = folder / shard["name"]
        for name in (VECTORS, IDS, META):
            if not (sdir / name).is_file():
                raise MissingFileError(
                    f"{sdir / name} is missing: the embeddings folder is damaged; run `infomax embed` again with --overwrite"
                )
        try:
            v = np.load(sdir / VECTORS, allow_pickle=False)
            i = np.load(sdir / IDS, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{sdir}: unreadable shard ({e}); run `infomax embed` again with --overwrite") from None
        if v.ndim != 2 or v.shape[1] != z_dim:
            raise DataError(
                f"{sdir / VECTORS} holds vectors of shape {v.shape} but {MANIFEST} says z_dim {z_dim}: "
                f"mismatched dimensions across shards; embed everything again with one artifact"
            )
        if len(v) != shard["count"] or i.shape != (len(v),):
            raise DataError(
                f"{sdir}: {len(v)} vectors and {len(i)} ids where {MANIFEST} says {shard['count']}: "
                f"the shard is damaged; run `infomax embed` again with --overwrite"
            )
        rows = [json.loads(line) for line in (sdir / META).read_text().splitlines() if line.strip()]
        if len(rows) != len(i) or any(r["id"] != x for r, x in zip(rows, i.tolist())):
            raise DataError(f"{sdir / META} does not list the ids of {sdir / IDS} in order: the shard is damaged")
        vectors.append(v.astype(np.float32, copy=False))
        ids.append(i.astype(np.int64, copy=False))
        sources.extend(r["source"] for r in rows)
        labels.extend(r["label"] for r in rows)
    all_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    all_vectors = np.concatenate(vectors) if vectors else np.empty((0, z_dim), np.float32)
    if len(all_ids) != manifest["count"]:
        raise DataError(f"{folder}: the shards hold {len(all_ids)} vectors, {MANIFEST} says {manifest['count']}")
    order = np.argsort(all_ids, kind="stable")
    all_ids = all_ids[order]
    if len(all_ids) > 1 and bool((all_ids[1:] == all_ids[:-1]).any()):
        dup = all_ids[1:][all_ids[1:] == all_ids[:-1]][:5].tolist()
        raise DataError(f"{folder}: ids {dup} appear in more than one shard; run `infomax embed` again with --overwrite")
    return Embeddings(
        vectors=np.ascontiguousarray(all_vectors[order]),
        ids=all_ids,
        sources=[sources[k] for k in order.tolist()],
        labels=[labels[k] for k in order.tolist()],
        manifest=manifest,
    )
