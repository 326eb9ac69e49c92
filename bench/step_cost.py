"""What one training step of the CPU recipes costs, setting by setting (issue 14).

    python bench/step_cost.py                 # the settings below, CIFAR-10 batches, 3 rounds
    python bench/step_cost.py --rounds 5 --steps 12

Every setting trains the same DeepInfoMax module (forward through augmentation, encoder and
objective, backward, Adam) on the same real batch of 128 CIFAR-10 images; the rounds interleave the
settings so that a machine that slows down mid-run slows all of them alike. Prints a markdown table:
median ms per step (over every timed step of every round) and the ratio to the first row, the
shipped global-only recipe (cifar10-cpu80.yaml).
"""

from __future__ import annotations

import argparse
import statistics
import time

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
SETTINGS = {
    "global + prior (cifar10-cpu80: beta 0, critic 512)": dict(beta=0.0),
    "global + prior, channels-last": dict(beta=0.0, channels_last=True),
    "three terms (beta 0.5), critic 512": dict(beta=0.5),
    "three terms, critic 256": dict(beta=0.5, critic_hidden=256),
    "three terms, critic 128": dict(beta=0.5, critic_hidden=128),
    "three terms, critic 128, channels-last (cifar10-cpu-dim)": dict(beta=0.5, critic_hidden=128, channels_last=True),
}


def build(setting: dict) -> tuple[DeepInfoMax, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DeepInfoMax(**RECIPE, **setting)
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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    images, labels = load_cifar10(args.data_dir, "train")
    batch = (images[: args.batch_size], labels[: args.batch_size])
    models = {name: build(s) for name, s in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, (model, opt) in models.items():
            times[name] += time_steps(model, opt, batch, args.steps, args.warmup)
    base = statistics.median(times[next(iter(SETTINGS))])
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, batch {args.batch_size}, two views, {args.rounds} rounds x {args.steps} steps\n"
    )
    print("| setting | ms per step (median) | x the global-only recipe |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1000:.0f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
