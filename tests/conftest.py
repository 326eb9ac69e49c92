"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The offline data sets (CIFAR-10, Fashion-MNIST) shipped next to the project: /work/shared/data
# when the project sits in /work/main. $INFOMAX_DATA_DIR overrides the location.
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
