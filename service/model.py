"""The encoder as the service runs it: uint8 pixels in, float32 codes out, on the batch thread.

``optimize`` folds each BatchNorm into the convolution before it and switches to channels-last
memory: about twice the images per second on CPU for the reference conv encoder, with codes equal
to the artifact's to ~1e-6. The result is checked against the unmodified encoder at load time and
dropped if it differs by more than 1e-4 (relative), so a new architecture can only lose speed.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from infomax.artifact import InferenceEncoder

log = logging.getLogger("service.model")


def _fold_batchnorm(module: nn.Module) -> int:
    """Conv2d directly followed by BatchNorm2d inside any nn.Sequential -> one Conv2d."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


class ServingModel:
    def __init__(self, encoder: InferenceEncoder, *, optimize: bool = True) -> None:
        self.encoder = encoder.eval()
        self.id: str = encoder.id
        self.z_dim = encoder.z_dim
        self.output = encoder.output
        self.whitened = encoder.whitening is not None
        self.input_size = encoder.input_size
        self.in_channels = encoder.in_channels
        self.optimized = False
        self._net: nn.Module = self.encoder
        if optimize:
            self._try_optimize()

    def _try_optimize(self) -> None:
        try:
            net = copy.deepcopy(self.encoder).eval()
            folded = _fold_batchnorm(net)
            net = net.to(memory_format=torch.channels_last)
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (4, self.in_channels, self.input_size, self.input_size), dtype=torch.uint8, generator=g)
            with torch.inference_mode():
                ref = self.encoder(x)
                got = net(x.contiguous(memory_format=torch.channels_last))
            err = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-6))
        except Exception as e:  # noqa: BLE001 - an optimisation must never stop the service
            log.warning("encoder optimisation skipped: %s", e)
            return
        if err > 1e-4:
            log.warning("encoder optimisation skipped: codes differ by %.2e (relative)", err)
            return
        self._net, self.optimized = net, True
        log.info("encoder optimised: %d BatchNorm layers folded, channels-last (max relative difference %.1e)", folded, err)

    def encode(self, pixels: torch.Tensor) -> np.ndarray:
        """uint8 (B, C, S, S) -> float32 (B, z_dim): the artifact's output (mu or the local map)."""
        with torch.inference_mode():
            if self.optimized:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            return self._net(pixels).float().numpy()
