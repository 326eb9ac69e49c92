"""The shorthands ``infomax train`` accepts on top of Lightning's CLI, rewritten into its options
before parsing, so that every command takes its data and its overwrite permission the same way:

    --data cifar10|fmnist|mnist      -> --data infomax.data.CIFAR10 (...)
    --data FOLDER                    -> --data infomax.data.ImageFolder --data.path FOLDER
    --data.path FOLDER (no --data)   -> --data infomax.data.ImageFolder --data.path FOLDER
    --overwrite                      -> --export.overwrite true

and the parser's errors as one line (jsonargparse prints the whole usage, then a nested report).
"""

from __future__ import annotations

import re
from pathlib import Path

from infomax.data import canonical_dataset_name
from infomax.errors import SettingError

DATASET_CLASSES = {"cifar10": "infomax.data.CIFAR10", "fmnist": "infomax.data.FashionMNIST", "mnist": "infomax.data.MNIST"}
FOLDER_CLASS = "infomax.data.ImageFolder"
# What `--data X` may name besides a data set or a folder: Lightning's own forms (a class of
# infomax.data or a dotted class path, a YAML/JSON file of the data section, inline JSON).
_CLASS_NAMES = {"CIFAR10", "FashionMNIST", "MNIST", "ImageFolder"}


def _dataset(value: str) -> str | None:
    try:
        return canonical_dataset_name(value)
    except ValueError:
        return None


def _lightning_form(value: str) -> bool:
    if value in _CLASS_NAMES or value.lstrip().startswith("{"):
        return True
    if value.endswith((".yaml", ".yml", ".json")) and Path(value).expanduser().is_file():
        return True
    return bool(re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", value)) and not Path(value).exists()


def data_args(value: str) -> list[str]:
    """The options one ``--data VALUE`` stands for, decided as ``infomax embed`` decides: a data set
    name first, then an existing folder; Lightning's own forms pass through."""
    name = _dataset(value)
    if name is not None:
        return ["--data", DATASET_CLASSES[name]]
    if Path(value).expanduser().is_dir():
        return ["--data", FOLDER_CLASS, "--data.path", value]
    if _lightning_form(value):
        return ["--data", value]
    if Path(value).expanduser().exists():
        raise SettingError(f"--data {value!r} is a file, not a folder: give the folder that holds the images")
    names = ", ".join(DATASET_CLASSES)
    raise SettingError(
        f"--data {value!r} is neither a data set name ({names}) nor an existing folder: "
        f"give one of those names or the path of a folder of images"
    )


def _split(argv: list[str]) -> list[tuple[str, str | None]]:
    """(option, value) pairs of ``--opt value`` / ``--opt=value``; (arg, None) for anything else
    (a flag, or a value whose option is not one rewritten here)."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--data", "--data.path") and i + 1 < len(argv):
            out.append((arg, argv[i + 1]))
            i += 2
            continue
        if arg.startswith(("--data=", "--data.path=")):
            key, value = arg.split("=", 1)
            out.append((key, value))
        else:
            out.append((arg, None))
        i += 1
    return out


def normalize(argv: list[str]) -> list[str]:
    """``argv`` with the shorthands above rewritten into Lightning CLI options."""
    out: list[str] = []
    data_class_given = False
    for key, value in _split(list(argv)):
        if key == "--data" and value is not None:
            expanded = data_args(value)
            data_class_given = True
            out += expanded
        elif key == "--data.path" and value is not None:
            # A path means a folder of images, whatever data set a --config named: the config's
            # other data settings (batch size, input size...) carry over to ImageFolder.
            if not data_class_given:
                out += ["--data", FOLDER_CLASS]
                data_class_given = True
            out += ["--data.path", value]
        elif key == "--overwrite":
            out += ["--export.overwrite", "true"]
        else:
            out.append(key)
    return out


def one_line(message: str) -> str:
    """jsonargparse's report of a bad option, which nests a line per type it tried, as one line
    naming the option and the reason."""
    text = str(message).strip()
    key = re.search(r'Parser key "([^"]+)"', text)
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if key and problem:
        cls, reason = problem.group(1).rsplit(".", 1)[-1], problem.group(2).strip()
        hint = " (for a folder of images pass --data FOLDER)" if "'path'" in reason else ""
        return f"--{key.group(1)}: {reason} by {cls}{hint}; `infomax train --help` lists every option"
    if key:
        rest = text[key.end() :].strip(" :\n")
        return f"--{key.group(1)}: {' '.join(rest.split())}"
    return f"{' '.join(text.split())}; `infomax train --help` lists every option"
