"""Embedding throughput: ``infomax embed``'s code path (Lightning ``Trainer.predict`` with the shard
writer, single device, in-process) against a plain ``torch.no_grad()`` loop of the same encoder over
the same uint8 tensors, in one run.

    python bench/embed.py                                   # CPU, CIFAR-10 test (10k images)
    python bench/embed.py --device cuda --batch-size 1024
    python bench/embed.py --model runs/infomax/version_0/artifact --limit 2000

Without --model a randomly initialised reference encoder (conv, z_dim 256) is used: throughput does
not depend on the weights. Both sides start from the decoded uint8 images in memory and end with
float32 codes on the CPU; the embed side also writes its shard and manifest (that is its real cost).
Prints a markdown table: images/s of each (best of --repeats, alternated) and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(encoder, images: torch.Tensor, batch_size: int, device: str) -> float:
    """images/s of a bare batched forward pass (what a user would write by hand)."""
    sync(device)
    t0 = time.perf_counter()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device, non_blocking=True)
            out.append(encoder(x).float().cpu())
    torch.cat(out)
    sync(device)
    return len(images) / (time.perf_counter() - t0)


def embed_path(encoder, source, batch_size: int, device: str, workdir: Path) -> float:
    """images/s of ``infomax.embed.embed_source``: Trainer construction, predict, shard + manifest."""
    from infomax.embed import embed_source, prepare_output

    out = prepare_output(workdir / "emb", overwrite=True)
    sync(device)
    t0 = time.perf_counter()
    manifest = embed_source(
        encoder, source, out, batch_size=batch_size, devices=1, accelerator="gpu" if device == "cuda" else "cpu", progress=False
    )
    sync(device)
    seconds = time.perf_counter() - t0
    assert manifest["count"] == len(source)
    return len(source) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default=None, help="artifact folder (default: a random-init reference encoder)")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N images (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="alternate plain/embed this many times; best of each")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    import logging

    from infomax.artifact import load_encoder
    from infomax.embed import resolve_source

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = args.model
        if model is None:
            from infomax.data import DATASET_STATS, canonical_dataset_name
            from infomax.module import DeepInfoMax

            stats = DATASET_STATS[canonical_dataset_name(args.data)]
            torch.manual_seed(0)
            model = DeepInfoMax(z_dim=256, in_channels=stats["channels"], input_size=stats["size"]).export(
                workdir / "artifact", dataset=args.data
            )
        encoder = load_encoder(model, args.device)
        source = resolve_source(
            args.data, args.split, channels=encoder.in_channels, size=encoder.input_size, data_dir=args.data_dir, limit=args.limit
        )
        images = source.images
        # warm-up (allocator, cuDNN autotune, lazy imports) outside the timings
        plain_loop(encoder, images[: 2 * args.batch_size], args.batch_size, args.device)
        plain, ours = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(encoder, images, args.batch_size, args.device))
            ours.append(embed_path(encoder, source, args.batch_size, args.device, workdir))
    name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(
        f"\nmachine: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{len(images)} {args.data}:{args.split} images, batch {args.batch_size}, "
        f"encoder {encoder.config['arch']} z_dim {encoder.z_dim}"
    )
    print(f"| path | images/s (best of {args.repeats}) | all runs |")
    print("|---|---|---|")
    print(f"| plain torch.no_grad() loop | {max(plain):.0f} | {', '.join(f'{v:.0f}' for v in plain)} |")
    print(f"| infomax embed (Trainer.predict + shard writer) | {max(ours):.0f} | {', '.join(f'{v:.0f}' for v in ours)} |")
    print(f"| ratio embed / plain | {max(ours) / max(plain):.3f} | |")


if __name__ == "__main__":
    main()
