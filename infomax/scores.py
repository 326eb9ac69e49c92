"""Keeping critic scores in range, as AMDIM does: pure functions, tensors in.

Bachman, Hjelm and Buchwalter, "Learning Representations by Maximizing Mutual Information Across
Views", NeurIPS 2019 (arXiv 1906.00910), sec. 3.4, and its public code (``costs.py``): with
InfoNCE over many negatives, nothing stops a critic from driving its scores far apart, which the
paper reports as what made training unstable. Its remedy, kept here as two separate options of
the objective:

* :func:`score_penalty`: a penalty lambda * mean(s^2) on the raw scores (before clipping, so that
  it still pulls scores back once the clip has flattened their gradient);
* :func:`soft_clip`: s -> c tanh(s / c), the identity near 0 (slope 1) and never beyond +-c.

The third part of that recipe, dividing dot-product scores by sqrt(dim), is the ``dot`` critic's
own scale (:class:`infomax.discriminators.DotCritic`).
"""

from __future__ import annotations

import torch

from infomax.errors import SettingError


def soft_clip(scores: torch.Tensor, clip: float) -> torch.Tensor:
    """``clip * tanh(scores / clip)``, elementwise: any shape in, the same shape out.

    Odd, 0 at 0 with slope 1, |out| < clip; |s| << clip passes almost unchanged (20 tanh(1/20) =
    0.99917 for s = 1), so only runaway scores are bent."""
    if not clip > 0:  # also catches NaN
        raise SettingError(f"score_clip={clip}: must be > 0", setting="score_clip")
    return clip * torch.tanh(scores / clip)


def score_penalty(*scores: torch.Tensor) -> torch.Tensor:
    """Mean of s^2 over every score of every tensor given, pooled (each tensor any shape): a
    scalar. For one negative per positive, pass the positives and the negatives; for all pairs,
    the (N, N, ...) score matrix, which holds each positive and each negative once."""
    if not scores:
        raise ValueError("score_penalty needs at least one tensor of scores")
    flat = torch.cat([s.reshape(-1) for s in scores])
    if flat.numel() == 0:
        raise ValueError("score_penalty got no scores (empty tensors)")
    return flat.square().mean()
