"""Near-duplicates in an index: items whose codes have cosine similarity >= a threshold, grouped.

Two items are near-duplicates when the cosine similarity of their stored (L2-normalised) vectors
is at least ``threshold``; a group is a connected component of that relation (union-find over the
pairs), so a chain a~b~c is one group even when a and c are further apart. Each group has a
representative: the member most similar on average to the group (its medoid, which for
normalised vectors is the member closest to the sum of the members' vectors), and each member
its similarity to it.

Pure functions over an :class:`infomax.index.EmbeddingIndex`, through its public reads only
(``ids``, ``vector``, ``search``, ``get_many``), so they work on read-only instances too. Pairs
come from the index's own search: exact for ``Flat`` indexes, as good as the tuned recall for
approximate ones (a pair HNSW/IVF does not return is not found). A row whose k-th neighbour is
still above the threshold is searched again with a larger k, so no pair is lost to k.

``DEFAULT_THRESHOLD`` was chosen by measurement for the CIFAR-10 encoder's codes mu:
``bench/duplicates.py`` on planted copies of CIFAR-10 test images and on the 10,000 test images as
they are (docs/BENCHMARKS.md, "Near-duplicates"); another encoder's vectors need their own (whitened
ones score far lower). An artifact records the threshold measured for its vectors
(``duplicates_threshold`` in encoder.json, ``infomax export --duplicates-threshold``), which
``infomax embed`` and ``index build`` carry into the index's record: :func:`default_threshold` is
that, else ``DEFAULT_THRESHOLD``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infomax.errors import SettingError

DEFAULT_THRESHOLD = 0.93
_K = 16  # neighbours asked per item at first; doubled for rows still above the threshold
_BATCH = 1024  # queries per search call


@dataclass
class Member:
    id: int
    source: str | None
    label: int | None
    similarity: float  # to the group's representative (1.0 for the representative itself)
    meta: dict = field(default_factory=dict)  # the item's other metadata keys


@dataclass
class Group:
    representative: int
    members: list[Member]  # representative first, then by similarity
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (a < b, similarity >= threshold)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def min_similarity(self) -> float:
        return min(m.similarity for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "representative": self.representative,
            "size": self.size,
            "min_similarity": round(self.min_similarity, 6),
            "members": [
                {"id": m.id, "source": m.source, "label": m.label, "similarity": round(m.similarity, 6)} for m in self.members
            ],
            "pairs": [{"a": a, "b": b, "similarity": round(s, 6)} for a, b, s in self.pairs],
        }


def check_threshold(threshold: Any) -> float:
    """A cosine threshold in (-1, 1]; a SettingError naming ``threshold`` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise SettingError(f"threshold must be a number, got {threshold!r}", setting="threshold")
    t = float(threshold)
    if not math.isfinite(t) or not -1.0 < t <= 1.0:
        raise SettingError(f"threshold must be a cosine similarity in (-1, 1], got {threshold!r}", setting="threshold")
    return t


def default_threshold(index) -> float:
    """The threshold measured for the vectors of ``index``: the ``duplicates_threshold`` its build
    record carries from the artifact that made them, else ``DEFAULT_THRESHOLD``."""
    art = index.info.get("artifact") or {}
    recorded = art.get("duplicates_threshold") if isinstance(art, dict) else None
    if recorded is None:
        return DEFAULT_THRESHOLD
    try:
        return check_threshold(recorded)
    except SettingError:  # a hand-edited record: the library's default rather than a refusal to serve
        return DEFAULT_THRESHOLD


def stored_vectors(index, ids: np.ndarray) -> np.ndarray:
    """(n, dim) float32: the stored vectors of ``ids`` (all present)."""
    out = np.empty((len(ids), index.dim), dtype=np.float32)
    for row, i in enumerate(ids.tolist()):
        v = index.vector(i)
        if v is None:
            raise KeyError(f"no item with id {i}")
        out[row] = v
    return out


def neighbours_above(
    index, queries: np.ndarray, threshold: float, *, k: int = _K, batch: int = _BATCH, max_k: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query vector: (ids, scores) of every indexed item with score >= threshold (the
    query's own item included when indexed). A row whose last score is still >= threshold is
    searched again with twice the k, up to the size of the index (or ``max_k``: then a row may
    hold only the ``max_k`` best of more)."""
    n_items = len(index) if max_k is None else min(len(index), max(1, max_k))
    out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(queries)  # type: ignore[list-item]
    if n_items == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
    for start in range(0, len(queries), batch):
        rows = np.arange(start, min(start + batch, len(queries)))
        kk = min(max(1, k), n_items)
        while len(rows):
            D, I = index.search(queries[rows], kk)
            full = (D[:, -1] >= threshold) & (I[:, -1] >= 0) & (kk < n_items)
            for r, d, i, again in zip(rows, D, I, full):
                if not again:
                    keep = (i >= 0) & (d >= threshold)
                    out[r] = (i[keep].astype(np.int64), d[keep].astype(np.float32))
            rows = rows[full]
            kk = min(kk * 2, n_items)
    return out


def duplicate_pairs(
    index, threshold: float = DEFAULT_THRESHOLD, *, k: int = _K, batch: int = _BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of distinct items with cosine similarity >= threshold: ``(pairs, scores)``,
    (m, 2) int64 with a < b, sorted, and (m,) float32 (the larger score where the two directions
    differ)."""
    threshold = check_threshold(threshold)
    ids = index.ids()
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), batch):
        part = ids[start : start + batch]
        vecs = stored_vectors(index, part)
        for a, (nb, sc) in zip(part.tolist(), neighbours_above(index, vecs, threshold, k=k, batch=batch)):
            for b, s in zip(nb.tolist(), sc.tolist()):
                if b != a:
                    key = (a, b) if a < b else (b, a)
                    if s > found.get(key, -math.inf):
                        found[key] = s
    keys = sorted(found)
    pairs = np.array(keys, dtype=np.int64).reshape(-1, 2)
    scores = np.array([found[p] for p in keys], dtype=np.float32)
    return pairs, scores


def connected_groups(pairs: np.ndarray) -> list[list[int]]:
    """Union-find over pairs of ids: the components of 2+ ids, each sorted, biggest first."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for x in parent:
        comps.setdefault(find(x), []).append(x)
    groups = [sorted(c) for c in comps.values() if len(c) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def describe_group(
    index, member_ids: list[int], pairs: list[tuple[int, int, float]] | None = None, *, similar_to: int | None = None
) -> Group:
    """A :class:`Group` of these ids: the representative (medoid; ``similar_to`` instead when
    given), each member's similarity to it, sources and labels from the metadata store."""
    ids = np.asarray(sorted(member_ids), dtype=np.int64)
    vecs = stored_vectors(index, ids)
    if similar_to is not None:
        rep_row = int(np.flatnonzero(ids == similar_to)[0])
    else:
        total_sim = vecs @ vecs.sum(axis=0)  # sum of similarities to every member: the medoid maximises it
        best = total_sim >= total_sim.max() - 1e-6 * len(ids)  # ties (to rounding): the smallest id
        rep_row = int(np.flatnonzero(best)[0])
    sims = vecs @ vecs[rep_row]
    sims[rep_row] = 1.0
    order = sorted(range(len(ids)), key=lambda r: (r != rep_row, -float(sims[r]), int(ids[r])))
    meta = index.get_many(ids[order])
    members = [
        Member(
            id=int(ids[r]),
            source=(m or {}).get("source"),
            label=(m or {}).get("label"),
            similarity=float(min(1.0, sims[r])),
            meta=(m or {}).get("meta") or {},
        )
        for r, m in zip(order, meta)
    ]
    return Group(representative=int(ids[rep_row]), members=members, pairs=sorted(pairs or []))


def find_duplicates(index, threshold: float = DEFAULT_THRESHOLD, *, k: int = _K, batch: int = _BATCH) -> list[Group]:
    """Every group of near-duplicates of the index (2+ members), biggest first."""
    pairs, scores = duplicate_pairs(index, threshold, k=k, batch=batch)
    by_root: dict[int, list[tuple[int, int, float]]] = {}
    groups = connected_groups(pairs)
    where = {i: g[0] for g in groups for i in g}
    for (a, b), s in zip(pairs.tolist(), scores.tolist()):
        by_root.setdefault(where[a], []).append((a, b, float(s)))
    return [describe_group(index, g, by_root.get(g[0])) for g in groups]


def duplicates_of(
    index, item_id: int, threshold: float = DEFAULT_THRESHOLD, *, max_members: int = 100, k: int = _K
) -> tuple[Group, bool]:
    """The group of ``item_id`` (the same component :func:`find_duplicates` puts it in), grown
    from the item by searching each member's neighbours; ``(group, truncated)``: at most
    ``max_members`` members, ``truncated`` when more were reachable. The group of an item without
    duplicates is the item alone. Similarities are to ``item_id``. KeyError for an unknown id."""
    threshold = check_threshold(threshold)
    if index.vector(item_id) is None:
        raise KeyError(f"no item with id {item_id}")
    item_id = int(item_id)
    seen = {item_id}
    frontier = [item_id]
    pairs: dict[tuple[int, int], float] = {}
    truncated = False
    while frontier and not truncated:
        vecs = stored_vectors(index, np.asarray(frontier, dtype=np.int64))
        nxt: list[int] = []
        # max_k: a row with more than max_members neighbours above the threshold truncates anyway
        for a, (nb, sc) in zip(frontier, neighbours_above(index, vecs, threshold, k=k, max_k=max_members + 1)):
            for b, s in zip(nb.tolist(), sc.tolist()):
                if b == a:
                    continue
                if b not in seen:
                    if len(seen) >= max_members:
                        truncated = True
                        continue
                    seen.add(b)
                    nxt.append(b)
                key = (a, b) if a < b else (b, a)
                pairs[key] = max(s, pairs.get(key, -math.inf))
        frontier = nxt
    return describe_group(index, sorted(seen), [(a, b, s) for (a, b), s in pairs.items()], similar_to=item_id), truncated


CSV_FIELDS = ("group", "size", "representative", "id", "source", "label", "similarity")


def groups_csv(groups: list[Group]) -> str:
    """One row per member: group number (from 1), group size, representative, the member's id,
    source, label and similarity to the representative."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for n, g in enumerate(groups, 1):
        for m in g.members:
            w.writerow(
                [
                    n,
                    g.size,
                    g.representative,
                    m.id,
                    "" if m.source is None else m.source,
                    "" if m.label is None else m.label,
                    f"{m.similarity:.6f}",
                ]
            )
    return buf.getvalue()
