"""How a command names the settings of the library's errors: by its flags.

A :class:`~infomax.errors.UserError` names the setting it is about as the library spells it
(``batch_size``, ``model.lr``). Each command's ``main`` is wrapped by :func:`flag_names`, which
spells those settings as the command's flags (``--batch-size``, ``--model.lr``) before the error
leaves it; ``infomax`` (infomax/cli.py) then prints it as one line.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping

from infomax.errors import UserError

Spelling = Callable[[str], str | None]


def flag_names(spell: Spelling) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Decorates a command's ``main(argv)``: a UserError raised in it leaves with the settings its
    message names spelled by ``spell`` (a setting -> its flag, or None for one the command lacks)."""

    def wrap(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        @functools.wraps(main)
        def run(argv: list[str]) -> int:
            try:
                return main(argv)
            except UserError as e:
                e.spell_settings(spell)
                raise

        return run

    return wrap


def argparse_flags(parser: Callable[[], argparse.ArgumentParser], **aliases: str) -> Spelling:
    """The spelling of an argparse command: a setting's own flag (``batch_size`` -> ``--batch-size``)
    where ``parser`` has it, or the flag ``aliases`` gives it (``artifact="--model"``)."""

    @functools.cache
    def flags() -> frozenset[str]:
        return frozenset(_option_strings(parser()))

    def spell(setting: str) -> str | None:
        if setting in aliases:
            return aliases[setting]
        flag = "--" + setting.replace("_", "-")
        return flag if flag in flags() else None

    return spell


def _option_strings(parser: argparse.ArgumentParser) -> Iterable[str]:
    for action in parser._actions:
        yield from action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _option_strings(sub)


def lightning_flags(groups: Mapping[str, Iterable[type]]) -> Spelling:
    """The spelling of a LightningCLI command: a dotted setting is its flag (``model.lr`` ->
    ``--model.lr``); a bare one takes the group of the one class among ``groups`` (group -> classes,
    e.g. ``{"model": [DeepInfoMax]}``) whose constructor has it (``lr`` -> ``--model.lr``), and is
    left as it is when none or several do."""

    def spell(setting: str) -> str | None:
        if "." in setting:
            return "--" + setting
        owners = [
            group for group, classes in groups.items() if any(setting in inspect.signature(cls).parameters for cls in classes)
        ]
        return f"--{owners[0]}.{setting}" if len(owners) == 1 else None

    return spell
