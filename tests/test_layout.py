"""The layout's rules (../shared/DESIGN.md), checked on the code rather than trusted: imports point
down (training -> infomax <- service; the library imports neither), and the service does not pay
for Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (at any depth: a
    function-level import counts as much as a top-level one)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_imports_neither_training_nor_service():
    offenders = {
        str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split(".")[0] in ("training", "service"))
        for p in (REPO / "infomax").rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"infomax/ must not import training/ or service/: {offenders}"


def test_the_service_imports_no_training_code():
    offenders = {
        str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "training")
        for p in (REPO / "service").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_building_the_service_app_does_not_import_lightning():
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings())\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'training'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()
    assert out == "", f"the service app imported {out}"
