"""bench/whiten_grid.py's rule for the served whitening (docs/BENCHMARKS.md, "Base width 32 shipped"):
the shortest vectors within 0.2 points of the best weighted k-NN, among the settings that lose
neither 1-NN nor precision@10 against the raw vectors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("whiten_grid", Path(__file__).parents[1] / "bench" / "whiten_grid.py")
assert spec is not None and spec.loader is not None
whiten_grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(whiten_grid)


def row(knn: float, nn1: float, p10: float, dim: int) -> dict:
    return {"knn_top1": knn, "nn1_top1": nn1, "p10": p10, "dim": dim}


def test_the_pick_skips_settings_that_lose_the_neighbours_and_prefers_short_vectors():
    rows = {
        "raw": row(0.56, 0.60, 0.50, 2048),
        "eps 0.001, 1024": row(0.725, 0.61, 0.48, 1024),  # best vote, worse ten nearest than raw: out
        "eps 0.01, all": row(0.717, 0.62, 0.505, 2048),
        "eps 0.01, 1024": row(0.720, 0.63, 0.506, 1024),
        "eps 0.01, 256": row(0.709, 0.62, 0.503, 256),  # 1.1 points behind: too far
    }
    assert whiten_grid.pick(rows) == "eps 0.01, 1024"
    rows["eps 0.01, 512"] = row(0.719, 0.62, 0.506, 512)  # within 0.2 of 0.720 and shorter
    assert whiten_grid.pick(rows) == "eps 0.01, 512"
    rows["eps 0.1, 512"] = row(0.7195, 0.62, 0.52, 512)  # the same length: the higher k-NN
    assert whiten_grid.pick(rows) == "eps 0.1, 512"
    assert whiten_grid.pick({"raw": rows["raw"], "eps 0.001, all": row(0.8, 0.5, 0.4, 2048)}) is None
