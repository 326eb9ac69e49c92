"""``index.json``: the build record (factory, dimension, search parameters, measured recall and
latency, the encoder's identity). A new record, the checks of a record read back, and of the
``artifact`` identity stored in it."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss

from infomax.index.errors import IndexLoadError

FORMAT_VERSION = 1

RECORD_FILE = "index.json"


RECALL_DEFINITION = (
    "mean over sampled indexed vectors used as queries (the query's own id excluded "
    "from both result lists) of |approx top-10 with exact score >= exact 10th score| / 10, "
    "vs exact inner-product search"
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def infomax_version() -> str:
    try:
        from infomax import __version__  # type: ignore[attr-defined]

        return str(__version__)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return version("infomax")
    except Exception:
        return "0+unknown"


def base_record(dim: int, factory: str, artifact: dict | None) -> dict:
    now = now_iso()
    return {
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "metric": "inner_product",
        "normalized": True,
        "dim": int(dim),
        "count": 0,
        "search_params": {},
        "recall_at_10": None,
        "recall_target": None,
        "recall_target_met": None,
        "recall_definition": RECALL_DEFINITION,
        "latency_ms_per_query": None,
        "batch_ms_per_query": None,
        "tuning_queries": 0,
        "memory_budget_bytes": None,
        "created_at": now,
        "updated_at": now,
        "infomax_version": infomax_version(),
        "faiss_version": faiss.__version__,
        "artifact": copy.deepcopy(artifact),
        "snapshot_seq": 0,
        "index_file_bytes": None,
        "tombstones": 0,
        "build": None,
    }


def check_artifact(artifact: Any) -> None:
    if artifact is None:
        return
    if not isinstance(artifact, Mapping):
        raise ValueError(
            f"artifact must be a dict identifying the encoder (e.g. {{'id': sha256, 'path': ...}}) or None, got {type(artifact).__name__}"
        )
    if "id" in artifact and not isinstance(artifact["id"], str):
        raise ValueError(f"artifact['id'] must be a string, got {artifact['id']!r}")
    try:
        json.dumps(artifact, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact is not JSON-serialisable: {e}") from None


def read_record(p: Path) -> dict:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexLoadError(f"{p}: missing (the index folder has no build record {RECORD_FILE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{p}: cannot be read: {e}") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexLoadError(f"{p}: not valid JSON ({e}); truncated or corrupt build record") from None
    if not isinstance(rec, dict):
        raise IndexLoadError(f"{p}: not an index build record (a JSON {type(rec).__name__}, expected an object)")
    missing = [k for k in ("format_version", "factory", "metric", "normalized", "dim", "artifact") if k not in rec]
    if missing:
        raise IndexLoadError(f"{p}: not an index build record (missing keys: {', '.join(missing)})")
    fv = rec["format_version"]
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise IndexLoadError(f"{p}: invalid format_version {fv!r}")
    if fv > FORMAT_VERSION:
        raise IndexLoadError(f"{p}: format_version {fv} was written by a newer infomax (this one reads <= {FORMAT_VERSION})")
    if rec["metric"] != "inner_product" or rec["normalized"] is not True:
        raise IndexLoadError(
            f"{p}: unsupported metric {rec['metric']!r} / normalized={rec['normalized']!r} (expected inner_product, true)"
        )
    dim = rec["dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise IndexLoadError(f"{p}: invalid dim {dim!r}")
    if not isinstance(rec["factory"], str):
        raise IndexLoadError(f"{p}: invalid factory {rec['factory']!r}")
    if rec["artifact"] is not None and not isinstance(rec["artifact"], dict):
        raise IndexLoadError(f"{p}: invalid artifact {rec['artifact']!r} (expected an object or null)")
    return rec
