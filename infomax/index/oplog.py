"""The operation log: every add/remove of an index bound to a folder is logged in
``metadata.sqlite`` with the items, and the snapshot records the last entry it holds. What a
FAISS index that applied the log up to ``applied_seq`` must change to catch up with the store."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import numpy as np

from infomax.index.faiss_ops import faiss_ids
from infomax.index.store import fetch_vectors, kv_get, last_seq


def log_entry(conn: sqlite3.Connection, op: str, ids: np.ndarray) -> int:
    """Append an 'add' or 'remove' of ``ids`` (inside the caller's transaction, with the items it
    changes); returns its sequence number."""
    cur = conn.execute(
        "INSERT INTO oplog(op, ids, n, created_at) VALUES(?, ?, ?, ?)",
        (op, np.ascontiguousarray(ids, dtype="<i8").tobytes(), len(ids), time.time()),
    )
    assert cur.lastrowid is not None  # an INSERT into a rowid table always sets it
    return cur.lastrowid


def logged_ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i8").astype(np.int64)


class Plan:
    """Changes to bring the FAISS index up to date with the store."""

    __slots__ = ("remove", "add_ids", "add_vecs", "seq", "full")

    def __init__(self, remove: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray, seq: int, full: bool):
        self.remove, self.add_ids, self.add_vecs, self.seq, self.full = remove, add_ids, add_vecs, seq, full


def catch_up(
    conn: sqlite3.Connection, applied_seq: int, index: Any, kind: str, dim: int, *, force_full: bool = False
) -> Plan | None:
    """Inside a transaction on ``conn``: what to apply to catch up with the log."""
    last = last_seq(conn)
    if last <= applied_seq and not force_full:
        return None
    full = force_full or kv_get(conn, "pruned_through") > applied_seq
    touched: list[np.ndarray] = []
    if not full:
        expect = applied_seq + 1
        for seq, blob in conn.execute("SELECT seq, ids FROM oplog WHERE seq > ? ORDER BY seq", (applied_seq,)):
            if seq != expect:  # gap: entries were pruned or lost
                full = True
                break
            touched.append(logged_ids(blob))
            expect += 1
        if expect != last + 1:  # trailing entries missing
            full = True
    if full:
        item_ids = []
        item_seqs = []
        for i, s in conn.execute("SELECT id, seq FROM items"):
            item_ids.append(i)
            item_seqs.append(s)
        item_ids_a = np.array(item_ids, dtype=np.int64)
        item_seqs_a = np.array(item_seqs, dtype=np.int64)
        in_faiss = faiss_ids(index, kind)
        stale = item_ids_a[item_seqs_a > applied_seq]
        remove = np.union1d(np.setdiff1d(in_faiss, item_ids_a), np.intersect1d(stale, in_faiss))
        to_add = np.union1d(np.setdiff1d(item_ids_a, in_faiss), stale)
        add_ids, add_vecs = fetch_vectors(conn, to_add, dim)
        return Plan(remove, add_ids, add_vecs, max(last, applied_seq), True)
    ids = np.unique(np.concatenate(touched)) if touched else np.zeros(0, dtype=np.int64)
    add_ids, add_vecs = fetch_vectors(conn, ids, dim)
    return Plan(ids, add_ids, add_vecs, last, False)
