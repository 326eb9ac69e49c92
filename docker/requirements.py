"""Print the project's runtime requirements from pyproject.toml, one a line, without torch and
torchvision (the image installs those first, from TORCH_INDEX_URL, as CPU builds).

    python docker/requirements.py [pyproject.toml] > requirements.txt

Used by the Dockerfile so that the dependency layer is keyed on pyproject.toml only and the CPU
torch already in the image is never re-resolved (pyproject pins the version the project is tested
with; the image may carry another build of it, e.g. ``2.13.0+cpu`` from a local wheel index).
"""

from __future__ import annotations

import re
import sys

import tomllib

SKIP = {"torch", "torchvision"}


def main(path: str = "pyproject.toml") -> None:
    with open(path, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    for dep in deps:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", dep).group(1)
        if re.sub(r"[-_.]+", "-", name).lower() not in SKIP:
            print(dep)


if __name__ == "__main__":
    main(*sys.argv[1:])
