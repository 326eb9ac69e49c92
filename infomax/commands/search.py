"""``infomax search``: the nearest items of an image or of an indexed item, optionally among those a
metadata filter matches.

    infomax search --index INDEX_DIR (--image FILE | --id N) [--k 10] [--filter JSON] [--model ART] [--json]

The filter is the JSON object of ``POST /v1/search`` (docs/SERVICE.md, "Filters"), e.g.
``'{"label": {"in": [3, 5]}}'``, ``'{"source": {"prefix": "holidays/"}}'``,
``'{"meta.camera": "x100"}'``; k results come back whenever k items match. ``--image`` encodes the
file with the index's encoder: ``--model``, or the artifact ``index.json`` records when that folder
is still there. The index is opened read-only: a running server may keep writing to it.

Output: one line per neighbour (rank, cosine similarity, id, label and class, source), best first;
``--json``: ``{"query", "k", "filter", "matching", "neighbors": [{"id", "score", "source", "label",
"meta"}]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from infomax.errors import MissingFileError, SettingError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index folder (infomax index build)")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="FILE", help="an image file: PNG, JPEG, GIF, WebP or BMP")
    query.add_argument("--id", type=int, metavar="N", help="an indexed item (left out of its own results)")
    p.add_argument("--k", type=int, default=10, help="number of neighbours (default: 10)")
    p.add_argument(
        "--filter", metavar="JSON", default=None, help="only items whose metadata matches, e.g. '{\"label\": 3}' (see above)"
    )
    p.add_argument(
        "--model", metavar="ART", default=None, help="encoder artifact for --image (default: the one index.json records)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    from infomax.index import EmbeddingIndex, IndexLoadError, parse_filter

    if args.k < 1:
        raise SettingError(f"--k must be a positive integer, got {args.k}")
    try:
        flt = parse_filter(args.filter) if args.filter is not None else None
    except ValueError as e:
        raise SettingError(f"--filter: {e}") from None
    try:
        index = EmbeddingIndex.load(args.index, read_only=True)
    except IndexLoadError as e:
        raise SettingError(f"--index: {e}") from None
    try:
        if args.image is not None:
            query: dict[str, Any] = {"image": args.image}
            vector = _encode(args.image, args.model, index)
            scores, ids = index.search(vector, args.k, filter=flt)
        else:
            query = {"id": args.id}
            try:
                scores, ids = index.search_by_id(args.id, args.k, filter=flt)
            except KeyError:
                raise SettingError(f"--id: no item with id {args.id} in {args.index}") from None
        matching = len(index.matching_ids(flt)) if flt is not None and not flt.empty else len(index)
        found = [(float(s), int(i)) for s, i in zip(scores[0].tolist(), ids[0].tolist()) if i >= 0]
        metadata = index.get_many([i for _, i in found])
        classes = _classes(index)
    finally:
        index.close()
    neighbors = [
        {
            "id": i,
            "score": s,
            "source": (m or {}).get("source"),
            "label": (m or {}).get("label"),
            "meta": (m or {}).get("meta") or {},
        }
        for (s, i), m in zip(found, metadata)
        if m is not None
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "query": query,
                    "k": args.k,
                    "filter": flt.to_dict() if flt is not None else None,
                    "matching": matching,
                    "neighbors": neighbors,
                },
                indent=1,
                ensure_ascii=False,
            )
        )
    else:
        _print_table(neighbors, classes)
    of = f"item {args.id}" if args.id is not None else args.image
    among = f" among the {matching} items matching {flt}" if flt is not None and not flt.empty else ""
    print(f"infomax search: {len(neighbors)} neighbours of {of}{among}", file=sys.stderr)
    return 0


def _encode(image: str, model: str | None, index: Any) -> Any:
    """The image's vector by the index's encoder (refused when the artifact is another one)."""
    from PIL import Image, UnidentifiedImageError

    from infomax.artifact import load_encoder
    from infomax.imageio import load_image

    recorded = index.info.get("artifact") or {}
    if model is None:
        path = recorded.get("path")
        if not path or not Path(path).is_dir():
            raise SettingError(
                "--model: give the encoder artifact for --image (index.json records "
                + (f"{path!r}, which is not there)" if path else "none)")
            )
        model = path
    enc = load_encoder(model)
    if recorded.get("id") and recorded["id"] != enc.id:
        raise SettingError(
            f"--model: {model} is encoder {enc.id[:12]}, but the index holds the vectors of "
            f"{recorded['id'][:12]} (give the artifact the index was built with)"
        )
    try:
        pixels = load_image(image, enc.input_size, enc.in_channels)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise MissingFileError(f"--image: {image}: no such file") from None
        raise SettingError(f"--image: {image} is not an image PIL can read ({e})") from None
    return enc.embed(pixels[None]).numpy()


def _classes(index: Any) -> list[str] | None:
    from infomax.data.registry import recorded_classes

    return recorded_classes(index.info.get("artifact"))


def _print_table(neighbors: list[dict], classes: list[str] | None) -> None:
    rows = [("rank", "score", "id", "label", "source")]
    for rank, n in enumerate(neighbors, 1):
        label = n["label"]
        name = n["meta"].get("class") if isinstance(n["meta"].get("class"), str) else None
        if name is None and label is not None and classes and 0 <= label < len(classes):
            name = classes[label]
        shown = "" if label is None else str(label) + (f" ({name})" if name else "")
        rows.append((str(rank), f"{n['score']:.4f}", str(n["id"]), shown or (name or ""), n["source"] or ""))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(r[c].rjust(widths[c]) if c < 3 else r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
