"""What callers hand the index, checked and put in the stored form: ids (int64, never negative),
vectors (float32, L2-normalised, finite, non-zero) and metadata rows (source, label, JSON meta).
Every refusal is a ``ValueError`` naming the problem."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infomax.errors import DataError

MAX_ID = 2**63 - 1  # ids are int64 (SQLite INTEGER, FAISS idx_t); -1 is FAISS's "no result"


def as_id_array(ids: Any, what: str = "ids") -> np.ndarray:
    """1-D int64 array from ids; rejects non-integers (floats, strings, bools)."""
    if np.isscalar(ids) or (isinstance(ids, np.ndarray) and ids.ndim == 0):
        ids = [ids]
    try:
        a = np.asarray(ids)
    except Exception as e:  # ragged etc.
        raise DataError(f"{what} must be a 1-D sequence of integers: {e}") from None
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1:
        raise DataError(f"{what} must be 1-D, got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        if a.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in a):
            try:
                return a.astype(np.int64)
            except OverflowError:
                raise DataError(f"{what} must fit in int64") from None
        raise DataError(f"{what} must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and (a > MAX_ID).any():
        raise DataError(f"{what} must fit in int64")
    return a.astype(np.int64, copy=False)


def new_ids(ids: Any, n: int) -> np.ndarray:
    """The caller's ids for ``n`` new vectors (add and build): one per vector, non-negative and
    distinct (ids already in the index are the store's to refuse, by its primary key)."""
    ids_a = as_id_array(ids)
    if len(ids_a) != n:
        raise DataError(f"got {len(ids_a)} ids for {n} vectors")
    if n and int(ids_a.min()) < 0:
        raise DataError(f"ids must be non-negative, got {ids_a[ids_a < 0][:10].tolist()}")
    uniq, counts = np.unique(ids_a, return_counts=True)
    if len(uniq) != n:
        raise DataError(f"duplicate ids in the batch: {uniq[counts > 1][:10].tolist()}")
    return ids_a


def normalized(vectors: Any, dim: int, what: str) -> np.ndarray:
    """(n, dim) float32 C-contiguous, L2-normalised copy; ValueError on bad input."""
    if isinstance(vectors, np.ndarray) and vectors.dtype == np.float32:
        a = vectors
    else:
        try:
            a = np.asarray(vectors)
        except Exception as e:
            raise DataError(f"{what} must be a numeric array of shape (n, {dim}): {e}") from None
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"{what} must be a real numeric array of shape (n, {dim}), got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise DataError(f"{what} must have shape (n, {dim}), got shape {a.shape}")
    if a.shape[1] != dim:
        raise DataError(f"wrong dimension: {what} have dimension {a.shape[1]}, the index expects {dim}")
    with np.errstate(over="ignore", invalid="ignore"):
        a32 = np.ascontiguousarray(a, dtype=np.float32)
        sq = np.einsum("ij,ij->i", a32, a32)
    if len(sq) and bool(np.all(np.isfinite(sq))) and float(sq.min()) > 1e-30:
        return a32 / np.sqrt(sq)[:, None]
    if len(sq) == 0:
        return a32.copy()
    # slow path: precise diagnostics / tiny or huge values
    bad = np.flatnonzero(~np.isfinite(a32).all(axis=1))
    if len(bad):
        src_bad = np.asarray(~np.isfinite(np.asarray(a, dtype=np.float64)).all(axis=1))
        kind = "NaN or inf" if src_bad[bad].all() else "NaN/inf or values outside the float32 range"
        raise DataError(f"{what} contain {kind} in {len(bad)} row(s), first rows {bad[:10].tolist()}")
    a64 = a32.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", a64, a64))
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise DataError(
            f"{what} contain {len(zero)} zero vector(s) (cosine similarity undefined), first rows {zero[:10].tolist()}"
        )
    return np.ascontiguousarray(a64 / norms[:, None], dtype=np.float32)


def metadata_rows(metadata: Any, ids: np.ndarray | None, n: int) -> list[tuple[Any, Any, Any]]:
    if metadata is None:
        return [(None, None, None)] * n
    if isinstance(metadata, Mapping) or not isinstance(metadata, Sequence):
        raise DataError(f"metadata must be a list of {n} dicts (or None), got {type(metadata).__name__}")
    if len(metadata) != n:
        raise DataError(f"metadata has {len(metadata)} entries for {n} vectors")
    rows: list[tuple[Any, Any, Any]] = []
    for i, md in enumerate(metadata):
        if md is None:
            rows.append((None, None, None))
            continue
        if not isinstance(md, Mapping):
            raise DataError(f"metadata[{i}] must be a dict, got {type(md).__name__}")
        d = dict(md)
        if "id" in d:
            given = d.pop("id")
            if ids is None or given != int(ids[i]):
                raise DataError(f"metadata[{i}] has key 'id'={given!r}; pass ids=... to add() instead")
        source = d.pop("source", None)
        if source is not None:
            if isinstance(source, os.PathLike):
                source = os.fspath(source)
            if not isinstance(source, str):
                raise DataError(f"metadata[{i}]['source'] must be a string, got {type(source).__name__}")
        label = d.pop("label", None)
        if label is not None:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise DataError(f"metadata[{i}]['label'] must be an integer or None, got {label!r}")
            label = int(label)
        extra = d.pop("meta", None)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise DataError(f"metadata[{i}]['meta'] must be a dict, got {type(extra).__name__}")
            d = {**dict(extra), **d}
        meta = None
        if d:
            try:
                meta = json.dumps(d, allow_nan=False, ensure_ascii=False, default=json_default)
            except (TypeError, ValueError) as e:
                raise DataError(f"metadata[{i}] is not JSON-serialisable: {e}") from None
        rows.append((source, label, meta))
    return rows


def json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
