"""The checks of a setting's value that recur across the library, each raising a
:class:`~infomax.errors.SettingError` that names the setting and quotes the value.

``sep`` joins the setting's name and the value in the message: ``"="`` as a keyword argument is
written (``k=0: must be a positive integer``), ``" "`` as a flag is (``batch_size 0: ...``, which
the command line shows as ``--batch-size 0: ...``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infomax.errors import SettingError


def is_int(value: Any) -> bool:
    """An integer, Python's or NumPy's; a bool is not one."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(setting: str, value: Any, *, what: str = "a positive integer", sep: str = "=") -> int:
    """``value`` if it is an integer >= 1, else a SettingError: ``{setting}{sep}{value!r}: must be {what}``."""
    if not is_int(value) or value < 1:
        raise SettingError(f"{setting}{sep}{value!r}: must be {what}", setting=setting)
    return value


def non_negative_int(setting: str, value: Any, *, what: str = "a non-negative integer", sep: str = "=") -> int:
    """``value`` if it is an integer >= 0, else a SettingError: ``{setting}{sep}{value!r}: must be {what}``."""
    if not is_int(value) or value < 0:
        raise SettingError(f"{setting}{sep}{value!r}: must be {what}", setting=setting)
    return value


def optional_positive_int(setting: str, value: Any, **kwargs: Any) -> int | None:
    """None, or a positive integer (:func:`positive_int`)."""
    return None if value is None else positive_int(setting, value, **kwargs)
