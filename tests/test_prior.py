"""The prior terms against closed forms and torch.distributions."""

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from infomax.prior import AdversarialPrior, gaussian_kl


def general_gaussian_kl(mu0, cov0, mu1, cov1) -> torch.Tensor:
    """KL(N(mu0, cov0) || N(mu1, cov1)) for full covariances, the textbook closed form:
    1/2 [tr(cov1^-1 cov0) + (mu1 - mu0)^T cov1^-1 (mu1 - mu0) - k + ln det cov1 - ln det cov0]."""
    k = mu0.shape[-1]
    inv1 = torch.linalg.inv(cov1)
    d = mu1 - mu0
    return 0.5 * (torch.trace(inv1 @ cov0) + d @ inv1 @ d - k + torch.logdet(cov1) - torch.logdet(cov0))


def test_gaussian_kl_matches_the_general_closed_form():
    torch.manual_seed(0)
    b, d = 6, 5
    mu = torch.randn(b, d, dtype=torch.float64) * 2
    logvar = torch.randn(b, d, dtype=torch.float64)
    per_image = torch.stack(
        [
            general_gaussian_kl(
                mu[i], torch.diag(logvar[i].exp()), torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
            )
            for i in range(b)
        ]
    )
    # gaussian_kl averages over the batch and the dimensions.
    assert gaussian_kl(mu, logvar).item() == pytest.approx(per_image.mean().item() / d, rel=1e-10)


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mu, logvar = torch.randn(32, 16), torch.randn(32, 16)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean()
    mvn = (
        kl_divergence(
            MultivariateNormal(mu, torch.diag_embed(logvar.exp())),
            MultivariateNormal(torch.zeros(16), torch.eye(16)),
        ).mean()
        / 16
    )
    assert gaussian_kl(mu, logvar).item() == pytest.approx(ref.item(), rel=1e-5)
    assert gaussian_kl(mu, logvar).item() == pytest.approx(mvn.item(), rel=1e-4)


def test_gaussian_kl_is_zero_only_at_the_prior():
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    assert gaussian_kl(torch.full((3, 4), 0.1), torch.zeros(3, 4)).item() > 0
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 5))


def test_adversarial_prior_gradients_go_each_to_their_side():
    """The codes get the encoder's non-saturating gradient d/dz sp(-D(z)); the discriminator gets
    the gradient of its own classification loss only."""
    torch.manual_seed(0)
    prior = AdversarialPrior(8, hidden=(16,))
    z = torch.randn(64, 8, requires_grad=True)
    torch.manual_seed(1)
    prior(z).backward()
    got = [p.grad.clone() for p in prior.parameters()]
    z_ref = z.detach().clone().requires_grad_(True)
    torch.nn.functional.softplus(-prior.net(z_ref).squeeze(-1)).mean().backward()
    assert torch.allclose(z.grad, z_ref.grad, atol=1e-7)

    prior.zero_grad()
    torch.manual_seed(1)
    real = prior.net(torch.randn(64, 8)).squeeze(-1)
    fake = prior.net(z.detach()).squeeze(-1)
    (torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()).backward()
    for g, p in zip(got, prior.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_adversarial_prior_pulls_codes_towards_the_prior():
    """Train codes (free parameters, far from N(0, I)) with the reversed gradient: their mean moves
    towards 0 while the discriminator learns."""
    torch.manual_seed(0)
    prior = AdversarialPrior(2, hidden=(32, 32))
    z = torch.nn.Parameter(torch.randn(256, 2) + 4.0)
    opt = torch.optim.Adam([*prior.parameters(), z], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        prior(z).backward()
        opt.step()
    assert z.detach().mean().abs().item() < 1.5


def test_bad_z_dim():
    with pytest.raises(ValueError, match="z_dim=0"):
        AdversarialPrior(0)
