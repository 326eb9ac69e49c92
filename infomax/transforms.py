"""Normalisation shared by training, embedding and serving: the one place that turns uint8 pixels
into the float input of an encoder, so that a served encoder sees exactly what it was trained on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from infomax.errors import SettingError


class Normalize(nn.Module):
    """uint8 (B, C, H, W) in 0..255, or float in [0, 1] -> (x - mean) / std as float32.

    Kept as a module with buffers so it follows the encoder to its device: data crosses to the
    GPU as uint8 (4x less traffic) and is converted there.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise SettingError(f"mean {mean} and std {std} must be non-empty and of the same length", setting="mean")
        if any(s <= 0 for s in std):
            raise SettingError(f"std={std}: every value must be > 0", setting="std")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    mean: torch.Tensor  # (1, C, 1, 1) buffers, set in __init__
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            raise TypeError(f"expected uint8 or float images, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"expected images of shape (B, {self.mean.shape[1]}, H, W), got {tuple(x.shape)}")
        return (x - self.mean) / self.std
