"""infomax's exceptions: one root, and a user's mistake told apart from a bug.

``InfomaxError`` is the root of infomax's own exceptions. ``UserError`` is a mistake the user can
fix (a bad value, a missing or damaged file, bad data); ``setting`` names the setting it is about
as the library spells it (an argument, a config key; dotted where nested: ``model.lr``). The command
line prints a user error as one line, with each setting it names spelled as the command's flag
(``--batch-size``); anything else is a bug and keeps its traceback.

A message names its setting at its start (``batch_size 0: must be a positive integer``,
``lr=0.0: ...``) and any other setting in backquotes (```queries```): that is where the command
line puts the flags (:meth:`UserError.spell_settings`).

Every class keeps the builtin base it had before this root existed (``ArtifactError`` is a
ValueError, ``DataNotFoundError`` a FileNotFoundError, ...), so ``except ValueError`` still catches
what it caught.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable


class InfomaxError(Exception):
    """The root of infomax's own exceptions."""


class UserError(InfomaxError):
    """A mistake the user can fix, not a bug: shown as one line naming the problem and the fix."""

    def __init__(self, message: str = "", *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting

    def spell_settings(self, spell: Callable[[str], str | None]) -> None:
        """Rewrites the message with the settings it names spelled by ``spell`` (the command line
        gives a setting's flag; None leaves the name as it is): the leading ``setting`` and every
        name in backquotes."""
        if not self.args or not isinstance(self.args[0], str):
            return
        message = _QUOTED.sub(lambda m: spell(m.group(1)) or m.group(0), self.args[0])
        lead = self.setting
        if lead and message.startswith(lead) and message[len(lead) : len(lead) + 1] in ("", " ", "=", ":", ","):
            flag = spell(lead)
            if flag:
                message = flag + message[len(lead) :]
        self.args = (message, *self.args[1:])


_QUOTED = re.compile(r"`([A-Za-z_][\w.]*)`")


class SettingError(UserError, ValueError):
    """A value given for a setting (an argument, a flag, a config key) that cannot be used."""


class DataError(UserError, ValueError):
    """Data the user gave is damaged or unusable: a data set's file, an embeddings folder, vectors."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named is not there."""


# The system's refusal of a path (not there, not allowed, a file for a folder or the reverse):
# about a path the user gave, and its message names it.
PATH_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(error: BaseException | type[BaseException]) -> bool:
    """True for what the command line prints as one line: a :class:`UserError`, or the system's
    refusal of a path. Anything else is a bug and keeps its traceback."""
    kind = error if isinstance(error, type) else type(error)
    return issubclass(kind, (UserError, *PATH_ERRORS))


def error_class(name: str) -> type[BaseException] | None:
    """The exception class a formatted traceback names (``infomax.artifact.ArtifactError``,
    ``ValueError``), among the modules already imported; None if unknown."""
    module, _, attr = name.rpartition(".")
    found = getattr(sys.modules.get(module or "builtins"), attr, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None
