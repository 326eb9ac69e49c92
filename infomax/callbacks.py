"""Training callbacks: the online k-NN monitor and the export of the serving artifact."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from infomax.encoders import check_vectors
from infomax.knn import knn_accuracy
from infomax.validate import positive_int

if TYPE_CHECKING:
    from infomax.module import DeepInfoMax

log = logging.getLogger(__name__)


class KNNMonitor(Callback):
    """Logs ``val/knn_top1``: cosine-weighted k-NN top-1 of the validation codes (mu) against a
    fixed random subset of the train split, after every ``every_n_epochs``-th validation.
    ``features="pooled"`` (the heads' input) or ``"local"`` (the flattened local feature map C(x))
    measure those instead: ``infomax train``
    ties it to ``--export.output``, so the best checkpoint, which is what gets exported, is the best
    by the vectors the artifact will serve.

    Works on detached codes in eval mode; under DDP each rank encodes a shard and the codes are
    gathered, so every rank logs the same figure. Data without labels is skipped with one notice.
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        bank_size: int = 10_000,
        max_queries: int = 10_000,
        batch_size: int = 512,
        every_n_epochs: int = 1,
        seed: int = 0,
        features: str = "mu",
    ) -> None:
        check_vectors("features", features)
        for setting, value in (
            ("bank_size", bank_size),
            ("max_queries", max_queries),
            ("batch_size", batch_size),
            ("every_n_epochs", every_n_epochs),
        ):
            positive_int(setting, value)
        self.k, self.temperature = k, temperature
        self.bank_size, self.max_queries = bank_size, max_queries
        self.batch_size, self.every_n_epochs, self.seed = batch_size, every_n_epochs, seed
        self.features = features
        self._warned = False

    def _labelled(self, dm: Any) -> bool:
        val, train = getattr(dm, "val_labels", None), getattr(dm, "train_labels", None)
        ok = (
            dm is not None
            and getattr(dm, "num_classes", 0) > 0
            and val is not None
            and train is not None
            and len(val) > 0
            and bool((val >= 0).all())
            and bool((train >= 0).all())
        )
        if not ok and not self._warned:
            self._warned = True
            log.info("KNNMonitor: the data has no labels or no validation split; val/knn_top1 is not logged")
        return bool(ok)

    @torch.no_grad()
    def _encode(self, trainer: pl.Trainer, module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        rank, world = trainer.global_rank, trainer.world_size
        idx = torch.arange(rank, len(images), world)
        per_rank = -(-len(images) // world)
        if len(idx) < per_rank:  # pad so every rank gathers the same shape
            idx = torch.cat([idx, idx[-1:].expand(per_rank - len(idx))])
        codes = torch.cat([module(images[i].to(module.device), self.features) for i in idx.split(self.batch_size)])
        if world == 1:
            return codes.float()
        gathered = cast(torch.Tensor, module.all_gather(codes))  # (world, per_rank, d): a tensor in, a tensor out
        out = torch.empty(len(images), codes.shape[1], device=codes.device)
        for r in range(world):
            n_r = len(range(r, len(images), world))
            out[r::world] = gathered[r, :n_r].float()
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm: Any = getattr(trainer, "datamodule", None)
        if not self._labelled(dm):
            return
        g = torch.Generator().manual_seed(self.seed)
        bank_idx = torch.randperm(len(dm.train_images), generator=g)[: self.bank_size]
        query_idx = torch.randperm(len(dm.val_images), generator=g)[: self.max_queries]
        bank = self._encode(trainer, pl_module, dm.train_images[bank_idx])
        queries = self._encode(trainer, pl_module, dm.val_images[query_idx])
        acc = knn_accuracy(
            queries,
            dm.val_labels[query_idx],
            bank,
            dm.train_labels[bank_idx],
            num_classes=dm.num_classes,
            k=self.k,
            temperature=self.temperature,
        )
        # Every rank holds the same figure; sync_dist only keeps Lightning's DDP bookkeeping quiet.
        pl_module.log("val/knn_top1", acc, prog_bar=True, sync_dist=True)


class ExportArtifact(Callback):
    """At the end of training writes the serving artifact (``encoder.safetensors`` + ``encoder.json``)
    to ``dirpath`` (default: ``<log dir>/artifact``), from the best checkpoint when there is one.
    ``output``: the vectors the artifact serves, ``"mu"`` (the code), ``"pooled"`` (the heads' input)
    or ``"local"`` (the flattened local feature map C(x)). ``overwrite``: ``infomax train`` refuses, before training, a ``dirpath``
    that already holds files unless it is set (``--overwrite``), as ``embed`` and ``index build`` do."""

    def __init__(self, dirpath: str | None = None, use_best: bool = True, output: str = "mu", overwrite: bool = False) -> None:
        check_vectors("output", output)
        self.dirpath = dirpath
        self.overwrite = overwrite
        self.use_best = use_best
        self.output = output
        self.command = shlex.join(["infomax", *sys.argv[1:]]) if sys.argv else None
        self.path: Path | None = None

    def target(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "artifact"

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted:  # Ctrl-C: keep the checkpoints, export on demand (`infomax export`)
            return
        target = self.target(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self._export(trainer, cast("DeepInfoMax", pl_module), target)

    def _export(self, trainer: pl.Trainer, pl_module: DeepInfoMax, target: Path) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        info: dict = {"metrics": metrics, "epochs": trainer.current_epoch, "steps": trainer.global_step}
        # The exported weights are the best checkpoint's: its score is the artifact's metric, and
        # the last epoch's figures are kept apart so the two are never confused.
        ckpt = trainer.checkpoint_callback
        state = None
        if self.use_best and isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            saved = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
            state = saved["state_dict"]
            # relative to the run root, not this machine's path (an artifact travels; its record must not leak paths)
            info["checkpoint"] = run_relative(ckpt.best_model_path, trainer.default_root_dir)
            info.update(checkpoint_progress(saved))  # epochs/steps stay the whole run's
            info["last_epoch_metrics"] = info.pop("metrics")
            info["metrics"] = {}
            if ckpt.monitor and ckpt.best_model_score is not None:
                info["metrics"][ckpt.monitor] = float(ckpt.best_model_score)
        dm = getattr(trainer, "datamodule", None)
        self.path = pl_module.export(
            target, state_dict=state, dataset=getattr(dm, "name", None), command=self.command, output=self.output, **info
        )
        log.info("serving artifact written to %s", self.path)
        print(f"infomax: serving artifact written to {self.path}", file=sys.stderr)


def run_relative(path: str | Path, root: str | Path | None = None) -> str:
    """A checkpoint's path as encoder.json records it: relative to the run root (``runs/`` by
    default), e.g. ``infomax/version_3/checkpoints/best-041.ckpt``; without a root, the same last
    four parts when the file sits in a run's ``checkpoints/`` folder; else its name alone."""
    p = Path(path).resolve()
    if root is not None:
        try:
            return p.relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    if p.parent.name == "checkpoints" and p.parent.parent.name.startswith("version_"):
        return Path(*p.parts[-4:]).as_posix()
    return p.name


def checkpoint_progress(saved: dict) -> dict:
    """How far training had gone when a checkpoint was written, for encoder.json: the weights of
    the best checkpoint are often epochs older than the run. Lightning stores the index of the
    epoch being run; our checkpoints are written at its end, so that epoch is complete."""
    return {"checkpoint_epochs": int(saved.get("epoch", -1)) + 1, "checkpoint_steps": int(saved.get("global_step", 0))}
