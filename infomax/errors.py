"""The exceptions that describe a user's mistake (a bad value, a missing or damaged file, bad
data) rather than a bug. Commands print them as one line naming the problem, not a traceback."""

from __future__ import annotations

# ValueError: bad settings (quoted in the message); FileNotFoundError: missing data or artifact
# (the data module's DataNotFoundError is one); FloatingPointError: a training run that diverged.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FloatingPointError, PermissionError)
