"""``infomax eval``: k-NN, 1-NN and linear-probe accuracy of an encoder's codes, beside raw pixels.

    infomax eval --model ARTIFACT --data cifar10 [--limit-train N --limit-test N] [--json OUT.json]
                 [--no-probe] [--no-pixels] [--pooled] [--local] [--record]
    infomax eval --model ARTIFACT --data PHOTOS/ [--test-fraction 0.2]    # PHOTOS/<class>/<image>
    infomax eval --model ARTIFACT --bank PHOTOS/ --queries NEW_PHOTOS/    # both: one subfolder per class

The train split is the k-NN bank and the probe's training set, the test split the queries; for a
folder whose subfolders are classes, a seeded held-out part of every class gives the queries, or
--bank and --queries name two such folders. Prints a markdown table and the spread of the cosine
scores (with a warning when the codes collapsed); --json writes the full report (every figure,
the chosen probe penalty, timings). See ``infomax.evaluate`` for the protocol.
"""

from __future__ import annotations

import argparse

from infomax.commands.flags import argparse_flags, flag_names
from infomax.errors import SettingError
from infomax.validate import positive_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="artifact folder (required unless --no-encoder)")
    p.add_argument("--data", default=None, help="cifar10, fmnist or mnist, or a folder of images with one subfolder per class")
    p.add_argument(
        "--bank",
        default=None,
        help="a folder with one subfolder per class: the images searched (with --queries, instead of --data)",
    )
    p.add_argument("--queries", default=None, help="a folder with one subfolder per class: the queries (with --bank)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="part of every class of a --data folder held out as queries (default: 0.2)",
    )
    p.add_argument("--limit-train", type=int, default=None, help="use the first N train images (default: all)")
    p.add_argument("--limit-test", type=int, default=None, help="use the first N test images (default: all)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (k-NN and 1-NN only)")
    p.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    p.add_argument(
        "--pooled",
        action="store_true",
        help="also evaluate the pooled vector the code's heads read (what `infomax export --output pooled` serves)",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="also evaluate the encoder's local feature map C(x), flattened (the features the local MI term trains)",
    )
    p.add_argument(
        "--record", action="store_true", help="also store the figures in the artifact's encoder.json (key 'eval', per data set)"
    )
    p.add_argument("--no-encoder", action="store_true", help="only the raw-pixel baseline (no --model needed)")
    p.add_argument("--k", type=int, default=200, help="neighbours of the weighted k-NN (default: 200)")
    p.add_argument("--temperature", type=float, default=0.1, help="k-NN vote temperature (default: 0.1)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe's held-out split (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    return p


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.model is None and not args.no_encoder:
        raise SettingError(
            "--model is required (the artifact folder to evaluate); pass --no-encoder for the raw-pixel baseline alone"
        )
    positive_int("batch_size", args.batch_size, sep=" ")
    if args.record and (args.no_encoder or args.limit_train is not None or args.limit_test is not None):
        raise SettingError(
            "--record stores the encoder's figures on the full splits in its artifact: it cannot go "
            "with --no-encoder, --limit-train or --limit-test"
        )
    if args.record and (args.bank is not None or args.queries is not None or not _is_dataset(args.data)):
        raise SettingError(
            "--record stores figures of the standard data sets (cifar10, fmnist, mnist) in the "
            "artifact; a folder's figures belong in --json FILE"
        )

    from infomax.atomic import atomic_write_json
    from infomax.evaluate import evaluate_encoder, format_report

    report = evaluate_encoder(
        args.model,
        args.data,
        data_dir=args.data_dir,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        probe=not args.no_probe,
        pixels=not args.no_pixels,
        encoder=not args.no_encoder,
        batch_size=args.batch_size,
        k=args.k,
        temperature=args.temperature,
        seed=args.seed,
        local=args.local,
        pooled=args.pooled,
        bank=args.bank,
        queries=args.queries,
        test_fraction=args.test_fraction,
    )
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)
    if args.record:
        from infomax.artifact import record_eval

        print(f"recorded in {record_eval(args.model, report)}")
    return 0


def _is_dataset(data: str | None) -> bool:
    from infomax.data.registry import is_dataset_name

    return data is not None and is_dataset_name(data)
