"""``metadata.sqlite``: the items (id, source, label, meta, vector) and the small key-value
table, in SQLite (WAL). Connections, transactions and the queries the index runs on them."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1

METADATA_FILE = "metadata.sqlite"

_SQL_CHUNK = 500  # ids per "IN (...)" query (SQLite's variable limit is >= 999)


# --------------------------------------------------------------------------- SQLite

SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    source TEXT,
    label INTEGER,
    meta TEXT,
    vector BLOB NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS oplog(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'remove')),
    ids BLOB NOT NULL,
    n INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# The columns a search filter names (infomax/index/filters.py): part of SCHEMA, and added when a
# store written before them is opened for writing (read-only opens scan the table instead).
# Both cover their queries: an index entry holds the row id, which is the item id.
FILTER_INDEXES = """
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
"""
SCHEMA += FILTER_INDEXES


def connect(db: Path | str, *, read_only: bool, durable: bool) -> sqlite3.Connection:
    if db == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    elif read_only:
        conn = sqlite3.connect(
            Path(db).resolve().as_uri() + "?mode=ro", uri=True, timeout=60.0, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(str(db), timeout=60.0, isolation_level=None, check_same_thread=False)
    if db != ":memory:" and not read_only:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def kv_get(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


def first_free_id(conn: sqlite3.Connection) -> int:
    """One past the largest id ever used (ids of removed items are never handed out again)."""
    top = conn.execute("SELECT MAX(id) FROM items").fetchone()[0]
    return max(kv_get(conn, "next_id"), (top + 1) if top is not None else 0)


def kv_set(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO kv(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, str(int(value)))
    )


def last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='oplog'").fetchone()
    return int(row[0]) if row else 0


def fetch_vectors(conn: sqlite3.Connection, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(present ids in the given order, their vectors) for the ids found in items."""
    found: dict[int, bytes] = {}
    for chunk in chunks(ids):
        q = f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))})"
        for i, blob in conn.execute(q, chunk):
            found[int(i)] = blob
    present = np.array([i for i in ids.tolist() if i in found], dtype=np.int64)
    vecs = np.empty((len(present), dim), dtype=np.float32)
    for row, i in enumerate(present.tolist()):
        vecs[row] = np.frombuffer(found[i], dtype="<f4")
    return present, vecs


def existing_ids(conn: sqlite3.Connection, ids: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for chunk in chunks(ids):
        q = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
        out.extend(int(r[0]) for r in conn.execute(q, chunk))
    return np.array(sorted(out), dtype=np.int64)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def chunks(a: np.ndarray, size: int = _SQL_CHUNK) -> Iterator[list[int]]:
    for i in range(0, len(a), size):
        yield [int(v) for v in a[i : i + size]]
