"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The offline data sets (CIFAR-10, Fashion-MNIST) shipped next to the project: ../shared/data,
# beside the checkout. $INFOMAX_DATA_DIR overrides the location.
_DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding ``cifar-10-batches-py/`` and ``FashionMNIST/raw/``.

    Never skips: tests that need the real files must run, so a missing folder is a failure.
    """
    path = Path(os.environ.get("INFOMAX_DATA_DIR") or _DEFAULT_DATA_DIR).expanduser()
    if not (path / "cifar-10-batches-py").is_dir() or not (path / "FashionMNIST" / "raw").is_dir():
        pytest.fail(
            f"real data not found in {path} (expected cifar-10-batches-py/ and FashionMNIST/raw/); "
            "set INFOMAX_DATA_DIR to the shared data folder",
            pytrace=False,
        )
    return path


@pytest.fixture
def here(capfd):
    """Runs an ``infomax`` command in this process, through the console script's own ``main``:
    the same exit code and the same lines on stdout and stderr (captured at the file descriptors,
    so what a library prints through a handler of its own is seen too), without the ~10 s a new
    process spends importing torch and Lightning. For the refusals and short commands; what needs a
    process of its own (signals, DDP, the command line recorded in an artifact) keeps one."""
    import subprocess

    from infomax.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capfd.readouterr()
        rc = main(list(args))
        out = capfd.readouterr()
        return subprocess.CompletedProcess(["infomax", *args], rc, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def bench_script():
    """Loads a script of ``bench/`` (a folder of scripts, not a package) as a module, by name:
    ``bench_script("loss_curves")``."""
    import importlib.util
    from types import ModuleType

    bench = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str) -> ModuleType:
        # As when a script of bench/ runs: its folder is on sys.path, so it imports its neighbours.
        if str(bench) not in sys.path:
            sys.path.insert(0, str(bench))
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def make_artifact(path: Path, *, z_dim: int = 32, in_channels: int = 3, input_size: int = 32, seed: int = 0) -> Path:
    """A real serving artifact of a randomly initialised reference encoder (no training: fast)."""
    import torch

    from infomax.module import DeepInfoMax

    torch.manual_seed(seed)
    module = DeepInfoMax(z_dim=z_dim, in_channels=in_channels, input_size=input_size)
    return module.export(path, dataset="cifar10" if in_channels == 3 else "fmnist", command="tests")


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """Artifact folder of a random-init conv encoder for 32 px RGB images, z_dim 32."""
    return make_artifact(tmp_path_factory.mktemp("artifact") / "cifar")


@pytest.fixture(scope="session")
def tiny_grey_artifact(tmp_path_factory) -> Path:
    """Artifact folder of a random-init conv encoder for 28 px grey images, z_dim 32."""
    return make_artifact(tmp_path_factory.mktemp("artifact") / "fmnist", in_channels=1, input_size=28)


@pytest.fixture
def tb_events():
    """Writes an events file as Lightning's TensorBoard logger leaves one, record by record with
    chosen wall times: ``write(folder, [(minute, tag, value), ...], start)``, a first record when the
    logger starts (at ``start``, any wall clock: readers count minutes from it), then each scalar at
    start + minute. Returns the folder."""

    def write(folder: Path, scalars: list[tuple[float, str, float]], start: float = 1_790_000_000.0) -> Path:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder.mkdir(parents=True)
        with open(folder / f"events.out.tfevents.{int(start)}.test.0", "wb") as f:
            w = RecordWriter(f)
            w.write(Event(wall_time=start, file_version="brain.Event:2").SerializeToString())
            for step, (minute, tag, value) in enumerate(scalars):
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
                w.write(Event(wall_time=start + 60 * minute, step=step, summary=summary).SerializeToString())
        return folder

    return write
