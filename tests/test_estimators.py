"""The MI bounds against closed forms on correlated Gaussians, where
I(X; Y) = -d/2 log(1 - rho^2) and the optimal critic is the log density ratio."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from infomax.estimators import (
    derangement,
    dv_bound,
    get_estimator,
    infonce_bound,
    jsd_bound,
    off_diagonal,
)


def true_mi(rho: float, d: int) -> float:
    return -d / 2 * math.log(1 - rho**2)


def optimal_critic(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """log p(x, y) / (p(x) p(y)) for standard normals with per-dimension correlation rho."""
    r2 = rho**2
    per_dim = -0.5 * math.log(1 - r2) - (r2 * (x**2 + y**2) - 2 * rho * x * y) / (2 * (1 - r2))
    return per_dim.sum(-1)


def sample(n: int, d: int, rho: float, gen: torch.Generator):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, y


def scores_at(critic, x, y, k: int, gen):
    """Positive scores (n,) and k negatives per positive (n, k): y drawn from other rows."""
    n = x.shape[0]
    pos = critic(x, y)
    shifts = torch.randint(1, n, (k,), generator=gen)
    neg = torch.stack([critic(x, y.roll(int(s), 0)) for s in shifts], dim=-1)
    return pos, neg


@pytest.mark.parametrize("rho,d", [(0.5, 2), (0.8, 1), (0.9, 3)])
def test_dv_is_tight_at_the_optimal_critic(rho, d):
    gen = torch.Generator().manual_seed(0)
    x, y = sample(40_000, d, rho, gen)
    pos, neg = scores_at(lambda a, b: optimal_critic(a, b, rho), x, y, 20, gen)
    assert dv_bound(pos, neg).item() == pytest.approx(true_mi(rho, d), abs=0.06)


@pytest.mark.parametrize("rho,d", [(0.5, 2), (0.8, 1)])
def test_infonce_approaches_mi_at_optimal_critic_with_many_negatives(rho, d):
    gen = torch.Generator().manual_seed(1)
    x, y = sample(8_000, d, rho, gen)
    pos, neg = scores_at(lambda a, b: optimal_critic(a, b, rho), x, y, 255, gen)
    est = infonce_bound(pos, neg).item()
    # InfoNCE is a lower bound: below the truth, and close to it when MI << log(K + 1).
    assert est <= true_mi(rho, d) + 0.03
    assert est == pytest.approx(true_mi(rho, d), abs=0.08)


def test_infonce_is_capped_at_log_k_plus_one():
    gen = torch.Generator().manual_seed(2)
    rho, d, k = 0.999, 10, 15  # MI ~ 31 nats >> log 16
    x, y = sample(2_000, d, rho, gen)
    pos, neg = scores_at(lambda a, b: optimal_critic(a, b, rho), x, y, k, gen)
    est = infonce_bound(pos, neg).item()
    assert est <= math.log(k + 1) + 1e-9
    assert est > math.log(k + 1) - 0.05
    assert true_mi(rho, d) > 10 * est


def test_jsd_equals_its_closed_form_at_optimal_critic_and_is_maximal_there():
    gen = torch.Generator().manual_seed(3)
    rho, d = 0.7, 2
    x, y = sample(50_000, d, rho, gen)
    y_neg = y.roll(1, 0)  # samples of p(x) p(y)
    t_pos, t_neg = optimal_critic(x, y, rho), optimal_critic(x, y_neg, rho)
    at_opt = jsd_bound(t_pos, t_neg.unsqueeze(-1)).item()
    # Naive reference from the densities, in numpy: with r = p / q,
    # JSD(P || Q) = 1/2 E_P[log 2r / (1 + r)] + 1/2 E_Q[log 2 / (1 + r)], and the bound is 2 JSD - log 4.
    r_p, r_q = np.exp(t_pos.numpy()), np.exp(t_neg.numpy())
    jsd = 0.5 * np.mean(np.log(2 * r_p / (1 + r_p))) + 0.5 * np.mean(np.log(2 / (1 + r_q)))
    assert at_opt == pytest.approx(2 * jsd - math.log(4), abs=1e-9)
    assert 0 < jsd < math.log(2)
    # Any other critic, e.g. a rescaled or shifted log ratio, scores lower.
    for worse in (lambda t: 0.5 * t, lambda t: 2.0 * t, lambda t: t + 1.0, lambda t: t - 1.0):
        assert jsd_bound(worse(t_pos), worse(t_neg).unsqueeze(-1)).item() < at_opt


def test_jsd_is_numerically_stable_for_huge_scores():
    pos = torch.tensor([1e4, -1e4, 0.0])
    neg = torch.tensor([[-1e4], [1e4], [0.0]])
    v = jsd_bound(pos, neg)
    assert torch.isfinite(v)
    expected = -(0 + 1e4 + math.log(2)) / 3 - (0 + 1e4 + math.log(2)) / 3
    assert v.item() == pytest.approx(expected, rel=1e-6)


class Critic(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, y):
        return self.net(torch.cat([x, y], -1)).squeeze(-1)


@pytest.mark.parametrize("name", ["jsd", "infonce", "dv"])
def test_a_trained_critic_approaches_the_true_mi(name):
    """Train a small critic with each bound; the trained critic's DV value (and, for InfoNCE, its
    own bound) lands near the true MI. The JSD-trained critic estimates the log density ratio."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    rho, d, n = 0.8, 2, 128
    critic = Critic(d)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    bound = get_estimator(name)
    # 200 steps: the estimates land within 0.06 of the true 1.022 nats (jsd 0.991, infonce 0.967,
    # dv 1.002; 400 steps: 1.034 / 0.990 / 1.034) at half the time; the tolerance is 0.25.
    for _ in range(200):
        x, y = sample(n, d, rho, gen)
        x, y = x.float(), y.float()
        pairs = critic(x.unsqueeze(1).expand(n, n, d), y.unsqueeze(0).expand(n, n, d))  # (n, n): [i, j] = T(x_i, y_j)
        loss = -bound(pairs.diagonal(), off_diagonal(pairs))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, y = sample(4_000, d, rho, gen)
        pos, neg = scores_at(critic, x.float(), y.float(), 50, gen)
        est = (infonce_bound if name == "infonce" else dv_bound)(pos, neg).item()
    assert est == pytest.approx(true_mi(rho, d), abs=0.25)


@pytest.mark.parametrize("fn", [jsd_bound, infonce_bound, dv_bound])
def test_shape_mismatch_is_refused(fn):
    with pytest.raises(ValueError, match="trailing axis"):
        fn(torch.zeros(4), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="no negative"):
        fn(torch.zeros(4), torch.zeros(4, 0))


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="'mine'"):
        get_estimator("mine")


def test_derangement_never_fixes_a_point():
    gen = torch.Generator().manual_seed(0)
    for n in list(range(2, 40)) + [64, 257]:
        for _ in range(20):
            p = derangement(n, generator=gen)
            assert sorted(p.tolist()) == list(range(n))
            assert not (p == torch.arange(n)).any()
    with pytest.raises(ValueError, match="n=1"):
        derangement(1)


def test_derangement_reaches_many_permutations():
    gen = torch.Generator().manual_seed(0)
    seen = {tuple(derangement(4, generator=gen).tolist()) for _ in range(500)}
    assert len(seen) == 9  # all derangements of 4 items: !4 = 9


def test_off_diagonal_matches_a_loop():
    s = torch.randn(5, 5, 3)
    got = off_diagonal(s)
    assert got.shape == (5, 3, 4)
    for i in range(5):
        others = [j for j in range(5) if j != i]
        assert torch.equal(got[i], s[i, others].T)
