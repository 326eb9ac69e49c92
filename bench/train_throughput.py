"""Training throughput of the reference recipe: DeepInfoMax through Lightning against a minimal
plain-PyTorch loop of the same model, objective, optimiser, batch and data loader, in one run.

    python bench/train_throughput.py                  # CPU, CIFAR-10 from $INFOMAX_DATA_DIR
    python bench/train_throughput.py --device cuda --precision bf16-mixed --steps 300
    python bench/train_throughput.py --device cuda --precision bf16-mixed --on-device --channels-last --compile

Both loops train the same DeepInfoMax modules with the same settings: ``--on-device`` keeps the
whole train split on the GPU (``infomax.data.DeviceBatches``) instead of a DataLoader, and
``--channels-last`` / ``--compile`` / ``--augment`` / ``--views`` are the module's own options.

Prints a markdown table: images/s of each and the ratio (target: Lightning >= 0.95 x plain).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import pytorch_lightning as pl
import torch
from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)
from torch.utils.data import DataLoader

from infomax.data import DeviceBatches, InMemoryDataset, collate_batch, load_cifar10
from infomax.module import DeepInfoMax


def loader(images: torch.Tensor, batch_size: int, device: str, on_device: bool = False):
    labels = torch.zeros(len(images), dtype=torch.long)
    if on_device:
        return DeviceBatches(images, labels, batch_size, device)
    return DataLoader(
        InMemoryDataset(images, labels),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_batch,
        pin_memory=device == "cuda",
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_model(args) -> DeepInfoMax:
    return DeepInfoMax(
        arch=args.arch, channels_last=args.channels_last, compile=args.compile, augment=args.augment, views=args.views
    )


def plain_loop(images, args) -> float:
    torch.manual_seed(0)
    model = make_model(args).to(args.device)  # the same modules; trained without Lightning
    model.setup("fit")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if args.precision == "bf16-mixed" else contextlib.nullcontext()
    step, t0 = 0, None
    batches = loader(images, args.batch_size, args.device, args.on_device)
    while True:
        for x, y in batches:
            if step == args.warmup:
                sync(args.device)
                t0 = time.perf_counter()
            x = x.to(args.device, non_blocking=True)
            with autocast:
                loss = model._losses((x, y)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step == args.warmup + args.steps:
                sync(args.device)
                return args.steps * args.batch_size / (time.perf_counter() - t0)


class _Timer(pl.Callback):
    def __init__(self, warmup: int, steps: int, device: str) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.t1 = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup + self.steps:
            sync(self.device)
            self.t1 = time.perf_counter()


def lightning_loop(images, args) -> float:
    torch.manual_seed(0)
    model = make_model(args)
    timer = _Timer(args.warmup, args.steps, args.device)
    trainer = pl.Trainer(
        max_steps=args.warmup + args.steps,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=loader(images, args.batch_size, args.device, args.on_device))
    return args.steps * args.batch_size / (timer.t1 - timer.t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="alternate plain/Lightning this many times; best of each")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", default="conv")
    p.add_argument("--on-device", action="store_true", help="train split resident on the GPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--augment", default="none")
    p.add_argument("--views", type=int, default=1)
    p.add_argument("--skip-plain", action="store_true", help="time the Lightning loop only")
    args = p.parse_args()
    try:
        images, _ = load_cifar10(args.data_dir, "train")
    except FileNotFoundError:
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8)
    plain, light = [], []
    for _ in range(args.repeats):
        if not args.skip_plain:
            plain.append(plain_loop(images, args))
        light.append(lightning_loop(images, args))
    if args.skip_plain:
        plain = [float("nan")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(
        f"\nmachine: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, precision {args.precision}, "
        f"arch {args.arch}, on_device {args.on_device}, channels_last {args.channels_last}, compile {args.compile}, "
        f"augment {args.augment}, views {args.views}"
    )
    print(f"| loop | images/s (best of {args.repeats}) | all runs |")
    print("|---|---|---|")
    print(f"| plain PyTorch | {max(plain):.0f} | {', '.join(f'{v:.0f}' for v in plain)} |")
    print(f"| Lightning DeepInfoMax | {max(light):.0f} | {', '.join(f'{v:.0f}' for v in light)} |")
    print(f"| ratio Lightning / plain | {max(light) / max(plain):.3f} | |")


if __name__ == "__main__":
    main()
