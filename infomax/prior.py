"""Prior terms that pull the code distribution towards N(0, I).

* :func:`gaussian_kl`: KL(N(mu, diag sigma^2) || N(0, I)), the reference recipe's prior term.
  Minimising -I(X; Z) + lambda KL(p(z) || N(0, I)) is rewritten as
  -(1 + lambda) I(X; Z) + lambda E_x KL(p(z|x) || N(0, I)), whose last term is this closed form.
* :class:`AdversarialPrior`: the paper's prior matching (DIM section 3.3): a discriminator tells
  samples of N(0, I) from codes, and the encoder learns to fool it. Both sides are trained by one
  optimiser in one backward pass: the discriminator's loss sees detached codes, the encoder's
  (non-saturating) loss sees the discriminator's weights detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infomax.validate import positive_int


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over batch and dimensions of -0.5 (1 + log sigma^2 - mu^2 - sigma^2).

    mu, logvar: (B, D). Returns a scalar: the per-dimension KL(N(mu, sigma^2) || N(0, 1)),
    averaged; multiply by D for the KL of the whole D-dimensional code.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()


class AdversarialPrior(nn.Module):
    """Prior matching by a discriminator D: z (B, D) codes in, a scalar out:

        E_v~N(0,I)[sp(-D(v))] + E_z[sp(D(sg(z)))]   (D's loss: tell prior samples from codes)
      + E_z[sp(-D_sg(z))]                            (the encoder's non-saturating loss: look like v)

    with sg a stop-gradient on the codes and D_sg the discriminator with detached weights, so each
    side only learns from its own term. sp is softplus (binary cross-entropy with logits).
    """

    def __init__(self, z_dim: int, hidden: tuple[int, ...] = (1000, 200)) -> None:
        super().__init__()
        positive_int("z_dim", z_dim)
        layers: list[nn.Module] = []
        d = z_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        real = self.net(torch.randn_like(z)).squeeze(-1)
        fake = self.net(z.detach()).squeeze(-1)
        frozen = {k: v.detach() for k, v in self.net.named_parameters()}
        fooled = torch.func.functional_call(self.net, frozen, (z,)).squeeze(-1)
        return F.softplus(-real).mean() + F.softplus(fake).mean() + F.softplus(-fooled).mean()
