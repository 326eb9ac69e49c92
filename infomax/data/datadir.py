"""Where the data sets live (``$INFOMAX_DATA_DIR``) and the error that says they are not there."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infomax.errors import UserError

PathLike = str | os.PathLike

DATA_DIR_ENV = "INFOMAX_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/infomax/data")


class DataNotFoundError(UserError, FileNotFoundError):
    """Data files are missing: says where we looked, what we expected and how to fix it."""

    DEFAULT_HINT = f"Set {DATA_DIR_ENV} to the folder holding the data, pass data_dir=..., or use download=True to fetch it."

    def __init__(self, folder: PathLike, expected: Sequence[str] = (), hint: str | None = None) -> None:
        self.folder = Path(folder)
        self.expected = tuple(expected)
        self.hint = self.DEFAULT_HINT if hint is None else hint
        wanted = f": expected {', '.join(self.expected)}" if self.expected else ""
        super().__init__(f"data not found in {self.folder}{wanted}. {self.hint}", setting="data_dir")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are re-created from their args when pickled (DataLoader workers, DDP);
        # ours has a richer signature than the single message FileNotFoundError stores.
        return (type(self), (self.folder, self.expected, self.hint))


def resolve_data_dir(data_dir: PathLike | None = None) -> Path:
    """Return the data root: explicit ``data_dir`` > ``$INFOMAX_DATA_DIR`` > ``~/.cache/infomax/data``.

    The folder is not created or checked here; loaders raise :class:`DataNotFoundError` when
    their files are missing.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()
