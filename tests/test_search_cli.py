"""``infomax search``: the library's (filtered) search of an image or an item, as a table or JSON,
and one-line errors naming the flag for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_service import build_index

from infomax.cli import main
from infomax.index import EmbeddingIndex


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_artifact, data_dir) -> dict:
    return build_index(tmp_path_factory.mktemp("search-cli") / "index", tiny_artifact, data_dir, n=120)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["search", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_by_id_and_by_image_with_a_filter_is_the_librarys(built, capsys, tmp_path, tiny_artifact):
    folder = str(built["folder"])
    index = EmbeddingIndex.load(folder, read_only=True)
    try:
        for spec in ({"label": 3}, {"source": {"prefix": "cifar10:test:1"}}, {"label": {"in": [1, 2]}}, None):
            argv = ["--index", folder, "--id", "7", "--k", "6", "--json"] + (["--filter", json.dumps(spec)] if spec else [])
            code, out, err = run(capsys, *argv)
            assert code == 0, err
            body = json.loads(out)
            D, I = index.search_by_id(7, 6, filter=spec)
            assert [n["id"] for n in body["neighbors"]] == I[0][I[0] >= 0].tolist()
            np.testing.assert_allclose([n["score"] for n in body["neighbors"]], D[0][I[0] >= 0], atol=1e-6)
            assert body["query"] == {"id": 7} and body["filter"] == spec and body["k"] == 6
            if spec:
                assert body["matching"] == len(index.matching_ids(spec)) and "among the" in err
        # an image: the item it was taken from comes first, every neighbour of the filter's label
        png = tmp_path / "q.png"
        label = built["labels"][9]
        png.write_bytes(built["pngs"][9])
        code, out, err = run(
            capsys, "--index", folder, "--image", str(png), "--filter", json.dumps({"label": label}), "--k", "5", "--json"
        )
        assert code == 0, err
        body = json.loads(out)
        assert body["neighbors"][0]["id"] == 9 and body["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert all(n["label"] == label for n in body["neighbors"]) and len(body["neighbors"]) == 5
        # the table: a header and one line per neighbour; --model given explicitly works the same
        code, out, _ = run(
            capsys,
            "--index",
            folder,
            "--image",
            str(png),
            "--filter",
            json.dumps({"label": label}),
            "--k",
            "5",
            "--model",
            str(tiny_artifact),
        )
        lines = out.strip().splitlines()
        assert code == 0 and lines[0].split() == ["rank", "score", "id", "label", "source"] and len(lines) == 6
        assert lines[1].split()[:3] == ["1", "1.0000", "9"] and "cifar10:test:9" in lines[1]
    finally:
        index.close()


def test_fewer_results_only_when_fewer_items_match(built, capsys):
    spec = {"source": {"in": ["cifar10:test:3", "cifar10:test:4", "cifar10:test:5"]}}
    code, out, _ = run(capsys, "--index", str(built["folder"]), "--id", "0", "--k", "10", "--filter", json.dumps(spec), "--json")
    assert code == 0 and sorted(n["id"] for n in json.loads(out)["neighbors"]) == [3, 4, 5]


def test_bad_input_is_one_line_naming_the_flag(built, capsys, tmp_path, tiny_grey_artifact):
    folder = str(built["folder"])
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    cases = [
        (["--id", "1", "--filter", "{label: 3}"], "--filter: filter is not valid JSON"),
        (["--id", "1", "--filter", '{"colour": "red"}'], "--filter: filter key 'colour' is not filterable"),
        (["--id", "1", "--filter", json.dumps({"label": {"in": list(range(1001))}})], "at most 1000"),
        (["--id", "424242"], "--id: no item with id 424242"),
        (["--id", "1", "--k", "0"], "--k must be a positive integer"),
        (["--image", str(tmp_path / "nope.png")], "--image: "),
        (["--image", str(text)], "is not an image"),
        (["--image", str(text), "--model", str(tiny_grey_artifact)], "--model: "),
    ]
    for argv, fragment in cases:
        code, out, err = run(capsys, "--index", folder, *argv)
        assert code == 1 and out == "", (argv, out)
        assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, _, err = run(capsys, "--index", str(tmp_path / "no-index"), "--id", "1")
    assert code == 1 and "--index: " in err
    with pytest.raises(SystemExit) as e:  # neither --image nor --id: argparse's usage error
        main(["search", "--index", folder])
    assert e.value.code == 2


def test_image_without_a_model_where_the_recorded_one_is_gone(built, capsys, tmp_path):
    import shutil

    copy = Path(shutil.copytree(built["folder"], tmp_path / "index"))
    record = json.loads((copy / "index.json").read_text())
    record["artifact"]["path"] = str(tmp_path / "moved-away")
    (copy / "index.json").write_text(json.dumps(record))
    png = tmp_path / "q.png"
    png.write_bytes(built["pngs"][0])
    code, _, err = run(capsys, "--index", str(copy), "--image", str(png))
    assert code == 1 and "--model: give the encoder artifact" in err and "moved-away" in err
