"""Filtered search (infomax.index.filters, infomax.index.filtered): on real FAISS indexes of each
type the factory builds (Flat, HNSW, IVF; cosine, L2-normalised vectors), the results equal a
brute-force numpy search over the items the filter matches, k come back whenever k match, removed
items never do, every filter form selects what it says, and bad filters are refused by name."""

from __future__ import annotations

import json
import sqlite3

import faiss
import numpy as np
import pytest

from infomax.index import METADATA_FILE, EmbeddingIndex
from infomax.index import filtered as filtered_mod
from infomax.index import matches as matches_mod
from infomax.index.filters import MAX_CONDITIONS, MAX_IN_VALUES, parse_filter

N, DIM, K = 3000, 16, 10
FACTORIES = ["Flat", "HNSW32", "IVF32,Flat"]
CAMERAS = ["x100", "a7", "Z6 II", "ünïcode"]


@pytest.fixture(autouse=True)
def _one_omp_thread():
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(prev)


def _data(n: int = N, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Clustered unit vectors; label = the cluster (correlated with the geometry), the other keys
    drawn independently of it (uncorrelated), a few items without meta or label."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, DIM)).astype(np.float32)
    cluster = rng.integers(0, 20, n)
    x = centers[cluster] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    md: list[dict] = []
    for i in range(n):
        if i % 97 == 0:
            md.append({})  # no source, no label, no meta
            continue
        md.append(
            {
                "source": f"album{i % 13}/{'sub/' if i % 2 else ''}img{i}.jpg",
                "label": int(cluster[i]),
                "camera": CAMERAS[int(rng.integers(0, len(CAMERAS)))],
                "iso": [100, 200, 400.0][i % 3],
                "flash": bool(i % 5 == 0),
                "exif": {"lens": f"L{i % 4}", "stars": i % 6},
                "rare": "yes" if i % 500 == 7 else "no",
            }
        )
    return x.astype(np.float32), md


def _build(factory: str, n: int = N) -> tuple[EmbeddingIndex, np.ndarray, np.ndarray, list[dict]]:
    x, md = _data(n)
    ids = np.arange(n, dtype=np.int64) * 3 + 11  # not positions: the id map must be used
    index = EmbeddingIndex.create(DIM, factory)
    if not index.is_trained:
        index.train(x)
    index.add(x, ids=ids, metadata=md)
    if factory.startswith("IVF"):
        index.search_params = {"nprobe": 2}  # 1-recall@10 ~0.9 unfiltered
    if factory.startswith("HNSW"):
        index.search_params = {"efSearch": 64}  # ~0.99
    return index, x, ids, md


@pytest.fixture(scope="module", params=FACTORIES)
def built(request):
    index, x, ids, md = _build(request.param)
    yield request.param, index, x, ids, md
    index.close()


def _value(md: dict, key: str):
    if key in ("label", "source"):
        return md.get(key)
    v: object = {k: val for k, val in md.items() if k not in ("label", "source")}
    for name in key[len("meta.") :].split("."):
        if not isinstance(v, dict) or name not in v:
            return None
        v = v[name]
    return v


def _same(a, b) -> bool:
    """JSON-typed equality: "3" != 3, True != 1, 3 == 3.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b


def reference(md: list[dict], ids: np.ndarray, spec: dict) -> np.ndarray:
    """The ids a filter must match, by a plain Python reading of the documented syntax."""
    out = []
    for i, item in zip(ids.tolist(), md):
        ok = True
        for key, cond in spec.items():
            v = _value(item, key)
            if isinstance(cond, dict) and "in" in cond:
                ok = any(_same(v, c) for c in cond["in"])
            elif isinstance(cond, dict):
                ok = isinstance(v, str) and v.startswith(cond["prefix"])
            else:
                ok = _same(v, cond)
            if not ok:
                break
        if ok:
            out.append(i)
    return np.array(sorted(out), dtype=np.int64)


def brute_force(x: np.ndarray, ids: np.ndarray, allowed: np.ndarray, q: np.ndarray, k: int):
    """(scores, ids) of the k best inner products among the allowed ids; -inf / -1 padded."""
    keep = np.isin(ids, allowed)
    sx, sid = x[keep], ids[keep]
    s = q @ sx.T
    order = np.argsort(-s, axis=1)[:, :k]
    D = np.full((len(q), k), -np.inf, np.float32)
    I = np.full((len(q), k), -1, np.int64)  # noqa: E741
    D[:, : order.shape[1]] = np.take_along_axis(s, order, 1)
    I[:, : order.shape[1]] = sid[order]
    return D, I


def assert_same_neighbours(D, I, refD, refI, *, min_recall: float = 1.0):
    """Same ids (a boundary tie within 1e-5 may swap) and scores; ``min_recall`` < 1 for the
    approximate paths, whose ids must still all be real and best first."""
    assert D.shape == refD.shape and I.shape == refI.shape
    assert ((I >= 0) == (refI >= 0)).all(), "a row holds another number of results than match"
    assert (np.diff(np.where(np.isfinite(D), D, -9), axis=1) <= 1e-6).all(), "not best first"
    hits = total = 0
    for row in range(len(I)):
        real = refI[row] >= 0
        total += int(real.sum())
        got, want = set(I[row][I[row] >= 0].tolist()), set(refI[row][real].tolist())
        hits += len(got & want)
        if min_recall == 1.0 and got != want:
            kth = refD[row][real][-1]
            assert all(abs(D[row][list(I[row]).index(i)] - kth) < 1e-5 for i in got - want), (row, got ^ want)
    if min_recall == 1.0:
        np.testing.assert_allclose(D[np.isfinite(refD)], refD[np.isfinite(refD)], atol=1e-5)
    assert hits >= min_recall * total, f"recall {hits / max(total, 1):.3f} < {min_recall}"


FILTERS = [
    {"label": 3},  # ~5%, correlated with the geometry
    {"label": {"in": [3, 5, 8]}},
    {"meta.camera": "x100"},  # ~25%, independent of it
    {"meta.camera": {"in": ["a7", "ünïcode"]}, "meta.flash": False},
    {"source": {"prefix": "album4/sub/"}},
    {"meta.exif.lens": "L2", "label": {"in": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}},
    {"meta.rare": "yes"},  # 6 items: fewer than k
    {"meta.iso": 400},  # stored as 400.0
]


@pytest.mark.parametrize("exact_below", ["default", 0], ids=["default-rule", "selector-paths"])
def test_results_equal_brute_force_over_the_matching_items(built, exact_below, monkeypatch):
    """Default rule: Flat through the selector, HNSW and IVF exact at this size (<= 50,000 match):
    equal to brute force. With the exact limit at 0, HNSW walks its graph with the selector and
    IVF probes nprobe * n / m lists: every row still holds min(k, m) matching ids, at high
    recall (per filter, over 20 queries)."""
    factory, index, x, ids, md = built
    if exact_below != "default":
        monkeypatch.setattr(filtered_mod, "EXACT_MATCHES", exact_below)
    q = x[np.random.default_rng(1).choice(len(x), 20, replace=False)]
    q = q + 0.3 * np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # the graph walk loses recall on filters anti-correlated with the query (a label = a cluster
    # other than the query's): 0.86 measured for {"label": {"in": [3, 5, 8]}} at ef 64
    min_recall = {"Flat": 1.0, "HNSW32": 0.8, "IVF32,Flat": 0.95}[factory] if exact_below != "default" else 1.0
    for spec in FILTERS:
        allowed = reference(md, ids, spec)
        assert len(allowed), spec
        np.testing.assert_array_equal(index.matching_ids(spec), allowed)
        D, I = index.search(q, K, filter=spec)
        assert I.dtype == np.int64 and D.dtype == np.float32
        assert np.isin(I[I >= 0], allowed).all(), spec
        refD, refI = brute_force(x, ids, allowed, q, K)
        assert_same_neighbours(D, I, refD, refI, min_recall=min_recall)


@pytest.mark.parametrize("exact_below", ["default", 0], ids=["default-rule", "selector-paths"])
def test_k_results_whenever_k_match_fewer_only_when_fewer_match(built, exact_below, monkeypatch):
    """Filters matching 0, 1, k-1, k, k+1 and 40 items, the matches far from the queries (a
    search that filters after the fact finds none of them among its k)."""
    factory, index, x, ids, md = built
    if exact_below != "default":
        monkeypatch.setattr(filtered_mod, "EXACT_MATCHES", exact_below)
    q = x[:5]
    far = [
        i for i, m in sorted(zip(ids.tolist(), md), key=lambda t: float(x[(t[0] - 11) // 3] @ q.mean(0))) if m.get("source")
    ]  # the items least like the queries first (positions: id = 3 * pos + 11)
    for m in (0, 1, K - 1, K, K + 1, 40):
        chosen = far[:m]
        spec = {"source": {"in": [md[(i - 11) // 3]["source"] for i in chosen]}}
        D, I = index.search(q, K, filter=spec)
        assert index.matching_ids(spec).tolist() == sorted(chosen)
        want = min(K, m)
        assert ((I >= 0).sum(axis=1) == want).all(), (factory, m, I)
        assert (I[:, want:] == -1).all() and np.isneginf(D[:, want:]).all()
        assert np.isin(I[I >= 0], chosen).all()
        for row in I:  # each item at most once in a row
            assert len(set(row[row >= 0].tolist())) == want


@pytest.mark.parametrize("factory", FACTORIES)
def test_removed_items_never_come_back_and_new_ones_do(factory):
    index, x, ids, md = _build(factory, n=1200)
    try:
        spec = {"meta.camera": "Z6 II"}
        before = index.matching_ids(spec)
        q = x[np.isin(ids, before)][:4]
        _, I0 = index.search(q, K, filter=spec)  # resolved and cached
        gone = np.unique(I0[:, :3])
        assert index.remove(gone) == len(gone)
        D, I = index.search(q, K, filter=spec)
        assert not np.isin(I, gone).any(), "a removed item came back"
        assert ((I >= 0).sum(axis=1) == K).all()
        assert_same_neighbours(D, I, *brute_force(x, ids, np.setdiff1d(before, gone), q, K))
        # an item added after the filter was resolved is found (the cache is per index state)
        new_id = int(ids.max()) + 1000
        index.add(q[:1], ids=[new_id], metadata=[{"camera": "Z6 II"}])
        D, I = index.search(q[:1], K, filter=spec)
        assert I[0, 0] == new_id and D[0, 0] == pytest.approx(1.0, abs=1e-5)
        # and the same after an add and a remove that leave the count unchanged
        other = int(ids.max()) + 2000
        index.remove([new_id])
        index.add(q[1:2], ids=[other], metadata=[{"camera": "Z6 II"}])
        _, I = index.search(q[1:2], K, filter=spec)
        assert I[0, 0] == other and new_id not in I
    finally:
        index.close()


def test_every_filter_form_selects_what_it_says():
    index = EmbeddingIndex.create(4)
    rng = np.random.default_rng(0)
    md = [
        {"source": "a/b/1.png", "label": 1, "camera": "x100", "iso": 100, "ok": True, "deep": {"er": {"key": "v"}}},
        {"source": "a/b/2.png", "label": 2, "camera": "X100", "iso": 100.0, "ok": False, "deep": {"er": {"key": 7}}},
        {"source": "a/bc/3.png", "label": -5, "camera": "x1000", "iso": "100", "ok": 1},
        {"source": "a%b_/4.png", "label": 2**62, "camera": None, "iso": [100], "n": 2.5},
        {"source": "z/\u00e9t\u00e9/5.png", "camera": "", "tags": {"x": 1}, "weird key": "w", "k\u00e9y": "\u00fc"},
        {"label": 1},
        {},
    ]
    ids = index.add(rng.standard_normal((len(md), 4)), ids=list(range(100, 107)), metadata=md)
    cases = [
        ({"label": 1}, [100, 105]),
        ({"label": {"in": [2, -5, 99]}}, [101, 102]),
        ({"label": 2**62}, [103]),
        ({"source": "a/b/1.png"}, [100]),
        ({"source": {"in": ["a/b/2.png", "nope"]}}, [101]),
        ({"source": {"prefix": "a/b/"}}, [100, 101]),  # not a/bc/
        ({"source": {"prefix": "a/b"}}, [100, 101, 102]),
        ({"source": {"prefix": "a%b_"}}, [103]),  # % and _ are not wildcards
        ({"source": {"prefix": "a_"}}, []),
        ({"source": {"prefix": "z/\u00e9t"}}, [104]),
        ({"source": {"prefix": ""}}, [100, 101, 102, 103, 104]),  # any item with a source
        ({"meta.camera": "x100"}, [100]),  # case-sensitive, whole value
        ({"meta.camera": {"prefix": "x100"}}, [100, 102]),
        ({"meta.camera": ""}, [104]),
        ({"meta.iso": 100}, [100, 101]),  # 100 == 100.0; not "100", not [100]
        ({"meta.iso": "100"}, [102]),
        ({"meta.iso": {"in": [100, "100"]}}, [100, 101, 102]),
        ({"meta.ok": True}, [100]),  # not 1
        ({"meta.ok": 1}, [102]),  # not true
        ({"meta.ok": {"in": [False, True]}}, [100, 101]),
        ({"meta.n": 2.5}, [103]),
        ({"meta.deep.er.key": "v"}, [100]),
        ({"meta.deep.er.key": 7}, [101]),
        ({"meta.tags": 1}, []),  # an object never equals a value
        ({"meta.tags.x": 1}, [104]),
        ({"meta.weird key": "w", "meta.k\u00e9y": "\u00fc"}, [104]),
        ({"meta.missing": "x"}, []),
        ({"label": 1, "meta.camera": "x100"}, [100]),  # AND
        ({"label": {"in": []}}, []),
        ({}, ids.tolist()),
    ]
    try:
        for spec, want in cases:
            assert index.matching_ids(spec).tolist() == want, spec
            assert index.matching_ids(json.dumps(spec)).tolist() == want, spec  # JSON text too
            D, I = index.search(np.ones(4), 10, filter=spec)
            assert sorted(I[0][I[0] >= 0].tolist()) == want, spec
    finally:
        index.close()


BAD = [
    ([3], "must be a JSON object"),
    ("{not json", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ({"colour": "red"}, "'colour' is not filterable"),
    ({"meta": {"camera": "x"}}, "meta.<key>"),
    ({"id": 3}, "not filterable"),
    ({"meta.": 1}, "each name after 'meta.'"),
    ({"meta.a..b": 1}, "each name after 'meta.'"),
    ({'meta.a"b': 1}, "other than"),
    ({"meta.a\\b": 1}, "other than"),
    ({"meta.a\nb": 1}, "printable"),
    ({"meta." + ".".join(["a"] * 9): 1}, "at most 8 nested"),
    ({"label": "cat"}, 'filter "label": value must be an integer label, got "cat"'),
    ({"label": True}, "integer label"),
    ({"label": 2.0}, "integer label"),
    ({"label": 2**63}, "beyond int64"),
    ({"label": {"in": [1, "2"]}}, 'in[1] must be an integer label, got "2"'),
    ({"label": {"prefix": "1"}}, '"prefix" applies to strings'),
    ({"label": {"gt": 3}}, "unknown operator 'gt'"),
    ({"label": {"in": [1], "prefix": "x"}}, "exactly one operator"),
    ({"label": {}}, "exactly one operator"),
    ({"label": {"in": 3}}, '"in" takes a list'),
    ({"label": None}, "integer label, got null"),
    ({"source": 3}, "must be a string, got 3"),
    ({"source": {"prefix": 3}}, '"prefix" takes a string'),
    ({"source": "x" * 5000}, "at most 4096"),
    ({"meta.camera": None}, "string, number or boolean, got null"),
    ({"meta.camera": [1, 2]}, "string, number or boolean"),
    ({"meta.camera": {"in": [{"a": 1}]}}, "in[0] must be a string, number or boolean"),
    ({"meta.camera": float("nan")}, "finite"),
    ({"meta.camera": float("inf")}, "finite"),
    ({"meta.camera": -(2**63) - 1}, "beyond int64"),
    ({"meta.camera": "\ud800"}, "lone surrogate"),
    ({"label": {"in": list(range(MAX_IN_VALUES + 1))}}, f"holds {MAX_IN_VALUES + 1} values; at most {MAX_IN_VALUES}"),
    ({f"meta.k{i}": 1 for i in range(MAX_CONDITIONS + 1)}, f"at most {MAX_CONDITIONS}"),
]


@pytest.mark.parametrize("spec,fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_filters_are_refused_naming_the_problem(spec, fragment):
    with pytest.raises(ValueError) as e:
        parse_filter(spec)
    assert fragment in str(e.value)
    index = EmbeddingIndex.create(4)
    try:
        index.add(np.ones((2, 4)), metadata=[{"label": 1}, {"label": 2}])
        with pytest.raises(ValueError, match="filter"):
            index.search(np.ones(4), 3, filter=spec)
        with pytest.raises(ValueError, match="filter"):
            index.search_by_id(0, 3, filter=spec)
    finally:
        index.close()


def test_in_lists_at_the_limit_and_repeats_are_accepted():
    flt = parse_filter({"label": {"in": list(range(MAX_IN_VALUES))}, "meta.x": {"in": [1, True, 1.0, "1", True]}})
    assert len(flt.conditions[0].values) == MAX_IN_VALUES
    assert flt.to_dict()["meta.x"] == {"in": [1, True, "1"]}  # True kept apart from 1; 1.0 == 1
    assert parse_filter({"meta.b": 1, "label": 2}).key == parse_filter({"label": 2, "meta.b": 1}).key


def test_search_by_id_with_a_filter_leaves_the_item_out():
    index, x, ids, md = _build("Flat", n=600)
    try:
        spec = {"label": int(md[1]["label"])}
        allowed = index.matching_ids(spec)
        item = int(allowed[0])
        D, I = index.search_by_id(item, K, filter=spec)
        assert item not in I and np.isin(I[I >= 0], allowed).all()
        refD, refI = brute_force(x, ids, allowed[allowed != item], x[ids == item], K)
        assert_same_neighbours(D, I, refD, refI)
        # an item that does not match the filter searches among those that do
        outside = int(np.setdiff1d(ids, allowed)[0])
        _, I = index.search_by_id(outside, K, filter=spec)
        assert np.isin(I[I >= 0], allowed).all() and (I >= 0).sum() == min(K, len(allowed))
    finally:
        index.close()


def test_types_whose_search_refuses_a_selector_search_exactly():
    # IndexPQ (`--factory PQ4x4`) takes no search parameters: the exact path over its own
    # (reconstructed) vectors still gives k matching ids.
    index, x, ids, md = _build("PQ4x4", n=2000)
    try:
        spec = {"meta.camera": "a7", "meta.flash": True}
        allowed = index.matching_ids(spec)
        assert len(allowed) > K
        D, I = index.search(x[:6], K, filter=spec)
        assert ((I >= 0).sum(axis=1) == K).all() and np.isin(I, allowed).all()
        refD, refI = brute_force(x, ids, allowed, x[:6], K)
        assert_same_neighbours(D, I, refD, refI, min_recall=0.5)  # PQ codes: approximate scores
    finally:
        index.close()


def test_saved_folders_filter_and_older_stores_get_their_indexes(tmp_path):
    index, x, ids, md = _build("HNSW32", n=800)
    spec = {"source": {"prefix": "album3/"}, "label": {"in": [0, 1, 2, 3, 4, 5, 6, 7, 8]}}
    want = index.matching_ids(spec)
    index.remove(want[:2])
    index.save(tmp_path / "idx")
    index.close()
    db = tmp_path / "idx" / METADATA_FILE

    def indexes() -> set[str]:
        with sqlite3.connect(db) as c:
            return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index' AND name LIKE 'items_%'")}

    assert indexes() == {"items_label", "items_source"}
    with sqlite3.connect(db) as c:  # a store written before the filter indexes
        c.execute("DROP INDEX items_label")
        c.execute("DROP INDEX items_source")
    ro = EmbeddingIndex.load(tmp_path / "idx", read_only=True)  # a table scan, same answer
    try:
        assert ro.matching_ids(spec).tolist() == want[2:].tolist()
        _, I = ro.search(x[:3], K, filter=spec)
        assert not np.isin(I, want[:2]).any() and np.isin(I[I >= 0], want[2:]).all()
    finally:
        ro.close()
    assert indexes() == set()
    rw = EmbeddingIndex.load(tmp_path / "idx")
    try:
        assert indexes() == {"items_label", "items_source"}
        assert rw.matching_ids(spec).tolist() == want[2:].tolist()
        assert rw.labels() == sorted({m["label"] for m in md if "label" in m})
    finally:
        rw.close()


@pytest.mark.parametrize("factory", FACTORIES)
def test_sparse_ids_as_folders_have_them(factory):
    """Ids of a folder's files are hashes up to 2^53: a hash-set selector (a bitmap would not fit),
    same answers; dense ids (a data set's positions) get a bitmap."""
    x, md = _data(1500)
    ids = np.sort(np.random.default_rng(5).choice(2**53, len(x), replace=False)).astype(np.int64)
    index = EmbeddingIndex.create(DIM, factory)
    try:
        if not index.is_trained:
            index.train(x)
        index.add(x, ids=ids, metadata=md)
        for spec in FILTERS[:6]:
            allowed = reference(md, ids, spec)
            D, I = index.search(x[:8], K, filter=spec)
            assert_same_neighbours(D, I, *brute_force(x, ids, allowed, x[:8], K))
    finally:
        index.close()
    assert isinstance(matches_mod.Match(ids[:100], 0).selector(), faiss.IDSelectorBatch)
    assert isinstance(matches_mod.Match(np.arange(0, 3000, 3, dtype=np.int64), 0).selector(), faiss.IDSelectorBitmap)


def test_hnsw_tombstones_never_count_as_matches_whatever_the_ids():
    """Removed HNSW entries stay in the graph with id -2 until compact(): with ids from 0 (a data
    set's positions), the exact path must not read them as matches of id 0."""
    x, _ = _data(800)
    index = EmbeddingIndex.create(DIM, "HNSW32")
    try:
        index.add(x, ids=np.arange(800), metadata=[{"label": int(i % 4 == 0)} for i in range(800)])
        gone = np.arange(4, 400, 4)  # label 1, removed; id 0 (label 1) stays
        index.remove(gone)
        assert index.tombstones == len(gone)
        allowed = index.matching_ids({"label": 1})
        assert allowed[0] == 0 and not np.isin(gone, allowed).any()
        D, I = index.search(x[gone[:10]], K, filter={"label": 1})
        assert (I >= 0).all() and np.isin(I, allowed).all()
        assert_same_neighbours(D, I, *brute_force(x, np.arange(800), allowed, x[gone[:10]], K))
    finally:
        index.close()


def test_hnsw_exact_search_reads_back_a_few_vectors_and_scans_its_storage_for_many():
    """Up to 4,096 matches the vectors are copied out and scored; above, the graph's flat storage
    is searched in place with a bitmap of their positions: both equal brute force, tombstones
    left out."""
    x, _ = _data(9000)
    ids = np.arange(9000, dtype=np.int64) * 2
    index = EmbeddingIndex.create(DIM, "HNSW32")
    try:
        index.add(x, ids=ids, metadata=[{"label": i % 9} for i in range(9000)])
        index.remove(ids[:300:3])  # tombstones among the matches of label 0 (ids 0, 6, ...)
        live = np.ones(9000, bool)
        live[:300:3] = False
        q = x[1000:1012]
        for labels in ([0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]):  # ~4,000 and ~7,000 matches
            spec = {"label": {"in": labels}}
            allowed = ids[live & np.isin(np.arange(9000) % 9, labels)]
            assert index.matching_ids(spec).tolist() == allowed.tolist()
            D, I = index.search(q, K, filter=spec)
            assert_same_neighbours(D, I, *brute_force(x, ids, allowed, q, K))
    finally:
        index.close()
