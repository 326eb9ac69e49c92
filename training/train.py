"""``infomax train``: Lightning's CLI over DeepInfoMax and the data modules.

    infomax train --config training/configs/cifar10.yaml [--trainer.max_epochs 5] [--model.z_dim 128]
    infomax train --config training/configs/cifar10.yaml --ckpt_path last     # resume the last run

The model's input (channels, size, normalisation) is linked from the data module, so a config
names the data and the recipe, and nothing twice. Defaults live in the code (the reference recipe);
YAML files only override them.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from infomax.callbacks import ExportArtifact, KNNMonitor
from infomax.data import InMemoryDataModule
from infomax.module import DeepInfoMax

CONFIG_DIR = Path(__file__).parent / "configs"


class InfomaxCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        # `infomax train ARGS` passes ARGS explicitly, so sys.argv always holds them too; Lightning
        # warns about that case by echoing the whole command line twice on every run.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        for attr in ("in_channels", "input_size", "mean", "std"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        # Always-on callbacks, configurable as --knn.*, --checkpoint.*, --export.*
        parser.add_lightning_class_args(KNNMonitor, "knn")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/knn_top1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ExportArtifact, "export")
        # The exported weights are the best checkpoint's by val/knn_top1: measure the vectors served.
        parser.link_arguments("export.output", "knn.features")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from, or 'last'")

    def instantiate_trainer(self, **kwargs):
        # Default logging: TensorBoard and CSV side by side in one run folder,
        # <default_root_dir>/infomax/version_N (two loggers left alone would count versions apart).
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if trainer_cfg.get("logger") in (None, True) and "logger" not in kwargs:
            from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

            root = Path(trainer_cfg.get("default_root_dir") or "runs")
            version = self._resume_version(root / "infomax")
            if version is None:
                version = _next_version(root / "infomax")
            # The CSV logger warns that the folder "is not empty" and that earlier logs "will be
            # deleted" whenever config.yaml was written first, i.e. always: nothing is deleted here
            # (_resume_version has set a resumed run's metrics.csv aside as metrics.partN.csv).
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            kwargs["logger"] = [
                TensorBoardLogger(root, name="infomax", version=version, default_hp_metric=False),
                CSVLogger(root, name="infomax", version=version),
            ]
        return super().instantiate_trainer(**kwargs)

    def _resume_version(self, runs: Path) -> int | None:
        """``--ckpt_path last`` resumes the newest run under the root folder, logging into the same
        version folder; Lightning alone would look for it in a new, empty one."""
        if self.config.get("ckpt_path") != "last":
            return None
        candidates = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(
                f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints; "
                f"start a new run (no --ckpt_path) or give a checkpoint file"
            )
        self.config["ckpt_path"] = str(candidates[-1])
        run = candidates[-1].parent.parent
        # Lightning's CSV logger deletes an existing metrics.csv; TensorBoard appends. Keep the
        # earlier rows beside the new file rather than lose them.
        if (run / "metrics.csv").is_file():
            n = len(list(run.glob("metrics.part*.csv")))
            (run / "metrics.csv").rename(run / f"metrics.part{n}.csv")
        return int(run.name.split("_", 1)[1])


def _adapt_checkpoint_monitor(trainer, dm) -> None:
    """Without labels there is no val/knn_top1: keep the best by val/loss; without a validation
    split, only the last. Decided before fitting, so a run never fails at its first validation."""
    has_val = getattr(dm, "val_images", None) is not None and len(dm.val_images) > 0
    labelled = getattr(dm, "num_classes", 0) > 0
    for i, cb in enumerate(trainer.callbacks):
        if isinstance(cb, ModelCheckpoint) and cb.monitor == "val/knn_top1" and not (has_val and labelled):
            monitor, mode = ("val/loss", "min") if has_val else (None, "min")
            trainer.callbacks[i] = ModelCheckpoint(
                dirpath=cb.dirpath, filename="best-{epoch:03d}" if monitor else "epoch-{epoch:03d}",
                monitor=monitor, mode=mode, save_last=True, auto_insert_metric_name=False,
            )


def _keep_last_every_epoch(trainer) -> None:
    """Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint is saved at the same step, so
    with a monitor it is a copy of the best one, and ``--ckpt_path last`` would resume from there,
    losing every epoch since (and the final weights of a run were nowhere). A second checkpoint
    callback without a monitor writes ``last.ckpt`` after every epoch instead."""
    for cb in list(trainer.checkpoint_callbacks):
        if cb.monitor is not None and cb.save_last:
            cb.save_last = False
            trainer.callbacks.append(ModelCheckpoint(dirpath=cb.dirpath, filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                                                     monitor=None, save_top_k=1, enable_version_counter=False))


def _next_version(folder: Path) -> int:
    versions = [int(p.name.split("_", 1)[1]) for p in folder.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(versions, default=-1) + 1


TRAINER_DEFAULTS = {"max_epochs": 50, "default_root_dir": "runs", "log_every_n_steps": 50}


def build_cli(argv: list[str]) -> InfomaxCLI:
    """Parses ``infomax train``'s arguments and builds the model, data module and trainer (no data
    is loaded and nothing is trained yet)."""
    return InfomaxCLI(
        DeepInfoMax,
        InMemoryDataModule,
        subclass_mode_data=True,
        run=False,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "infomax train", "default_env": False},
        args=argv,
    )


def main(argv: list[str]) -> int:
    cli = build_cli(argv)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path and ckpt_path != "last" and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    # Load the data now: a missing data set is reported before any training machinery starts.
    cli.datamodule.setup("fit")
    _adapt_checkpoint_monitor(cli.trainer, cli.datamodule)
    _keep_last_every_epoch(cli.trainer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
