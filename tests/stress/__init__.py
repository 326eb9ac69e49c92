"""Long reliability runs of the HTTP service and their shared helpers (see docs/RELIABILITY.md).

The modules import each other as ``stress.*`` (and the corpus as ``hostile``), with ``tests/`` on
``sys.path``: pytest puts it there for tests/test_reliability.py; for ``python -m tests.stress.X``
this package does it.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
