"""``infomax duplicates``: groups of near-identical images in an index folder, as CSV or JSON.

    infomax duplicates --index INDEX_DIR [--threshold T] [--format csv|json] [--out FILE]

Two items are near-duplicates when the cosine similarity of their codes is at least the threshold
(default: infomax.duplicates.DEFAULT_THRESHOLD, chosen on planted copies of CIFAR-10 images:
docs/BENCHMARKS.md, "Near-duplicates"); a group is a chain of such pairs. The index is opened
read-only, so a running server may keep writing to it.

CSV: one row per member (group, size, representative, id, source, label, similarity to the
representative). JSON: {"threshold", "items", "groups": [{"representative", "size",
"min_similarity", "members": [...], "pairs": [{"a", "b", "similarity"}]}]}.
"""

from __future__ import annotations

import argparse
import json
import sys

from infomax.commands.flags import argparse_flags, flag_names
from infomax.errors import SettingError


def parser() -> argparse.ArgumentParser:
    from infomax.duplicates import DEFAULT_THRESHOLD

    p = argparse.ArgumentParser(
        prog="infomax duplicates", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--index", required=True, help="index folder (infomax index build)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine similarity at or above which two images are duplicates (default: the threshold measured "
        f"for the index's encoder, recorded in its artifact; else {DEFAULT_THRESHOLD})",
    )
    p.add_argument("--format", default="csv", choices=["csv", "json"], help="output format (default: csv)")
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    return p


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    from infomax.duplicates import check_threshold, default_threshold, find_duplicates, groups_csv
    from infomax.index import EmbeddingIndex, IndexLoadError

    given = None if args.threshold is None else check_threshold(args.threshold)  # a SettingError spelled --threshold
    try:
        index = EmbeddingIndex.load(args.index, read_only=True)
    except IndexLoadError as e:
        raise SettingError(f"--index: {e}") from None
    try:
        threshold = default_threshold(index) if given is None else given
        groups = find_duplicates(index, threshold)
        n = len(index)
    finally:
        index.close()
    if args.format == "csv":
        text = groups_csv(groups)
    else:
        text = json.dumps({"threshold": threshold, "items": n, "groups": [g.to_dict() for g in groups]}, indent=1) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    in_groups = sum(g.size for g in groups)
    print(f"infomax duplicates: {len(groups)} groups, {in_groups} of {n} items (threshold {threshold})", file=sys.stderr)
    return 0
