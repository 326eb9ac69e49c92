"""The machine a benchmark ran on, in words (for the figures of docs/BENCHMARKS.md)."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """``lscpu``'s model name, else what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
