"""Data sets held in memory as uint8 tensors, batched with one index operation per batch, and the
train batches of a set held whole on a GPU. No Lightning: reading a data set does not import it.

Everything is decoded once into a single ``uint8`` tensor per split: CIFAR-10 (150 MB),
(Fashion-)MNIST (47 MB) and typical image folders fit easily, and batching then costs one tensor
index per batch instead of per-image PIL work in the training loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["DeviceBatches", "InMemoryDataset", "collate_batch"]


class InMemoryDataset(Dataset):
    """(image, label) pairs backed by two tensors; batches are gathered with one index op.

    ``__getitems__`` returns an already stacked ``(images, labels)`` batch, which the DataLoader
    hands to :func:`collate_batch` unchanged. It works with any sampler, including the
    DistributedSampler Lightning installs under DDP.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def collate_batch(batch: Any) -> Any:
    """Pass through batches stacked by ``__getitems__``; stack lists of samples otherwise."""
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


class DeviceBatches:
    """Shuffled train batches of a uint8 data set held on one device (a GPU): the data crosses to
    the device once, and each step only slices it, so the loader costs no host work per step.

    Under DDP every rank holds the whole set and takes its own share of each epoch's permutation
    (the same seed on every rank, so shares are disjoint). Incomplete last batches are dropped.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.per_rank = len(images) // world_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.images), generator=generator)[: self.per_rank * self.world_size]
        mine = perm[self.rank :: self.world_size].to(self.images.device)
        for i in range(len(self)):
            idx = mine[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]
