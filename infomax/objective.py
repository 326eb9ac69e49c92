"""The Deep INFOMAX objective: loss = alpha * global + beta * local + gamma * prior.

Kept apart from the LightningModule so that the plain-PyTorch benchmark loop and the module train
the very same computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import nn

from infomax.discriminators import Critic, build_critic
from infomax.encoders import EncoderOutput
from infomax.errors import SettingError
from infomax.estimators import derangement, get_estimator, off_diagonal
from infomax.prior import AdversarialPrior, gaussian_kl
from infomax.scores import score_penalty as mean_square_score
from infomax.scores import soft_clip

NEGATIVES = ("one", "all")
PRIORS = ("kl", "adversarial")


class Losses(NamedTuple):
    loss: torch.Tensor
    global_mi: torch.Tensor  # the bound's value (to maximise), not its loss
    local_mi: torch.Tensor
    prior: torch.Tensor
    # Only with the options on (None otherwise): the local-to-local bound (``delta`` > 0) and the
    # score penalty as added to the loss (``score_penalty`` > 0).
    local_local_mi: torch.Tensor | None = None
    score_penalty: torch.Tensor | None = None


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of p(z|x) through which gradients flow."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


class DIMObjective(nn.Module):
    """Critics, prior and the weighted sum of the three terms.

    Global term: critic on [z, z] (positive) against [z, z'] (z' the code of another image).
    Local term: z broadcast over every position of C(x), paired with C(x) (positive) or with the
    map of another image. ``negatives="one"``: one negative per positive from a derangement of the
    batch; ``"all"``: every other image of the batch (and, for the local term, every position of it).

    AMDIM's options (Bachman et al., NeurIPS 2019; all off by default):

    * ``extra_channels``: the channels of further feature maps of the encoder (``out.maps``, in
      that order), each with a critic of its own; z is paired with every position of each as with
      C(x), and the local term is the mean of the bounds over C(x) and these maps (AMDIM's 1->5
      and 1->7: the global code against two scales).
    * ``delta``: weight of a local-to-local term across two views (AMDIM's 5->5): for each image,
      the feature vector at one random position of one view's C(x) (``torch.randint``, drawn
      before the term's derangement) against every position of the other view's C(x); negatives
      as for the local term; the local estimator; both directions averaged.
    * ``score_penalty``: lambda; each term's loss gets lambda * mean(s^2) over the raw scores of
      its critic (before any clip), weighted as the term (alpha, beta, delta).
    * ``score_clip``: c > 0; every score is soft-clipped to c tanh(s / c) before its bound.
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
        extra_channels: Sequence[int] = (),
        delta: float = 0.0,
        score_penalty: float = 0.0,
        score_clip: float = 0.0,
    ) -> None:
        super().__init__()
        for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("delta", delta)):
            if not w >= 0:  # also catches NaN
                raise SettingError(f"{name}={w}: loss weights must be >= 0", setting=name)
        for name, v in (("score_penalty", score_penalty), ("score_clip", score_clip)):
            if not 0 <= v < float("inf"):  # also catches NaN
                raise SettingError(f"{name}={v}: must be finite and >= 0 (0: off)", setting=name)
        if alpha == beta == delta == 0:
            raise SettingError("alpha=0, beta=0 and delta=0: at least one mutual-information term must be on", setting="alpha")
        if extra_channels and beta == 0:
            raise SettingError(
                f"extra_channels={list(extra_channels)} with beta=0: the extra maps are part of the local term; set beta > 0",
                setting="extra_channels",
            )
        if negatives not in NEGATIVES:
            raise SettingError(f"negatives={negatives!r}: choose one of {NEGATIVES}", setting="negatives")
        if prior not in PRIORS:
            raise SettingError(f"prior={prior!r}: choose one of {PRIORS}", setting="prior")
        self.global_bound = get_estimator(global_estimator)
        self.local_bound = get_estimator(local_estimator)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.negatives = negatives
        self.global_critic = build_critic(critic, z_dim, z_dim, critic_hidden, critic_temperature) if alpha > 0 else None
        self.local_critic = build_critic(critic, z_dim, local_channels, critic_hidden, critic_temperature) if beta > 0 else None
        self.adversarial = AdversarialPrior(z_dim) if prior == "adversarial" and gamma > 0 else None
        self.delta, self.score_penalty, self.score_clip = delta, score_penalty, score_clip
        # Created only when used, so that checkpoints without these options keep their keys.
        self.extra_critics: nn.ModuleList | None
        if extra_channels and beta > 0:
            self.extra_critics = nn.ModuleList(
                build_critic(critic, z_dim, c, critic_hidden, critic_temperature) for c in extra_channels
            )
        else:
            self.extra_critics = None
        self.local_local_critic = (
            build_critic(critic, local_channels, local_channels, critic_hidden, critic_temperature) if delta > 0 else None
        )

    def forward(self, out: EncoderOutput, other: EncoderOutput | None = None) -> Losses:
        """``out``: the encoder's output for a batch. ``other``: optionally, its output for a second
        view (augmentation) of the same images; then the MI terms are taken across views, as AMDIM
        does (global: z of one view against z of the other; local: z of one view against the
        feature map of the other, both ways), so the code must keep what the views share.
        Random numbers, in order: z's noise (each view's), then each term's draws: global, local,
        the prior's (adversarial), the extra maps, local-to-local; the first view's direction first."""
        n_extra = 0 if self.extra_critics is None else len(self.extra_critics)
        for o in (out, other):
            if o is not None and n_extra and len(o.maps) != n_extra:
                raise ValueError(
                    f"the objective has critics for {n_extra} extra map(s); the encoder gave {len(o.maps)} (encoder(x, maps=...))"
                )
        if self.local_local_critic is not None and other is None:
            raise ValueError(f"delta={self.delta}: the local-to-local term compares two views; pass both")
        z = reparameterize(out.mu, out.logvar)
        off = (z.new_zeros(()), None)
        if other is None:
            glob = self._global(z, z, self.global_critic) if self.global_critic is not None else off
            local = self._local(z, out.local, self.local_critic) if self.local_critic is not None else off
            prior = self._prior(z, out)
            extra = [self._local(z, m, c) for m, c in zip(out.maps, self._extra_critics())]
        else:
            z2 = reparameterize(other.mu, other.logvar)
            g = self.global_critic
            glob = _both(self._global(z, z2, g), self._global(z2, z, g)) if g is not None else off
            local = (
                _both(self._local(z, other.local, self.local_critic), self._local(z2, out.local, self.local_critic))
                if self.local_critic is not None
                else off
            )
            prior = 0.5 * (self._prior(z, out) + self._prior(z2, other))
            extra = [
                _both(self._local(z, m2, c), self._local(z2, m1, c))
                for m1, m2, c in zip(out.maps, other.maps, self._extra_critics())
            ]
        if extra:  # the local term over every scale: C(x)'s bound and each extra map's, averaged
            local = _mean([local, *extra])
        (global_mi, global_pen), (local_mi, local_pen) = glob, local
        loss = -self.alpha * global_mi - self.beta * local_mi + self.gamma * prior
        local_local_mi = penalty = None
        if self.local_local_critic is not None and other is not None:  # forward refused one view above
            c = self.local_local_critic
            local_local_mi, ll_pen = _both(
                self._local_local(out.local, other.local, c), self._local_local(other.local, out.local, c)
            )
            loss = loss - self.delta * local_local_mi
            local_local_mi = local_local_mi.detach()
        if self.score_penalty > 0:
            weighted = [(self.alpha, global_pen), (self.beta, local_pen)]
            if local_local_mi is not None:
                weighted.append((self.delta, ll_pen))
            penalty = self.score_penalty * sum(w * p for w, p in weighted if p is not None)
            loss = loss + penalty
            penalty = penalty.detach()
        return Losses(loss, global_mi.detach(), local_mi.detach(), prior.detach(), local_local_mi, penalty)

    def _extra_critics(self) -> Sequence[Critic]:
        """The critics of the extra maps, in the encoder's order (a ModuleList holds only critics)."""
        return cast(Sequence[Critic], self.extra_critics or ())

    def _prior(self, z: torch.Tensor, out: EncoderOutput) -> torch.Tensor:
        if self.gamma == 0:
            return z.new_zeros(())
        if self.adversarial is not None:
            return self.adversarial(z)
        return gaussian_kl(out.mu, out.logvar)

    def _bound(self, bound, pos: torch.Tensor, neg: torch.Tensor, raw: tuple[torch.Tensor, ...], clipped: bool = False):
        """``bound(pos, neg)`` and, with ``score_penalty`` on, mean(s^2) over ``raw`` (the raw
        scores, each once); with ``score_clip`` on, the bound sees clipped scores (``clipped``:
        ``pos`` and ``neg`` were cut from an already clipped score matrix)."""
        penalty = mean_square_score(*raw) if self.score_penalty > 0 else None
        if self.score_clip > 0 and not clipped:
            pos, neg = soft_clip(pos, self.score_clip), soft_clip(neg, self.score_clip)
        return bound(pos, neg), penalty

    def _clip(self, scores: torch.Tensor) -> torch.Tensor:
        # All pairs: clip the (N, N, ...) matrix once, before the local term expands its negatives
        # P-fold (the same values as clipping the expansion, at 1/P of the memory).
        return soft_clip(scores, self.score_clip) if self.score_clip > 0 else scores

    def _global(self, z: torch.Tensor, target: torch.Tensor, critic: Critic):
        """Positive: T(z_i, target_i); negatives: T(z_i, target_j), j != i. (bound, penalty)."""
        if self.negatives == "one":
            perm = derangement(z.shape[0], device=z.device)
            pos = critic(z, target)
            neg = critic(z, target[perm])
            return self._bound(self.global_bound, pos, neg.unsqueeze(-1), (pos, neg))
        raw = critic.pairs(z, target)  # (N, N): [i, j] = T(z_i, target_j)
        scores = self._clip(raw)
        return self._bound(self.global_bound, scores.diagonal(), off_diagonal(scores), (raw,), clipped=True)

    def _local(self, z: torch.Tensor, local: torch.Tensor, critic: Critic):
        """z (N, d) against every position of ``local`` (N, c, h, w) through ``critic``: positive
        T(z_i, local_i,q), negatives from other images. (bound, penalty)."""
        feats = local.flatten(2).transpose(1, 2)  # (N, P, c): one vector per position
        n, p = feats.shape[:2]
        if self.negatives == "one":
            perm = derangement(n, device=z.device)
            zb = z.unsqueeze(1)  # broadcast z over the P positions
            pos = critic(zb, feats)
            neg = critic(zb, feats[perm])
            return self._bound(self.local_bound, pos, neg.unsqueeze(-1), (pos, neg))
        raw = critic.pairs(z, feats)  # (N, N, P): [i, j, q] = T(z_i, C(x_j)_q)
        scores = self._clip(raw)
        pos = scores.diagonal().transpose(0, 1)  # (N, P)
        # Negatives of (i, q): every position of every other image, the same set for each q.
        neg = off_diagonal(scores).transpose(1, 2).reshape(n, 1, -1).expand(n, p, -1)
        return self._bound(self.local_bound, pos, neg, (raw,), clipped=True)

    def _local_local(self, source: torch.Tensor, target: torch.Tensor, critic: Critic):
        """AMDIM's 5->5: one random position of each image's ``source`` map (N, c, h, w) against
        every position of its ``target`` map (the other view), as the local term pairs z."""
        n, c = source.shape[:2]
        at = torch.randint(source.shape[2] * source.shape[3], (n,), device=source.device)
        vec = source.flatten(2)[torch.arange(n, device=source.device), :, at]  # (N, c)
        return self._local(vec, target, critic)


def _both(a, b):
    """The mean of two directions' (bound, penalty) pairs."""
    return 0.5 * (a[0] + b[0]), (None if a[1] is None else 0.5 * (a[1] + b[1]))


def _mean(terms):
    """The mean of (bound, penalty) pairs."""
    bound = torch.stack([t[0] for t in terms]).mean()
    penalty = None if terms[0][1] is None else torch.stack([t[1] for t in terms]).mean()
    return bound, penalty
