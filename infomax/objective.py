"""The Deep INFOMAX objective: loss = alpha * global + beta * local + gamma * prior.

Kept apart from the LightningModule so that the plain-PyTorch benchmark loop and the module train
the very same computation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from infomax.discriminators import build_critic
from infomax.encoders import EncoderOutput
from infomax.estimators import derangement, get_estimator, off_diagonal
from infomax.prior import AdversarialPrior, gaussian_kl

NEGATIVES = ("one", "all")
PRIORS = ("kl", "adversarial")


class Losses(NamedTuple):
    loss: torch.Tensor
    global_mi: torch.Tensor  # the bound's value (to maximise), not its loss
    local_mi: torch.Tensor
    prior: torch.Tensor


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of p(z|x) through which gradients flow."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class DIMObjective(nn.Module):
    """Critics, prior and the weighted sum of the three terms.

    Global term: critic on [z, z] (positive) against [z, z'] (z' the code of another image).
    Local term: z broadcast over every position of C(x), paired with C(x) (positive) or with the
    map of another image. ``negatives="one"``: one negative per positive from a derangement of the
    batch; ``"all"``: every other image of the batch (and, for the local term, every position of it).
    """

    def __init__(
        self,
        z_dim: int,
        local_channels: int,
        alpha: float = 0.5,
        beta: float = 1.5,
        gamma: float = 0.01,
        global_estimator: str = "jsd",
        local_estimator: str = "jsd",
        negatives: str = "one",
        critic: str = "concat",
        critic_hidden: int = 512,
        prior: str = "kl",
        critic_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if not w >= 0:  # also catches NaN
                raise ValueError(f"{name}={w}: loss weights must be >= 0")
        if alpha == beta == 0:
            raise ValueError("alpha=0 and beta=0: at least one mutual-information term must be on")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives={negatives!r}: choose one of {NEGATIVES}")
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r}: choose one of {PRIORS}")
        self.global_bound = get_estimator(global_estimator)
        self.local_bound = get_estimator(local_estimator)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.negatives = negatives
        self.global_critic = build_critic(critic, z_dim, z_dim, critic_hidden, critic_temperature) if alpha > 0 else None
        self.local_critic = build_critic(critic, z_dim, local_channels, critic_hidden, critic_temperature) if beta > 0 else None
        self.adversarial = AdversarialPrior(z_dim) if prior == "adversarial" and gamma > 0 else None

    def forward(self, out: EncoderOutput, other: EncoderOutput | None = None) -> Losses:
        """``out``: the encoder's output for a batch. ``other``: optionally, its output for a second
        view (augmentation) of the same images; then the MI terms are taken across views, as AMDIM
        does (global: z of one view against z of the other; local: z of one view against the
        feature map of the other, both ways), so the code must keep what the views share."""
        z = reparameterize(out.mu, out.logvar)
        zero = z.new_zeros(())
        if other is None:
            global_mi = self._global(z, z) if self.global_critic is not None else zero
            local_mi = self._local(z, out.local) if self.local_critic is not None else zero
            prior = self._prior(z, out)
        else:
            z2 = reparameterize(other.mu, other.logvar)
            global_mi = (0.5 * (self._global(z, z2) + self._global(z2, z))
                         if self.global_critic is not None else zero)
            local_mi = (0.5 * (self._local(z, other.local) + self._local(z2, out.local))
                        if self.local_critic is not None else zero)
            prior = 0.5 * (self._prior(z, out) + self._prior(z2, other))
        loss = -self.alpha * global_mi - self.beta * local_mi + self.gamma * prior
        return Losses(loss, global_mi.detach(), local_mi.detach(), prior.detach())

    def _prior(self, z: torch.Tensor, out: EncoderOutput) -> torch.Tensor:
        if self.gamma == 0:
            return z.new_zeros(())
        if self.adversarial is not None:
            return self.adversarial(z)
        return gaussian_kl(out.mu, out.logvar)

    def _global(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Positive: T(z_i, target_i); negatives: T(z_i, target_j), j != i."""
        if self.negatives == "one":
            perm = derangement(z.shape[0], device=z.device)
            pos = self.global_critic(z, target)
            neg = self.global_critic(z, target[perm])
            return self.global_bound(pos, neg.unsqueeze(-1))
        scores = self.global_critic.pairs(z, target)  # (N, N): [i, j] = T(z_i, target_j)
        return self.global_bound(scores.diagonal(), off_diagonal(scores))

    def _local(self, z: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        feats = local.flatten(2).transpose(1, 2)  # (N, P, c): one vector per position
        n, p = feats.shape[:2]
        if self.negatives == "one":
            perm = derangement(n, device=z.device)
            zb = z.unsqueeze(1)  # broadcast z over the P positions
            pos = self.local_critic(zb, feats)
            neg = self.local_critic(zb, feats[perm])
            return self.local_bound(pos, neg.unsqueeze(-1))
        scores = self.local_critic.pairs(z, feats)  # (N, N, P): [i, j, q] = T(z_i, C(x_j)_q)
        pos = scores.diagonal().transpose(0, 1)  # (N, P)
        # Negatives of (i, q): every position of every other image, the same set for each q.
        neg = off_diagonal(scores).transpose(1, 2).reshape(n, 1, -1).expand(n, p, -1)
        return self.local_bound(pos, neg)
