"""Mutual-information lower bounds as pure functions of critic scores: tensors in, scalar out.

All three take the same shapes, so one critic serves every estimator:

* ``pos``: (...,)   the score T(x, y) of each positive pair, drawn from the joint p(x, y);
* ``neg``: (..., K) K scores of negative pairs for each positive, drawn from p(x) p(y)
  (K = 1 for the one-negative mode; K = N - 1, or (N - 1) * P for local features, in the
  all-pairs mode).

Each returns the *bound* (an estimate of MI, in nats, to maximise); the training loss is its
negation. References: Hjelm et al., "Learning deep representations by mutual information
estimation and maximization", ICLR 2019 (arXiv 1808.06670), eqs. 2-5; Poole et al., "On
variational bounds of mutual information", ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from infomax.errors import SettingError


def _check(pos: torch.Tensor, neg: torch.Tensor) -> None:
    if neg.dim() != pos.dim() + 1 or neg.shape[:-1] != pos.shape:
        raise ValueError(
            f"neg must have the shape of pos plus one trailing axis of negatives; "
            f"got pos {tuple(pos.shape)} and neg {tuple(neg.shape)}"
        )
    if neg.shape[-1] < 1:
        raise ValueError("neg holds no negative scores (trailing axis of size 0)")


def jsd_bound(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon bound (DIM eq. 4): E_P[-sp(-T)] - E_Q[sp(T)].

    Written with softplus (sp) rather than log(sigmoid + eps): exact and stable for any score.
    Equals 2 JSD(P || Q) - log 4 at the optimal critic T* = log p(x, y) / (p(x) p(y)); the same
    critic maximises it for every monotone reparameterisation, which is why it works as an MI
    objective even though its value is not MI itself.
    """
    _check(pos, neg)
    return -F.softplus(-pos).mean() - F.softplus(neg).mean()


def infonce_bound(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """InfoNCE (DIM eq. 5): E[T(x, y) - log sum_{y' in {y} + negatives} exp T(x, y')] + log(K + 1).

    A lower bound on MI that can never exceed log(K + 1).
    """
    _check(pos, neg)
    scores = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    return (pos - torch.logsumexp(scores, dim=-1)).mean() + math.log(scores.shape[-1])


def dv_bound(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan bound (DIM eq. 2): E_P[T] - log E_Q[exp T], over all negatives pooled.

    Tight at T* = log p(x, y) / (p(x) p(y)) + const; its sample estimate is biased and of high
    variance, as the paper notes.
    """
    _check(pos, neg)
    return pos.mean() - (torch.logsumexp(neg.flatten(), dim=0) - math.log(neg.numel()))


ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "jsd": jsd_bound,
    "infonce": infonce_bound,
    "dv": dv_bound,
}


def get_estimator(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in ESTIMATORS:
        raise SettingError(f"estimator={name!r} is unknown; choose one of {sorted(ESTIMATORS)}", setting="estimator")
    return ESTIMATORS[name]


def derangement(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A random permutation of range(n) with no fixed point, so a negative never pairs an image
    with itself. Built as a random cyclic shift of a random permutation: perm[(i + s) % n] with
    s in 1..n-1 maps every position somewhere else. Needs n >= 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got n={n} (use a batch size >= 2)")
    perm = torch.randperm(n, generator=generator, device=device)
    shift = int(torch.randint(1, n, (1,), generator=generator))
    out = torch.empty_like(perm)
    out[perm] = perm.roll(-shift)
    return out


def off_diagonal(scores: torch.Tensor) -> torch.Tensor:
    """(N, N, *rest) all-pairs scores -> (N, *rest, N - 1): for each row i, the scores with every
    j != i, moved to the last axis as the negatives of positive (i, i)."""
    n = scores.shape[0]
    if scores.shape[1] != n:
        raise ValueError(f"expected square (N, N, ...) scores, got {tuple(scores.shape)}")
    mask = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    neg = scores[mask].reshape(n, n - 1, *scores.shape[2:])
    return neg.movedim(1, -1)
