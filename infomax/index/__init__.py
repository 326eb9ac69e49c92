"""Cosine-similarity index over image embeddings: FAISS for search, SQLite for
metadata and durability.

Conventions (faiss / autofaiss style)
-------------------------------------
* Vectors are L2-normalised before they are added or queried and the index uses
  the inner-product metric, so scores are cosine similarities (higher = closer,
  at most ~1.0). Zero vectors, NaN/inf values and wrong dimensions raise
  ``ValueError`` naming the problem; nothing is silently indexed.
* The FAISS interface is kept: ``search`` returns ``(scores, ids)``, two
  ``(n, k)`` arrays, float32 and int64. Ids are non-negative int64 chosen by the
  caller (or allocated ``max+1``); ``-1`` is never an id. When fewer than ``k``
  items exist, rows are padded at the end with id ``-1`` and score ``-inf``
  (FAISS convention). Approximate indexes are searched again with wider
  parameters when a row comes back short, so whenever at least ``k`` items are
  present every row holds ``k`` real ids.

On-disk layout (a contract other code relies on)
------------------------------------------------
A folder with three files (and ``writer.lock``, see below)::

    index.faiss      FAISS index (``faiss.read_index`` reads it as is), followed by a
                     32-byte snapshot trailer: b"IMXSNAP1", payload length (u64),
                     last applied operation sequence number (i64), CRC-32 of the
                     payload (u32), reserved (u32). The trailer detects truncated or
                     foreign files and records which log entries the snapshot holds.
    index.json       build record (see ``EmbeddingIndex.info``): format_version,
                     factory, metric "inner_product", normalized true, dim, count,
                     search_params ({"nprobe": ..} / {"efSearch": ..} / {}),
                     recall_at_10, latency_ms_per_query, created_at,
                     infomax_version, artifact (dict identifying the encoder, or
                     null), snapshot_seq, ...
    metadata.sqlite  SQLite, WAL mode, synchronous=FULL:
                       items(id INTEGER PRIMARY KEY, source TEXT, label INTEGER NULL,
                             meta TEXT (JSON object), vector BLOB (float32 LE,
                             L2-normalised), seq INTEGER (log entry that added it))
                       oplog(seq INTEGER PRIMARY KEY AUTOINCREMENT, op 'add'|'remove',
                             ids BLOB (int64 LE), n INTEGER, created_at REAL)
                       kv(key TEXT PRIMARY KEY, value TEXT): schema_version, dim,
                             next_id, snapshot_seq, pruned_through

Filtered search
---------------
``search(queries, k, filter={"label": {"in": [3, 5]}, "meta.camera": "x100"})`` (and
``search_by_id``) return the k nearest items among those whose metadata the filter matches: label
(equal, in), source (equal, in, prefix) and the keys of ``meta`` (equal, in, prefix; nested by
dots), ANDed; a bad filter raises ``ValueError`` naming the key and what is allowed (syntax and
limits: ``filters.py``). The filter runs inside the FAISS search as an id selector, so every row
holds ``min(k, m)`` real ids when ``m`` items match; the path each index type takes (exact or
exhaustive when few items match, efSearch / nprobe raised by n / m otherwise): ``filtered.py``.

Ids in FAISS: flat and graph indexes are wrapped in ``IndexIDMap2``; IVF indexes
use their native ids. HNSW graphs cannot delete, so removed HNSW entries are
tombstoned (their id in the id map is set to -2 and searches use an
``IDSelector`` that skips them) until :meth:`EmbeddingIndex.compact`.

Durability
----------
For an index bound to a folder, ``add``/``remove`` commit the items (vectors and
metadata) together with an operation-log entry in one SQLite transaction
(fsync'd when ``durable=True``), then apply the change to the in-memory FAISS
index. ``index.faiss`` is only a snapshot; ``save()``/``checkpoint()`` rewrite it
atomically (temp file + fsync + rename + directory fsync) and prune the log
entries it contains. ``load()`` replays log entries newer than the snapshot, so a
``kill -9`` right after ``add()`` returns loses nothing and after ``load()`` the
FAISS index and the metadata store agree. Replay is idempotent (every logged id is
re-synchronised with the ``items`` table), and a full reconciliation runs if the
snapshot and the store disagree in any other way (e.g. the log was pruned past the
snapshot).

One writer per folder (``infomax.index.locks``): a writable instance holds an
exclusive OS lock on ``writer.lock`` in the folder for its lifetime (released by
``close()``, or by the kernel when the process dies, ``kill -9`` included); a
second writable ``load()`` anywhere raises :class:`IndexLockedError` naming the
holder's pid and command, and so does a ``build``/``save`` that would replace a
folder a writer has open. Any number of read-only instances may open the folder
alongside the writer; they pick up its log entries with
:meth:`EmbeddingIndex.refresh`, and :meth:`EmbeddingIndex.folder_replaced` tells
them when a rebuild has put a new folder in place.

Thread safety
-------------
Any number of threads may search concurrently; mutations (add, remove, save,
compact, refresh) are serialised by a writer mutex, and the moment the FAISS
structure is modified is protected by a writer-preferring readers-writer lock, so
a search never observes a half-applied change. FAISS releases the GIL while it
searches. Metadata reads use their own SQLite connection (WAL readers do not
block on the writer). ``get()`` right after a concurrent ``remove()`` of the same
id can return ``None``: callers must treat that as "gone".

Where it lives
--------------
``embedding_index.py`` the front class (state, writes, close), with one mixin per file for
``load.py``, ``persist.py`` (save, checkpoint, export), ``build.py``, ``tuning.py``,
``search.py`` and ``items.py`` (metadata reads); ``filters.py`` (parsing a filter, its SQL) and
``filtered.py`` (the filtered search paths). Beneath them: ``factory.py`` (which index to
build), ``faiss_ops.py``, ``snapshot.py`` (``index.faiss``), ``record.py`` (``index.json``),
``store.py`` (``metadata.sqlite``), ``oplog.py`` (replaying the log), ``inputs.py`` (checks of
ids, vectors, metadata), ``folders.py`` (a folder renamed into place), ``locks.py``, ``errors.py``.
"""

from __future__ import annotations

from infomax.index.embedding_index import EmbeddingIndex
from infomax.index.errors import IndexLoadError, IndexMismatchError
from infomax.index.factory import choose_factory, estimate_memory, parse_memory
from infomax.index.filters import MAX_IN_VALUES, Filter, parse_filter
from infomax.index.locks import IndexLockedError
from infomax.index.record import FORMAT_VERSION, RECALL_DEFINITION, RECORD_FILE
from infomax.index.snapshot import INDEX_FILE
from infomax.index.store import METADATA_FILE, SCHEMA_VERSION

__all__ = [
    "EmbeddingIndex",
    "IndexLoadError",
    "IndexMismatchError",
    "IndexLockedError",
    "choose_factory",
    "estimate_memory",
    "parse_memory",
    "Filter",
    "parse_filter",
    "MAX_IN_VALUES",
    "FORMAT_VERSION",
    "SCHEMA_VERSION",
    "INDEX_FILE",
    "RECORD_FILE",
    "METADATA_FILE",
    "RECALL_DEFINITION",
]
