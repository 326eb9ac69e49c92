"""What one training step of the CPU recipes costs, setting by setting (issue 14).

    python bench/step_cost.py                 # the settings below, CIFAR-10 batches, 3 rounds
    python bench/step_cost.py --rounds 5 --steps 12
    python bench/step_cost.py --only 0 5 6 7  # some rows (their numbers in the table), the first the baseline

Every setting trains the same DeepInfoMax module (forward through augmentation, encoder and
objective, backward, Adam) on the same real batch of 128 CIFAR-10 images (256 where a row says so);
the rounds interleave the settings so that a machine that slows down mid-run slows all of them
alike. Prints a markdown table: median ms per step (over every timed step of every round) and the
ratio to the first row, the global-only cifar10-cpu80 recipe, per image (so that a row at batch 256
reads as what an epoch costs). The rows after cifar10-cpu-dim are issue 14's candidates for its
150-minute comparisons, each one change to that config.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from machine import cpu_name  # bench/machine.py (bench/ is on sys.path when a script here runs)

from infomax.data import load_cifar10
from infomax.module import DeepInfoMax

# The cpu80 recipe; each row changes what its name says.
RECIPE = dict(
    arch_kwargs={"base_width": 16, "global_width": 128},
    alpha=1.0,
    gamma=0.01,
    global_estimator="infonce",
    local_estimator="infonce",
    negatives="all",
    critic="cosine",
    views=2,
    augment="simclr",
)
SETTINGS: dict[str, dict[str, Any]] = {
    "global + prior (cifar10-cpu80: beta 0, critic 512)": dict(beta=0.0),
    "global + prior, channels-last": dict(beta=0.0, channels_last=True),
    "three terms (beta 0.5), critic 512": dict(beta=0.5),
    "three terms, critic 256": dict(beta=0.5, critic_hidden=256),
    "three terms, critic 128": dict(beta=0.5, critic_hidden=128),
    "three terms, critic 128, channels-last (cifar10-cpu-dim)": dict(beta=0.5, critic_hidden=128, channels_last=True),
}
DIM = SETTINGS["three terms, critic 128, channels-last (cifar10-cpu-dim)"]
SETTINGS |= {
    "cifar10-cpu-dim + the 8x8 map (`extra_local_maps: [block2]`)": DIM | dict(extra_local_maps=["block2"]),
    "cifar10-cpu-dim + AMDIM's penalty 0.04 and clip 20": DIM | dict(score_penalty=0.04, score_clip=20.0),
    "cifar10-cpu-dim, base width 32": DIM | dict(arch_kwargs={"base_width": 32, "global_width": 128}),
    "cifar10-cpu-dim, global width 256": DIM | dict(arch_kwargs={"base_width": 16, "global_width": 256}),
    "cifar10-cpu-dim, batch 256": DIM | dict(batch_size=256),
}


def build(setting: dict) -> tuple[DeepInfoMax, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DeepInfoMax(**(RECIPE | {k: v for k, v in setting.items() if k != "batch_size"}))
    model.setup("fit")
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def time_steps(model: DeepInfoMax, opt: torch.optim.Optimizer, batch, steps: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model._losses(batch).loss  # the training step's computation, without Lightning's logging
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per setting and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="the batch of the rows that do not set their own")
    p.add_argument("--data-dir", default=None)
    names = list(SETTINGS)
    p.add_argument("--only", type=int, nargs="+", choices=range(len(names)), metavar="ROW", help="these rows only (0: the first)")
    args = p.parse_args()
    chosen = {names[i]: SETTINGS[names[i]] for i in (args.only or range(len(names)))}
    images, labels = load_cifar10(args.data_dir, "train")
    sizes = {name: s.get("batch_size", args.batch_size) for name, s in chosen.items()}
    models = {name: build(s) for name, s in chosen.items()}
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(args.rounds):
        for name, (model, opt) in models.items():
            batch = (images[: sizes[name]], labels[: sizes[name]])
            times[name] += time_steps(model, opt, batch, args.steps, args.warmup)
    first = next(iter(chosen))
    base = statistics.median(times[first]) / sizes[first]
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, two views, {args.rounds} rounds x {args.steps} steps\n")
    print("| setting | batch | ms per step (median) | x the first row, per image |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {sizes[name]} | {med * 1000:.0f} | {med / sizes[name] / base:.2f} |")


if __name__ == "__main__":
    main()
