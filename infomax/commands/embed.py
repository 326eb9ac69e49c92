"""``infomax embed``: the codes (mu) of every image of a data set split or an image folder.

    infomax embed --model ARTIFACT --data cifar10 --split test --out emb/
    infomax embed --model ARTIFACT --data photos/ --out emb/ --devices 2 --accelerator gpu

Writes DIR/shard-*-of-*/{vectors.npy, ids.npy, meta.jsonl, shard.json} (one shard per process)
and DIR/embeddings.json last; see ``infomax.embed`` for the format. Several devices or nodes run
Lightning's distributed prediction (strategy ddp); ``infomax index build`` reads all shards.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from infomax.commands.flags import argparse_flags, flag_names
from infomax.validate import non_negative_int


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infomax embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="artifact folder (encoder.json + encoder.safetensors)")
    p.add_argument(
        "--data", required=True, help="cifar10, fmnist, mnist, or a folder of images (subfolders are classes when there are 2+)"
    )
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of a data set (default: test)")
    p.add_argument("--out", required=True, help="folder to write the embeddings into (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace the embeddings already in --out")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--devices", type=int, default=1, help="devices (processes) per node (default: 1)")
    p.add_argument(
        "--accelerator", default="auto", choices=["auto", "cpu", "gpu"], help="auto: a GPU when there is one (default)"
    )
    p.add_argument("--num-nodes", type=int, default=1, help="nodes of a multi-node run (default: 1)")
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="DataLoader workers (default: up to 8 for folders, which are decoded in them; 0 for data sets)",
    )
    p.add_argument("--limit", type=int, default=None, help="embed only the first N images (a quick trial)")
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (default: $INFOMAX_DATA_DIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@flag_names(argparse_flags(parser))
def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.num_workers is not None:
        non_negative_int("num_workers", args.num_workers, sep=" ")

    import logging

    from infomax.embed import embed

    # Lightning's start-up notices (accelerator, tips) would drown the one summary line below.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)

    out = Path(args.out).expanduser()
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(out.iterdir()))
    with _watch_sigint() as interrupted:
        try:
            manifest = embed(
                args.model,
                args.data,
                args.out,
                split=args.split,
                batch_size=args.batch_size,
                devices=args.devices,
                accelerator=args.accelerator,
                num_nodes=args.num_nodes,
                overwrite=args.overwrite,
                limit=args.limit,
                data_dir=args.data_dir,
                num_workers=args.num_workers,
                progress=not args.no_progress,
                command="infomax embed " + shlex.join(argv),
            )
        except (KeyboardInterrupt, SystemExit) as e:
            # Lightning's prediction loop turns Ctrl-C into sys.exit(1); any other exit is not ours.
            if isinstance(e, SystemExit) and not interrupted:
                raise
            return _after_interrupt(out, fresh, existed)
    if manifest is not None:  # global rank 0 only
        what = f"{manifest['data']}:{manifest['split']}" if manifest["split"] else manifest["data"]
        print(
            f"infomax embed: {manifest['count']} vectors (z_dim {manifest['z_dim']}) of {what} written to "
            f"{args.out} in {len(manifest['shards'])} shard(s), {manifest['seconds']:.1f} s"
        )
        if manifest["skipped"]:
            first = manifest["skipped"][0]
            print(
                f"infomax embed: skipped {len(manifest['skipped'])} unreadable file(s), e.g. "
                f'{first["source"]}: {first["reason"]}; all of them listed under "skipped" in '
                f"{out / 'embeddings.json'}",
                file=sys.stderr,
            )
    return 0


@contextlib.contextmanager
def _watch_sigint() -> Iterator[list[bool]]:
    """A list that turns true when SIGINT arrives (then raised as KeyboardInterrupt as usual), to
    tell Lightning's exit after Ctrl-C from any other; the process's own handler is put back on the
    way out (the command may run inside another program's process: a test, a notebook)."""
    seen: list[bool] = []

    def on_sigint(signum, frame):
        seen.append(True)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    ours = previous is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


def _after_interrupt(out: Path, fresh: bool, existed: bool) -> int:
    """After Ctrl-C: a folder this run filled holds no usable embeddings until embeddings.json is
    written (last), so it is removed (emptied, if it was there empty); a folder that held files
    before is left, and said incomplete."""
    from infomax.embed import MANIFEST

    if (out / MANIFEST).is_file():
        print(f"infomax embed: interrupted after {out} was complete", file=sys.stderr)
    elif fresh and out.is_dir():
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir(exist_ok=True)
        print(f"infomax embed: interrupted; removed the incomplete embeddings from {out}", file=sys.stderr)
    elif out.is_dir():
        print(
            f"infomax embed: interrupted; {out} is incomplete (no {MANIFEST}): run the command again with --overwrite",
            file=sys.stderr,
        )
    else:
        print("infomax embed: interrupted before anything was written", file=sys.stderr)
    return 130
