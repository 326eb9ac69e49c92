"""``infomax knn-grid``: a PNG of random query images, each beside its k nearest neighbours.

    infomax knn-grid --model ARTIFACT --data cifar10 --out grid.png [--split test] [--queries 10]
                     [--k 10] [--metric cos|l2] [--seed 0] [--scale 3] [--bank-limit N]

Queries come from --split (test by default), neighbours from the train split (the bank); with
--split train, or an image folder as --data, queries are drawn from the bank itself and never
count as their own neighbour. Green border: the neighbour's class is the query's; red: it is not.
"""

from __future__ import annotations

import argparse

from infomax.commands.flags import argparse_flags, flag_names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infomax knn-grid", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="artifact folder (encoder.json + encoder.safetensors)")
    p.add_argument("--data", required=True, help="cifar10, fmnist, mnist, or a folder of images")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split the queries come from")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--queries", type=int, default=10, help="rows: random query images (default: 10)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--metric", default="cos", help="cos (cosine similarity) or l2 (Euclidean distance)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query draw (default: 0)")
    p.add_argument("--scale", type=int, default=3, help="enlarge images this many times (default: 3)")
    p.add_argument(
        "--bank-limit", type=int, default=None, help="search only the first N bank images (faster on a CPU; default: all)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    return p


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)

    from infomax.grid import make_knn_grid

    info = make_knn_grid(
        args.model,
        args.data,
        args.out,
        split=args.split,
        queries=args.queries,
        k=args.k,
        metric=args.metric,
        seed=args.seed,
        scale=args.scale,
        bank_limit=args.bank_limit,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
    )
    w, h = info["size"]
    print(
        f"infomax knn-grid: {args.out} ({w}x{h} px): {args.queries} queries x {args.k} neighbours "
        f"({args.metric}), {info['matches']:.0%} of neighbours share the query's class"
        if info["matches"] is not None
        else f"infomax knn-grid: {args.out} ({w}x{h} px): {args.queries} queries x {args.k} neighbours ({args.metric})"
    )
    return 0
