"""The images of an index's items, kept inside the index folder (``images.sqlite``), so that a
service shows a result's picture without ever reading a path named by a request.

One SQLite table images(id INTEGER PRIMARY KEY, mime TEXT, data BLOB): ids are the index's item
ids. Written before the item enters the index (an image without an item is invisible and
harmless; an item without its image answers 404 for the picture only).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from infomax.errors import DataError

FILENAME = "images.sqlite"
# The image formats a store holds (as uploaded, or as `infomax index build --images` keeps them):
# the ones browsers show as they are. PIL format name -> MIME type served back.
FORMATS: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}


class ImageStore:
    """Thread-safe (one connection, one lock; SQLite in WAL mode with synchronous=FULL)."""

    def __init__(self, folder: str | Path, read_only: bool = False) -> None:
        self.path = Path(folder) / FILENAME
        self.read_only = read_only
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no image store at {self.path}")
            uri = f"file:{self.path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            if not read_only:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, mime TEXT NOT NULL, data BLOB NOT NULL)"
                )
            # Reads the header and the table's root page, so a damaged or foreign file is named
            # here, at open, rather than failing the first request that asks for a picture.
            self._conn.execute("SELECT 1 FROM images LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise DataError(f"{self.path}: corrupt or not an image store ({e})") from None
        self._lock = threading.Lock()

    def put_many(self, items: Iterable[tuple[int, bytes, str]]) -> None:
        """Stores (id, data, mime) triples in one transaction, replacing any earlier image of an id."""
        if self.read_only:
            raise PermissionError(f"{self.path} is open read-only")
        rows = [(int(i), mime, sqlite3.Binary(data)) for i, data, mime in items]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO images (id, mime, data) VALUES (?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def put(self, id: int, data: bytes, mime: str = "image/png") -> None:
        self.put_many([(id, data, mime)])

    def get(self, id: int) -> tuple[bytes, str] | None:
        """(data, mime) of item ``id``, or None."""
        with self._lock:
            row = self._conn.execute("SELECT data, mime FROM images WHERE id = ?", (int(id),)).fetchone()
        return (bytes(row[0]), row[1]) if row else None

    def delete(self, ids: Iterable[int]) -> None:
        if self.read_only:
            raise PermissionError(f"{self.path} is open read-only")
        with self._lock:
            self._conn.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids])

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
