"""Batched image augmentation that runs where the batch is (the GPU in training): no per-image PIL
work, no extra host-device traffic.

Images are float (B, C, H, W) in [0, 1] (before normalisation). Each image of the batch draws its
own parameters. The policies follow SimCLR's CIFAR recipe (Chen et al. 2020): random resized crop
(scale 0.08-1 there; 0.2-1 here, as lightly and solo-learn use for 32 px), horizontal flip, colour
jitter (brightness, contrast, saturation; applied with probability ``jitter_p``) and random
greyscale. Hue jitter is left out: it needs an RGB <-> HSV round trip for little gain at 32 px.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from infomax.errors import SettingError

POLICIES = ("none", "crop_flip", "simclr")

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


class Augment(nn.Module):
    """Random resized crop + flip (+ colour jitter and greyscale for ``simclr``).

    Args:
        policy: ``none`` (identity), ``crop_flip`` or ``simclr``.
        scale: range of the crop's area as a fraction of the image.
        ratio: range of the crop's aspect ratio (sampled log-uniformly).
        jitter: strength s of the colour jitter: brightness, contrast and saturation factors are
            drawn from [1 - s, 1 + s] (SimCLR: 0.8 x 0.5 = 0.4 at CIFAR scale).
        jitter_p: probability that an image is colour-jittered.
        grey_p: probability that an image is turned grey (RGB only).
    """

    def __init__(
        self,
        policy: str = "simclr",
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: float = 0.4,
        jitter_p: float = 0.8,
        grey_p: float = 0.2,
    ) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise SettingError(f"augment={policy!r}: choose one of {POLICIES}", setting="augment")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise SettingError(f"scale={scale}: need 0 < min <= max <= 1", setting="scale")
        if not (0 < ratio[0] <= ratio[1]):
            raise SettingError(f"ratio={ratio}: need 0 < min <= max", setting="ratio")
        if not (0 <= jitter < 1):
            raise SettingError(f"jitter={jitter}: must be in [0, 1)", setting="jitter")
        for name, p in (("jitter_p", jitter_p), ("grey_p", grey_p)):
            if not 0 <= p <= 1:
                raise SettingError(f"{name}={p}: a probability must be in [0, 1]", setting=name)
        self.policy = policy
        self.scale, self.ratio = scale, ratio
        self.jitter, self.jitter_p, self.grey_p = jitter, jitter_p, grey_p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy == "none":
            return x
        if not x.is_floating_point() or x.dim() != 4:
            raise ValueError(f"Augment expects float images (B, C, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}")
        x = self.crop_flip(x)
        if self.policy == "simclr":
            x = self.colour(x)
        return x

    def crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Random resized crop back to the input size, and a horizontal flip with probability 1/2,
        as one affine resampling (bilinear) per image."""
        b, device = x.shape[0], x.device
        area = torch.empty(b, device=device).uniform_(*self.scale)
        log_r = torch.empty(b, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        r = log_r.exp()
        # Crop width and height as fractions of the image (clamped: a crop never leaves the image).
        w = (area * r).sqrt().clamp(max=1.0)
        h = (area / r).sqrt().clamp(max=1.0)
        # Centre anywhere that keeps the crop inside, in normalised coordinates [-1, 1].
        cx = (torch.rand(b, device=device) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, device=device) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation jitter (with probability ``jitter_p``), then random
        greyscale (with probability ``grey_p``); RGB only for saturation and greyscale."""
        b, c, device = x.shape[0], x.shape[1], x.device

        def factors() -> torch.Tensor:
            f = torch.empty(b, 1, 1, 1, device=device, dtype=x.dtype).uniform_(1 - self.jitter, 1 + self.jitter)
            on = (torch.rand(b, 1, 1, 1, device=device) < self.jitter_p).to(x.dtype)
            return 1 + on * (f - 1)  # factor 1 = unchanged for images not drawn for jitter

        x = (x * factors()).clamp(0, 1)  # brightness
        mean = self._grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + factors() * (x - mean)).clamp(0, 1)  # contrast
        if c == 3:
            grey = self._grey(x)
            x = (grey + factors() * (x - grey)).clamp(0, 1)  # saturation
            to_grey = (torch.rand(b, 1, 1, 1, device=device) < self.grey_p).to(x.dtype)
            x = x + to_grey * (self._grey(x) - x)
        return x

    @staticmethod
    def _grey(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x
        w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
