"""Every path of the DIM objective against a seeded naive loop: the global and the local term, one
negative (a derangement) and all pairs, each estimator (JSD, InfoNCE, DV), the prior and the weighted
sum, and the two-view pairing (which view's code meets which view's map).

The naive side draws the same random numbers in the same order as the objective documents (z's noise,
then one derangement per term: global before local, first view before second) and scores every pair
with one critic call, in plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from infomax.encoders import EncoderOutput
from infomax.estimators import derangement
from infomax.objective import DIMObjective, reparameterize
from infomax.prior import gaussian_kl

N, Z, C, H = 6, 8, 5, 2  # 6 images, 8-dim codes, 5-channel 2x2 local maps (4 positions)


def _output(seed: int) -> EncoderOutput:
    g = torch.Generator().manual_seed(seed)
    return EncoderOutput(
        torch.randn(N, C, H, H, generator=g), torch.randn(N, Z, generator=g), torch.randn(N, Z, generator=g) * 0.1
    )


def _positions(local: torch.Tensor) -> torch.Tensor:
    return local.flatten(2).transpose(1, 2)  # (N, P, c)


def naive_bound(estimator: str, pairs: list[tuple[float, list[float]]]) -> float:
    """The bound from (positive score, its negatives' scores) pairs, straight from DIM's equations:
    JSD  E_P[log sigmoid T] + E_Q[log(1 - sigmoid T)];
    InfoNCE  E[T+ - log(exp T+ + sum exp T-)] + log(K + 1);
    DV  E_P[T] - log E_Q[exp T] with every negative pooled."""
    pos = [p for p, _ in pairs]
    negs = [n for _, ns in pairs for n in ns]
    if estimator == "jsd":
        log_sig = lambda t: -math.log1p(math.exp(-t))  # noqa: E731
        return sum(map(log_sig, pos)) / len(pos) + sum(log_sig(-t) for t in negs) / len(negs)
    if estimator == "infonce":
        return sum(p - math.log(math.exp(p) + sum(math.exp(t) for t in ns)) + math.log(len(ns) + 1) for p, ns in pairs) / len(
            pairs
        )
    assert estimator == "dv"
    return sum(pos) / len(pos) - math.log(sum(math.exp(t) for t in negs) / len(negs))


def naive_term(critic, estimator: str, z: torch.Tensor, targets: torch.Tensor, perm: list[int] | None) -> float:
    """``targets`` (N, P, d): P vectors per image (P = 1: the global term's codes). The positive of
    (i, q) is T(z_i, targets[i, q]); its negatives are T(z_i, targets[perm[i], q]) (one negative) or
    T(z_i, targets[j, q']) for every j != i and every q' (``perm=None``: all pairs)."""
    n, p = targets.shape[:2]
    if perm is not None:
        assert all(perm[i] != i for i in range(n)), "a negative must come from another image"
    score = lambda i, j, q: float(critic(z[i], targets[j, q]))  # noqa: E731
    pairs = []
    with torch.no_grad():
        for i in range(n):
            for q in range(p):
                if perm is not None:
                    negs = [score(i, perm[i], q)]
                else:
                    negs = [score(i, j, r) for j in range(n) if j != i for r in range(p)]
                pairs.append((score(i, i, q), negs))
    return naive_bound(estimator, pairs)


def _objective(estimator: str, negatives: str, critic: str, alpha=1.0, beta=1.0, gamma=0.0) -> DIMObjective:
    torch.manual_seed(11)  # the critics' weights
    return DIMObjective(
        Z,
        C,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        global_estimator=estimator,
        local_estimator=estimator,
        negatives=negatives,
        critic=critic,
        critic_hidden=16,
    )


def _perm(negatives: str) -> list[int] | None:
    return derangement(N).tolist() if negatives == "one" else None


ESTIMATORS = ["jsd", "infonce", "dv"]


@pytest.mark.parametrize("negatives", ["one", "all"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("critic", ["concat", "dot", "cosine"])
def test_local_term_matches_a_naive_loop(estimator, negatives, critic):
    out = _output(1)
    obj = _objective(estimator, negatives, critic, alpha=0.0, beta=1.0)
    torch.manual_seed(5)
    got = obj(out)
    torch.manual_seed(5)
    z = reparameterize(out.mu, out.logvar)
    want = naive_term(obj.local_critic, estimator, z, _positions(out.local), _perm(negatives))
    assert got.local_mi.item() == pytest.approx(want, abs=1e-5)
    assert got.global_mi.item() == 0.0
    assert got.loss.item() == pytest.approx(-want, abs=1e-5)


@pytest.mark.parametrize("negatives", ["one", "all"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_global_term_matches_a_naive_loop(estimator, negatives):
    out = _output(2)
    obj = _objective(estimator, negatives, "concat", alpha=1.0, beta=0.0)
    torch.manual_seed(6)
    got = obj(out)
    torch.manual_seed(6)
    z = reparameterize(out.mu, out.logvar)
    want = naive_term(obj.global_critic, estimator, z, z[:, None], _perm(negatives))
    assert got.global_mi.item() == pytest.approx(want, abs=1e-5)
    assert got.local_mi.item() == 0.0


@pytest.mark.parametrize("negatives", ["one", "all"])
def test_weighted_sum_of_both_terms_and_the_prior(negatives):
    """loss = -alpha * global - beta * local + gamma * KL(q(z|x) || N(0, I)) (the KL per code
    dimension, averaged over the batch); the global term's derangement is drawn before the local's."""
    out = _output(3)
    obj = _objective("jsd", negatives, "concat", alpha=0.7, beta=1.3, gamma=0.2)
    torch.manual_seed(7)
    got = obj(out)
    torch.manual_seed(7)
    z = reparameterize(out.mu, out.logvar)
    g = naive_term(obj.global_critic, "jsd", z, z[:, None], _perm(negatives))
    lo = naive_term(obj.local_critic, "jsd", z, _positions(out.local), _perm(negatives))
    kl = sum(0.5 * float((m**2 + lv.exp() - 1 - lv).sum()) for m, lv in zip(out.mu, out.logvar)) / (N * Z)
    assert gaussian_kl(out.mu, out.logvar).item() == pytest.approx(kl, abs=1e-5)
    assert (got.global_mi.item(), got.local_mi.item(), got.prior.item()) == pytest.approx((g, lo, kl), abs=1e-5)
    assert got.loss.item() == pytest.approx(-0.7 * g - 1.3 * lo + 0.2 * kl, abs=1e-5)


@pytest.mark.parametrize("negatives", ["one", "all"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_two_views_pair_each_code_with_the_other_views_code_and_map(estimator, negatives):
    """Global: T(z1, z2) and T(z2, z1) averaged; local: z1 against the second view's map and z2
    against the first's, averaged; the prior averaged over the views. Random numbers: z1's noise,
    z2's, then a derangement for each global half and each local half, in that order."""
    first, second = _output(4), _output(5)
    obj = _objective(estimator, negatives, "concat", alpha=0.5, beta=1.5, gamma=0.1)
    torch.manual_seed(8)
    got = obj(first, second)
    torch.manual_seed(8)
    z1 = reparameterize(first.mu, first.logvar)
    z2 = reparameterize(second.mu, second.logvar)
    g = 0.5 * (
        naive_term(obj.global_critic, estimator, z1, z2[:, None], _perm(negatives))
        + naive_term(obj.global_critic, estimator, z2, z1[:, None], _perm(negatives))
    )
    lo = 0.5 * (
        naive_term(obj.local_critic, estimator, z1, _positions(second.local), _perm(negatives))
        + naive_term(obj.local_critic, estimator, z2, _positions(first.local), _perm(negatives))
    )
    prior = 0.5 * (gaussian_kl(first.mu, first.logvar) + gaussian_kl(second.mu, second.logvar)).item()
    assert got.global_mi.item() == pytest.approx(g, abs=1e-5)
    assert got.local_mi.item() == pytest.approx(lo, abs=1e-5)
    assert got.prior.item() == pytest.approx(prior, abs=1e-6)
    assert got.loss.item() == pytest.approx(-0.5 * g - 1.5 * lo + 0.1 * prior, abs=1e-5)


def test_the_naive_loop_tells_the_pairings_apart():
    """The references above are not blind: the wrong pairing (a view's code with its own map, or an
    image with itself as its negative) gives another number on these inputs."""
    first, second = _output(4), _output(5)
    obj = _objective("jsd", "one", "concat")
    z1 = reparameterize(first.mu, first.logvar)
    right = naive_term(obj.local_critic, "jsd", z1, _positions(second.local), [1, 2, 3, 4, 5, 0])
    own_map = naive_term(obj.local_critic, "jsd", z1, _positions(first.local), [1, 2, 3, 4, 5, 0])
    assert abs(right - own_map) > 1e-3
    with pytest.raises(AssertionError, match="another image"):
        naive_term(obj.local_critic, "jsd", z1, _positions(second.local), list(range(N)))
