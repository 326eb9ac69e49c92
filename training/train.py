"""``infomax train``: Lightning's CLI over DeepInfoMax and the data modules.

    infomax train --config training/configs/cifar10.yaml [--trainer.max_epochs 5] [--model.z_dim 128]
    infomax train --config training/configs/cifar10.yaml --ckpt_path last     # resume the last run

The model's input (channels, size, normalisation) is linked from the data module, so a config
names the data and the recipe, and nothing twice. Defaults live in the code (the reference recipe);
YAML files only override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from infomax.callbacks import ExportArtifact, KNNMonitor
from infomax.commands.flags import flag_names, lightning_flags
from infomax.data import CIFAR10, MNIST, FashionMNIST, ImageFolder, InMemoryDataModule
from infomax.errors import DataError, MissingFileError, SettingError, UserError
from infomax.module import DeepInfoMax
from training import train_args

CONFIG_DIR = Path(__file__).parent / "configs"


class InfomaxCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        # `infomax train ARGS` passes ARGS explicitly, so sys.argv always holds them too; Lightning
        # warns about that case by echoing the whole command line twice on every run.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as e:  # the parser is built with exit_on_error=False
                raise SettingError(train_args.one_line(str(e))) from None

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
            raise MissingFileError(
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
                dirpath=cb.dirpath,
                filename="best-{epoch:03d}" if monitor else "epoch-{epoch:03d}",
                monitor=monitor,
                mode=mode,
                save_last=True,
                auto_insert_metric_name=False,
            )


def _keep_last_every_epoch(trainer) -> None:
    """Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint is saved at the same step, so
    with a monitor it is a copy of the best one, and ``--ckpt_path last`` would resume from there,
    losing every epoch since (and the final weights of a run were nowhere). A second checkpoint
    callback without a monitor writes ``last.ckpt`` after every epoch instead."""
    for cb in list(trainer.checkpoint_callbacks):
        if cb.monitor is not None and cb.save_last:
            cb.save_last = False
            trainer.callbacks.append(
                ModelCheckpoint(
                    dirpath=cb.dirpath,
                    filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                    monitor=None,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )


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
        # A bad option is one line (ValueError below), not the whole usage and a nested report.
        parser_kwargs={"prog": "infomax train", "default_env": False, "exit_on_error": False},
        args=argv,
    )


# The classes behind each group of options: a bare setting a UserError names is spelled as the
# flag of the one group whose class takes it (lr -> --model.lr).
FLAG_GROUPS = {
    "model": [DeepInfoMax],
    "data": [CIFAR10, FashionMNIST, MNIST, ImageFolder],
    "knn": [KNNMonitor],
    "export": [ExportArtifact],
    "checkpoint": [ModelCheckpoint],
}


@flag_names(lightning_flags(FLAG_GROUPS))
def main(argv: list[str]) -> int:
    typed = list(argv)
    _quiet_lightning()
    try:
        cli = build_cli(train_args.normalize(typed))
    except ValueError as e:
        # jsonargparse reports a class's refusal of its settings (a data module's) as a ValueError
        # of its own, caused by the class's: that UserError is the one line that names the setting.
        cause = _user_error_behind(e)
        if cause is None:
            raise
        raise cause from None
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path and ckpt_path != "last" and not Path(ckpt_path).is_file():
        raise MissingFileError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    # Trainer.callbacks is set by Lightning's callback connector, untyped on the class.
    export = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ExportArtifact))  # type: ignore[attr-defined]
    _check_export_target(export.target(cli.trainer), export.overwrite, ckpt_path)
    # Load the data now: a missing data set is reported before any training machinery starts.
    cli.datamodule.setup("fit")
    _report_skipped(cli.datamodule, cli.trainer)
    _check_data_size(cli.datamodule)
    _adapt_checkpoint_monitor(cli.trainer, cli.datamodule)
    _keep_last_every_epoch(cli.trainer)
    _fit_log_interval(cli.trainer, cli.datamodule)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful stop then sys.exit(1), with no word on the weights.
        if not cli.trainer.interrupted:
            raise
        return _after_interrupt(cli, export, typed)
    return 0


def _user_error_behind(error: BaseException) -> UserError | None:
    """The first UserError among the causes of ``error``, if any."""
    seen: set[int] = set()
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


# -- before training ---------------------------------------------------------------------------


def _check_export_target(target: Path, overwrite: bool, ckpt_path: str | None) -> None:
    """Refuses, before any training, to replace files already in the export folder, the way
    ``infomax embed`` and ``infomax index build`` refuse theirs. A resumed run may replace its own
    artifact (the one exported from a checkpoint in the same folder as the one resumed)."""
    if target.exists() and not target.is_dir():
        raise SettingError(f"--export.dirpath {target} is a file: give a folder for the serving artifact")
    if overwrite or not target.is_dir() or not any(target.iterdir()):
        return
    if ckpt_path and _same_folder(_exported_from(target), Path(ckpt_path).resolve().parent):
        return
    raise SettingError(
        f"--export.dirpath {target} already holds files: pass --overwrite to replace them at the "
        f"end of training, or choose another --export.dirpath"
    )


def _exported_from(artifact: Path) -> Path | None:
    """The checkpoint folder an artifact was exported from, per its encoder.json."""
    try:
        ckpt = json.loads((artifact / "encoder.json").read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(ckpt).parent if isinstance(ckpt, str) and ckpt else None


def _same_folder(recorded: Path | None, resumed: Path) -> bool:
    """Whether the checkpoint folder an artifact records is the resumed one. The record is
    relative to the run root (``infomax/version_3/checkpoints``), or absolute in older artifacts."""
    if recorded is None or not recorded.parts:
        return False
    if recorded.is_absolute():
        return recorded.resolve() == resumed
    return len(recorded.parts) > 1 and resumed.parts[-len(recorded.parts) :] == recorded.parts


# Below this many training images a run is refused: each image is contrasted with the others of
# its batch, and a handful of images gives a task a network solves by memorising them.
MIN_TRAIN_IMAGES = 16
# Below this many it runs, with a warning: Deep INFOMAX is trained on tens of thousands of images,
# and a few hundred give codes barely better than a random initialisation.
FEW_TRAIN_IMAGES = 1000


def _check_data_size(dm) -> None:
    n = len(dm.train_images)
    held_out = 0 if dm.val_images is None else len(dm.val_images)
    where = f"{dm.name}" + (f" ({dm.path})" if getattr(dm, "path", None) else "")
    if n < MIN_TRAIN_IMAGES:
        raise DataError(
            f"{where}: {n} training image(s) (after holding out {held_out} for validation); "
            f"training needs at least {MIN_TRAIN_IMAGES}: give more images"
        )
    if n < FEW_TRAIN_IMAGES:
        _say(
            f"warning: only {n} training images in {where}: expect codes little better than a random "
            f"initialisation (Deep INFOMAX is trained on tens of thousands)"
        )
    if not held_out:
        _say(
            "warning: no validation images (--data.val_size): no val/loss or val/knn_top1; the checkpoint kept "
            "is the last epoch's"
        )


def _report_skipped(dm, trainer) -> None:
    """One line for the unreadable files of a folder, and the full list in the run folder."""
    skipped = getattr(dm, "skipped", None)
    if not skipped:
        return
    listing = Path(trainer.log_dir or trainer.default_root_dir) / "skipped-files.txt"
    if trainer.is_global_zero:
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{path}\t{reason}\n" for path, reason in skipped))
    folder = Path(dm.path).expanduser().absolute()
    first_path, first_reason = skipped[0]
    first_file = Path(first_path)
    first = first_file.relative_to(folder).as_posix() if first_file.is_relative_to(folder) else first_path
    _say(
        f"warning: skipped {len(skipped)} unreadable file(s) in {dm.path}, e.g. {first}: {first_reason}; "
        f"all of them listed in {listing}"
    )


def _fit_log_interval(trainer, dm) -> None:
    """Logs the training loss at least once an epoch: with fewer batches than log_every_n_steps
    (default 50) a run would record no training loss at all (Lightning only warns about it)."""
    per_epoch = len(dm.train_images) // (dm.batch_size * max(1, trainer.world_size))
    trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, per_epoch))


# -- output ------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"infomax train: {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One line, without the library source path Lightning prints before each of its warnings.
    _say(f"warning: {message}")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def _quiet_lightning() -> None:
    """Silences what tells a user of this command nothing: an advertisement for a cloud logger, a
    deprecation inside Lightning itself, the empty validation loader of data without a validation
    split (said plainly by _check_data_size), the logging interval (fitted by _fit_log_interval),
    and the data module's note on unreadable files (said again by _report_skipped, with where the
    whole list is; a folder is read while the command line is parsed, so the filter is global)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTips())
    for message in (
        r".*LeafSpec.*",
        r"Total length of .* across ranks is zero",
        r"The number of training batches .* is smaller than the logging interval",
        r"skipped \d+ unreadable",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.showwarning = _show_warning


# -- Ctrl-C ------------------------------------------------------------------------------------


def _after_interrupt(cli, export: ExportArtifact, typed: list[str]) -> int:
    """After Ctrl-C: exports the best checkpoint so far (a second Ctrl-C is ignored meanwhile:
    Lightning ignores SIGINT once it has stopped) and says how to resume."""
    trainer = cli.trainer
    if not trainer.is_global_zero:
        return 130
    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
    where = f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
    if not best or not Path(best).is_file():
        _say(f"interrupted at {where}, before the first checkpoint (written at the end of an epoch): nothing to export")
        return 130
    export._export(trainer, cli.model, export.target(trainer))
    resume = list(typed)
    if "--ckpt_path" not in resume and not any(a.startswith("--ckpt_path=") for a in resume):
        resume += ["--ckpt_path", "last"]
    _say(
        f"interrupted at {where}; exported the best checkpoint so far ({Path(best).name}) to {export.path}; "
        f"continue training with: {shlex.join(['infomax', 'train', *resume])}"
    )
    return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
