"""The two ways an index folder is refused when opened (IndexLockedError, the third, lives
with the lock in ``locks.py``)."""

from __future__ import annotations


class IndexLoadError(Exception):
    """An index folder cannot be loaded: a file is missing, truncated, foreign or
    corrupt. The message names the file and what is wrong."""


class IndexMismatchError(ValueError):
    """The index does not belong to the encoder in use (dimension or artifact id).
    The message gives the expected and the found value."""
