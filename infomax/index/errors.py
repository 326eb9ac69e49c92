"""The two ways an index folder is refused when opened (IndexLockedError, the third, lives
with the lock in ``locks.py``): user errors (``infomax.errors``)."""

from __future__ import annotations

from infomax.errors import UserError


class IndexLoadError(UserError):
    """An index folder cannot be loaded: a file is missing, truncated, foreign or
    corrupt. The message names the file and what is wrong."""


class IndexMismatchError(UserError, ValueError):
    """The index does not belong to the encoder in use (dimension or artifact id).
    The message gives the expected and the found value."""
