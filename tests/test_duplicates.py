"""Near-duplicates (infomax.duplicates, `infomax duplicates`): pairs, groups and the group of one
item, checked against a brute-force reference (all pairwise cosine similarities, components by
search over the dense matrix) on small synthetic vectors with planted clusters and chains."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from infomax.cli import main as cli
from infomax.duplicates import DEFAULT_THRESHOLD, connected_groups, duplicate_pairs, duplicates_of, find_duplicates, groups_csv
from infomax.index import EmbeddingIndex

DIM = 24


def planted(seed: int = 0, n_random: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors plus planted near-copies: clusters of 2-40 noisy copies of a base, and a
    chain (each step close to the previous one, its ends further apart than the threshold)."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n_random, DIM))]
    for size in (2, 2, 3, 5, 40):
        base = rng.standard_normal(DIM)
        base /= np.linalg.norm(base)
        parts.append(base + 0.05 * rng.standard_normal((size, DIM)) / np.sqrt(DIM))
    a, b = rng.standard_normal((2, DIM))
    b -= (b @ a) / (a @ a) * a
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    parts.append(np.stack([np.cos(t) * a + np.sin(t) * b for t in np.linspace(0, 0.9, 8)]))  # steps of ~0.13 rad
    v = np.concatenate(parts).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[: len(v)].astype(np.int64) * 7 + 3  # sparse, unordered ids
    return v, ids


def brute_pairs(v: np.ndarray, ids: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = v @ v.T
    a, b = np.nonzero(np.triu(s >= t, 1))
    return {(min(ids[i], ids[j]), max(ids[i], ids[j])) for i, j in zip(a, b)}


def brute_groups(v: np.ndarray, ids: np.ndarray, t: float) -> list[list[int]]:
    adj = (v @ v.T) >= t
    seen, groups = set(), []
    for start in range(len(v)):
        if start in seen:
            continue
        comp, stack = {start}, [start]
        while stack:
            for j in np.flatnonzero(adj[stack.pop()]).tolist():
                if j not in comp:
                    comp.add(j)
                    stack.append(j)
        seen |= comp
        if len(comp) > 1:
            groups.append(sorted(int(ids[j]) for j in comp))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def away_from(v: np.ndarray, t: float) -> bool:
    """No pair within 2e-6 of the threshold (FAISS and numpy round differently)."""
    return not np.any(np.abs(v @ v.T - t) < 2e-6)


@pytest.fixture(scope="module")
def data():
    v, ids = planted()
    index = EmbeddingIndex.create(DIM)
    index.add(v, ids=ids, metadata=[{"source": f"img{i}.png", "label": int(i % 3)} for i in ids])
    yield v, ids, index
    index.close()


@pytest.mark.parametrize("t", [0.9, 0.97, 0.992, 0.9972])
def test_pairs_and_groups_equal_brute_force(data, t):
    v, ids, index = data
    assert away_from(v, t)
    pairs, scores = duplicate_pairs(index, t, k=4)  # k far below the 40-copy cluster: rows widened
    assert {tuple(p) for p in pairs.tolist()} == brute_pairs(v, ids, t)
    pos = {int(i): r for r, i in enumerate(ids)}
    exact = [float(v[pos[a]] @ v[pos[b]]) for a, b in pairs.tolist()]
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    groups = find_duplicates(index, t, k=4)
    assert [sorted(m.id for m in g.members) for g in groups] == brute_groups(v, ids, t)
    for g in groups:  # the representative: the member with the largest sum of similarities (ties: smallest id)
        members = sorted(m.id for m in g.members)
        total = (v[[pos[i] for i in members]] @ v[[pos[i] for i in members]].T).sum(1)
        assert g.representative == members[int(np.argmax(total))] == g.members[0].id
    assert connected_groups(pairs) == brute_groups(v, ids, t)


def test_a_chain_is_one_group_and_the_representative_is_the_medoid(data):
    v, ids, index = data
    pos = {int(i): r for r, i in enumerate(ids)}
    chain = sorted(int(i) for i in ids[-8:])
    groups = find_duplicates(index, 0.99)
    (g,) = [g for g in groups if chain[0] in {m.id for m in g.members}]
    assert sorted(m.id for m in g.members) == chain
    ends = v[pos[int(ids[-8])]] @ v[pos[int(ids[-1])]]
    assert ends < 0.99  # the ends are no duplicates of each other: only the chain joins them
    vec = v[[pos[i] for i in chain]]
    medoid = chain[int(np.argmax((vec @ vec.T).sum(1)))]
    assert g.representative == medoid == g.members[0].id
    assert g.members[0].similarity == 1.0
    sims = [m.similarity for m in g.members[1:]]
    assert sims == sorted(sims, reverse=True)
    np.testing.assert_allclose(sims, [v[pos[m.id]] @ v[pos[medoid]] for m in g.members[1:]], atol=1e-6)
    assert all(m.source == f"img{m.id}.png" and m.label == m.id % 3 for m in g.members)
    assert {(a, b) for a, b, _ in g.pairs} == brute_pairs(vec, np.array(chain), 0.99)


def test_group_of_one_item_is_its_component(data):
    v, ids, index = data
    t = 0.97
    groups = find_duplicates(index, t)
    for g in groups:
        for m in g.members[:3]:
            own, truncated = duplicates_of(index, m.id, t, k=2)
            assert not truncated
            assert sorted(x.id for x in own.members) == sorted(x.id for x in g.members)
            assert own.representative == m.id and own.members[0].id == m.id
    loner = next(int(i) for i in ids if all(int(i) not in {m.id for m in g.members} for g in groups))
    own, truncated = duplicates_of(index, loner, t)
    assert [m.id for m in own.members] == [loner] and not truncated and own.pairs == []
    big = groups[0]
    assert big.size == 40
    own, truncated = duplicates_of(index, big.members[0].id, t, max_members=10)
    assert truncated and own.size == 10
    assert {a for p in own.pairs for a in p[:2]} <= {m.id for m in own.members}
    with pytest.raises(KeyError):
        duplicates_of(index, 1, t)  # ids are 3 mod 7
    with pytest.raises(ValueError, match="threshold"):
        duplicates_of(index, loner, 1.5)
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(index, float("nan"))


def test_empty_and_tiny_indexes():
    index = EmbeddingIndex.create(4)
    assert find_duplicates(index) == []
    index.add(np.array([[1, 0, 0, 0], [1, 0.01, 0, 0]], np.float32), ids=[5, 9])
    (g,) = find_duplicates(index, 0.99)
    assert [m.id for m in g.members] == [5, 9] and g.representative == 5
    assert find_duplicates(index, 1.0) == []
    index.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    v, ids = planted(seed=1, n_random=50)
    path = tmp_path_factory.mktemp("dups") / "index"
    index = EmbeddingIndex.create(DIM, path=path)
    index.add(v, ids=ids, metadata=[{"source": f'a,b "{i}".png'} for i in ids])  # CSV quoting
    index.close()
    return path, v, ids


def test_command_writes_csv_and_json(folder, capsys, tmp_path):
    path, v, ids = folder
    assert cli(["duplicates", "--index", str(path), "--threshold", "0.97"]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    want = brute_groups(v, ids, 0.97)
    got: dict[str, list[int]] = {}
    for r in rows:
        got.setdefault(r["group"], []).append(int(r["id"]))
        assert r["source"] == f'a,b "{r["id"]}".png' and r["label"] == ""
        assert int(r["size"]) == len([x for x in rows if x["group"] == r["group"]])
    assert [sorted(g) for g in got.values()] == want
    assert f"{len(want)} groups, {sum(map(len, want))} of {len(ids)} items" in err
    out_file = tmp_path / "d.json"
    assert cli(["duplicates", "--index", str(path), "--format", "json", "--out", str(out_file)]) == 0
    doc = json.loads(out_file.read_text())
    assert doc["threshold"] == DEFAULT_THRESHOLD and doc["items"] == len(ids)
    assert [sorted(m["id"] for m in g["members"]) for g in doc["groups"]] == brute_groups(v, ids, DEFAULT_THRESHOLD)
    g = doc["groups"][0]
    assert g["members"][0]["id"] == g["representative"] and g["size"] == len(g["members"])
    assert all(p["similarity"] >= DEFAULT_THRESHOLD for p in g["pairs"])


def test_command_refuses_bad_settings_in_one_line(folder, capsys, tmp_path):
    path, _, _ = folder
    for args, flag in (
        (["--index", str(path), "--threshold", "2"], "--threshold"),
        (["--index", str(path), "--threshold", "nan"], "--threshold"),
        (["--index", str(tmp_path / "nowhere")], "--index"),
    ):
        assert cli(["duplicates", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"infomax duplicates: error: {flag}") and "\n" not in err, err


def test_csv_of_no_groups_is_the_header():
    assert groups_csv([]) == "group,size,representative,id,source,label,similarity\n"


class CountingIndex:
    """The index, recording the k of every search."""

    def __init__(self, index):
        self._index, self.ks = index, []

    def __len__(self):
        return len(self._index)

    def search(self, q, k):
        self.ks.append(k)
        return self._index.search(q, k)

    def __getattr__(self, name):
        return getattr(self._index, name)


def test_the_group_of_one_item_searches_no_further_than_its_limit(data):
    """A collapsed index (every pair above the threshold) must not make one request search the
    whole index: the searches of duplicates_of stop at max_members + 1 neighbours."""
    _, _, index = data
    counting = CountingIndex(index)
    big = find_duplicates(index, 0.97)[0]
    group, truncated = duplicates_of(counting, big.members[0].id, 0.97, max_members=5)
    assert truncated and group.size == 5
    assert max(counting.ks) <= 6, counting.ks
