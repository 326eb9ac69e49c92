"""`infomax train` and `infomax embed` as a new user meets them (issue 13, items 8-12): a folder as
--data, an export folder that is already there, Ctrl-C, too few images, and what a run prints.
Real commands in subprocesses on real CIFAR-10 images."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from infomax.data import load_cifar10

INFOMAX = str(Path(sys.executable).parent / "infomax")
CONFIG = str(Path(__file__).parents[1] / "training" / "configs" / "cifar10.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# A narrow encoder (8-16-32 channels): what these tests check does not depend on the width.
SMALL = [
    "--model.arch_kwargs",
    "{base_width: 8, global_width: 16}",
    "--data.limit_train",
    "96",
    "--data.val_size",
    "64",
    "--data.batch_size",
    "32",
    "--knn.k",
    "20",
    "--model.z_dim",
    "16",
    *QUIET,
]


@pytest.fixture(autouse=True, scope="module")
def _data_env(data_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFOMAX_DATA_DIR", str(data_dir))
        yield


def infomax(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command as a user runs it: no warning filters of ours in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([INFOMAX, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _ctrl_c_as_in_a_terminal() -> None:
    """The child's SIGINT at its default, as a shell in a terminal starts a command: a test run
    started in the background (``pytest ... &``) ignores SIGINT, its children inherit that, and
    Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def started(*args: str, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """The command running in the background; killed on the way out if it is still running (a
    failed assertion must not leave a training process behind, taking a core from the next tests)."""
    proc = subprocess.Popen(
        [INFOMAX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, preexec_fn=_ctrl_c_as_in_a_terminal
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """Returns once ``path`` exists; fails if the process ends first or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"ended (rc {proc.returncode}) before {path} appeared: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)  # the interval at which the file system is looked at, not a synchronisation


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir) -> Path:
    """64 real CIFAR-10 test images as PNG files, in two class folders, and one unreadable file."""
    folder = tmp_path_factory.mktemp("photos")
    images, labels = load_cifar10(data_dir, "test")
    for i in range(64):
        cls = folder / ("cat" if labels[i] == 3 else "other")
        cls.mkdir(exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(cls / f"{i:03d}.png")
    (folder / "other" / "broken.png").write_bytes(b"not a png")
    return folder


# -- item 9: a folder is --data, as in `infomax embed` --------------------------------------------


@pytest.fixture(scope="module")
def folder_run(photos, tmp_path_factory):
    """`infomax train --data FOLDER`, one short epoch, as a user types it."""
    root = tmp_path_factory.mktemp("runs")
    r = infomax(
        "train",
        "--data",
        str(photos),
        "--data.batch_size",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(root),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "infomax" / "version_0", r


def test_train_takes_a_folder_as_data(folder_run, photos):
    run, _ = folder_run
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["class_path"] == "infomax.data.ImageFolder" and data["init_args"]["path"] == str(photos)
    assert json.loads((run / "artifact" / "encoder.json").read_text())["dataset"] == "imagefolder"


@pytest.mark.parametrize(
    "args,cls,settings",
    [
        (["--data", "{photos}"], "ImageFolder", {}),
        (["--data.path", "{photos}"], "ImageFolder", {}),
        (["--data={photos}", "--data.input_size", "28"], "ImageFolder", {"input_size": 28}),
        # the recipe of a config on one's own pictures: the data settings carry over
        (["--config", CONFIG, "--data.batch_size", "16", "--data", "{photos}"], "ImageFolder", {"batch_size": 16}),
        (["--data", "fashion-mnist"], "FashionMNIST", {}),
        (["--data", "cifar10", "--data.batch_size", "8"], "CIFAR10", {"batch_size": 8}),
        (["--data", "MNIST"], "MNIST", {}),  # Lightning's own class names still work
    ],
)
def test_data_shorthands_name_the_data_module(args, cls, settings, photos, tmp_path):
    from training.train import build_cli
    from training.train_args import normalize

    argv = [a.replace("{photos}", str(photos)) for a in args]
    cli = build_cli([*normalize(argv), "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert type(cli.datamodule).__name__ == cls
    if cls == "ImageFolder":
        assert cli.datamodule.path == str(photos)
    for key, value in settings.items():
        assert cli.datamodule.hparams[key] == value


@pytest.mark.parametrize(
    "args,says",
    [
        (["--data", "{tmp}/nowhere"], "is neither a data set name (cifar10, fmnist, mnist) nor an existing folder"),
        (["--data.path", "{tmp}/nowhere"], "{tmp}/nowhere"),
        (["--config", CONFIG, "--model.z_dim", "abc"], "--model.z_dim: Expected a <class 'int'>. Got value: abc"),
        (["--config", CONFIG, "--trainer.max_epochz", "3"], "unrecognized arguments: --trainer.max_epochz 3"),
    ],
)
def test_a_bad_option_is_one_line_not_the_usage(args, says, tmp_path, here):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = one_line_error(here("train", *argv, "--trainer.default_root_dir", str(tmp_path)))
    assert says.replace("{tmp}", str(tmp_path)) in line


# -- item 10: an export folder already there ----------------------------------------------------


def test_an_existing_export_folder_is_refused_before_training_unless_overwrite(tmp_path, here):
    art, root = tmp_path / "art", tmp_path / "runs"
    art.mkdir()
    (art / "mine.txt").write_text("keep me")
    base = [
        "train",
        "--config",
        CONFIG,
        *SMALL,
        "--trainer.max_epochs",
        "1",
        "--export.dirpath",
        str(art),
        "--trainer.default_root_dir",
        str(root),
    ]
    # in process (the command's own main): a new interpreter per run would add ~10 s of imports
    line = one_line_error(here(*base))
    assert str(art) in line and "--overwrite" in line
    assert not list(tmp_path.rglob("*.ckpt")) and (art / "mine.txt").read_text() == "keep me"

    r = here(*base, "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((art / "encoder.json").read_text())
    assert first["epochs"] == 1
    # Resuming the run that wrote it replaces its own artifact without --overwrite...
    r = here(*base, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((art / "encoder.json").read_text())["epochs"] == 2
    # ...but a new run does not.
    assert str(art) in one_line_error(here(*base))


# -- item 8: Ctrl-C -------------------------------------------------------------------------------


def test_ctrl_c_during_training_exports_the_best_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "infomax" / "version_0"
    with started(
        "train", "--config", CONFIG, *SMALL, "--trainer.max_epochs", "1000", "--trainer.default_root_dir", str(tmp_path)
    ) as proc:
        wait_for(proc, run / "checkpoints" / "last.ckpt")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    config = json.loads((run / "artifact" / "encoder.json").read_text())
    assert Path(config["checkpoint"]).name.startswith("best-") and config["checkpoint_epochs"] >= 1
    line = next(line for line in err.splitlines() if line.startswith("infomax train: interrupted"))
    assert "best-" in line and str(run / "artifact") in line and "--ckpt_path last" in line


def test_ctrl_c_during_embed_leaves_no_half_written_folder(tiny_artifact, tmp_path):
    out = tmp_path / "emb"
    with started(
        "embed", "--model", str(tiny_artifact), "--data", "cifar10", "--split", "train", "--out", str(out), "--no-progress"
    ) as proc:
        wait_for(proc, out)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err
    assert not out.exists(), list(out.rglob("*"))


# -- item 11: too few images ----------------------------------------------------------------------


def test_too_few_images_are_refused_in_one_line(photos, tmp_path, here):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((photos / "cat").glob("*.png"))[:5]:
        (few / p.name).write_bytes(p.read_bytes())
    line = one_line_error(here("train", "--data", str(few), "--trainer.default_root_dir", str(tmp_path / "r")))
    assert "5 training image(s)" in line and f"at least {16}" in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_small_data_set_says_so_and_still_logs_its_loss(folder_run):
    run, r = folder_run
    assert "only 58 training images" in r.stderr  # 64 readable, 10% of them held out
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("train/loss") for row in rows), "no training loss recorded"


# -- item 12: what a run prints ----------------------------------------------------------------


def test_a_run_prints_what_helps_and_nothing_else(folder_run, photos):
    run, r = folder_run
    out = r.stdout + r.stderr
    for noise in ("litlogger", "LeafSpec", "log_every_n_steps", "site-packages", "across ranks is zero"):
        assert noise not in out, noise
    assert "serving artifact written to" in r.stderr
    skipped = [line for line in r.stderr.splitlines() if "unreadable" in line]
    assert len(skipped) == 1, r.stderr
    listing = run / "skipped-files.txt"
    assert "other/broken.png" in skipped[0] and str(listing) in skipped[0]
    assert listing.read_text().startswith(str(photos / "other" / "broken.png"))


def test_embed_says_where_the_skipped_files_are_listed(tiny_artifact, photos, tmp_path, here):
    handler_before = signal.getsignal(signal.SIGINT)
    r = here(
        "embed",
        "--model",
        str(tiny_artifact),
        "--data",
        str(photos),
        "--out",
        str(tmp_path / "e"),
        "--no-progress",
        "--num-workers",
        "0",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(line for line in r.stderr.splitlines() if "unreadable" in line)
    assert str(tmp_path / "e" / "embeddings.json") in line
    # run inside this process, the command put its Ctrl-C handler back on the way out
    assert signal.getsignal(signal.SIGINT) is handler_before
