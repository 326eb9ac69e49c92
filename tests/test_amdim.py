"""AMDIM's options of the objective (Bachman et al., NeurIPS 2019), on small tensors: the soft clip
and the score penalty against their closed forms, the dot critic's 1/sqrt(dim), and every term with
the options on against a naive reference (Python loops over images and positions, each score one
critic call, InfoNCE by hand with a logsumexp): the penalty on raw scores, the clip before the bound,
the global code against maps at two scales, local-to-local across the views, both directions.

The naive side draws the random numbers in the order the objective documents: z's noise (first
view, second view), then per term (global, local, extra maps, local-to-local) and per direction
(first view's code/map first) a derangement where there is one negative, the local-to-local term
drawing its source positions (torch.randint) before its derangement."""

from __future__ import annotations

import math

import pytest
import torch

from infomax.discriminators import DotCritic
from infomax.encoders import EncoderOutput, build_encoder, check_maps
from infomax.estimators import derangement
from infomax.module import DeepInfoMax
from infomax.objective import DIMObjective, reparameterize
from infomax.prior import gaussian_kl
from infomax.scores import score_penalty, soft_clip

N, Z, C, H = 5, 8, 6, 2  # 5 images, 8-dim codes, 6-channel 2x2 maps C(x) (4 positions)
C2, H2 = 4, 3  # an extra map at another scale: 4 channels, 3x3 (9 positions)


# -- closed forms ----------------------------------------------------------------------------------


def test_soft_clip_is_zero_at_zero_with_slope_one_and_bounded_by_c():
    s = torch.tensor([0.0, 1.0, -3.0, 20.0, 1e4, -1e4], dtype=torch.float64, requires_grad=True)
    out = soft_clip(s, 20.0)
    want = [20 * math.tanh(v / 20) for v in s.tolist()]
    assert out.tolist() == pytest.approx(want, abs=1e-12)
    assert out[0].item() == 0.0
    assert out[1].item() == pytest.approx(1 - 1 / 1200, abs=1e-6)  # |s| << c passes nearly unchanged
    assert out[3].item() == pytest.approx(20 * math.tanh(1.0))
    assert (out.abs() <= 20).all() and out[4].item() == pytest.approx(20.0) and out[5].item() == pytest.approx(-20.0)
    (grad,) = torch.autograd.grad(out.sum(), s)
    assert grad[0].item() == 1.0  # slope 1 at 0
    assert grad[3].item() == pytest.approx(1 - math.tanh(1.0) ** 2)
    with pytest.raises(ValueError, match="score_clip=0"):
        soft_clip(s, 0)


def test_score_penalty_is_the_mean_square_of_all_scores_pooled():
    assert score_penalty(torch.tensor([1.0, -2.0, 3.0]), torch.tensor([[4.0]])).item() == pytest.approx(30 / 4)
    assert score_penalty(torch.zeros(3, 3)).item() == 0.0
    with pytest.raises(ValueError):
        score_penalty()


def test_dot_critic_scores_are_divided_by_sqrt_of_the_embedding_dim():
    """AMDIM's 1/sqrt(dim): the dot critic's score is <f(x), g(y)> / sqrt(hidden), aligned and all pairs."""
    torch.manual_seed(0)
    critic = DotCritic(3, 5, hidden=16)
    x, y = torch.randn(4, 3), torch.randn(2, 7, 5)
    with torch.no_grad():
        f, g = critic.f(x), critic.g(y)
        by_hand = torch.tensor([[[float(f[i] @ g[j, q]) / 4.0 for q in range(7)] for j in range(2)] for i in range(4)])
        assert torch.allclose(critic.pairs(x, y), by_hand, atol=1e-5)
        assert critic(x[1], y[0, 3]).item() == pytest.approx(by_hand[1, 0, 3].item(), abs=1e-5)


# -- the naive reference ---------------------------------------------------------------------------


def naive_infonce(pairs: list[tuple[float, list[float]]]) -> float:
    """E[T+ - log(exp T+ + sum exp T-)] + log(K + 1), the logsumexp written out."""
    total = 0.0
    for pos, negs in pairs:
        scores = [pos, *negs]
        m = max(scores)
        lse = m + math.log(sum(math.exp(s - m) for s in scores))
        total += pos - lse + math.log(len(scores))
    return total / len(pairs)


def naive_jsd(pairs: list[tuple[float, list[float]]]) -> float:
    log_sig = lambda t: -math.log1p(math.exp(-t))  # noqa: E731
    negs = [t for _, ns in pairs for t in ns]
    return sum(log_sig(p) for p, _ in pairs) / len(pairs) + sum(log_sig(-t) for t in negs) / len(negs)


NAIVE = {"infonce": naive_infonce, "jsd": naive_jsd}


def naive_term(critic, estimator, sources, targets, perm, clip):
    """``sources``: one vector per image; ``targets`` (N, P, d). Positive of (i, q): T(src_i, tgt_i,q);
    negatives T(src_i, tgt_perm[i],q) (one) or T(src_i, tgt_j,q') for every j != i and q' (perm None).
    Returns (bound on clipped scores, mean square of the raw scores, each score counted once)."""
    n, p = targets.shape[:2]
    raw: dict[tuple[int, int, int], float] = {}

    def score(i, j, q):
        if (i, j, q) not in raw:
            with torch.no_grad():
                raw[i, j, q] = float(critic(sources[i], targets[j, q]))
        s = raw[i, j, q]
        return clip * math.tanh(s / clip) if clip else s

    pairs = []
    for i in range(n):
        for q in range(p):
            if perm is not None:
                assert perm[i] != i
                negs = [score(i, perm[i], q)]
            else:
                negs = [score(i, j, r) for j in range(n) if j != i for r in range(p)]
            pairs.append((score(i, i, q), negs))
    return NAIVE[estimator](pairs), sum(v * v for v in raw.values()) / len(raw)


def _positions(m: torch.Tensor) -> torch.Tensor:
    return m.flatten(2).transpose(1, 2)  # (N, P, c)


def _output(seed: int, extra: bool) -> EncoderOutput:
    g = torch.Generator().manual_seed(seed)
    maps = (torch.randn(N, C2, H2, H2, generator=g) * 3,) if extra else ()
    return EncoderOutput(
        torch.randn(N, C, H, H, generator=g) * 3, torch.randn(N, Z, generator=g) * 3, torch.randn(N, Z, generator=g) * 0.1, maps
    )


def _objective(**kw) -> DIMObjective:
    torch.manual_seed(11)
    obj = DIMObjective(Z, C, critic="dot", critic_hidden=16, **kw)
    with torch.no_grad():  # weights x2: scores of a few units, which a clip at 2 bends
        for p in obj.parameters():
            p.mul_(2.0)
    return obj


def _perm(negatives):
    return derangement(N).tolist() if negatives == "one" else None


@pytest.mark.parametrize("negatives", ["one", "all"])
@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
@pytest.mark.parametrize("clip", [0.0, 2.0])
def test_one_view_penalty_and_clip_against_a_naive_loop(estimator, negatives, clip):
    """loss = -alpha G - beta L + gamma KL + lambda (alpha mean(s_G^2) + beta mean(s_L^2)), the
    bounds on clipped scores, the squares of the raw ones."""
    out = _output(1, extra=False)
    lam = 0.04
    obj = _objective(
        alpha=0.7,
        beta=1.3,
        gamma=0.2,
        global_estimator=estimator,
        local_estimator=estimator,
        negatives=negatives,
        score_penalty=lam,
        score_clip=clip,
    )
    torch.manual_seed(5)
    got = obj(out)
    torch.manual_seed(5)
    z = reparameterize(out.mu, out.logvar)
    g, gp = naive_term(obj.global_critic, estimator, z, z[:, None], _perm(negatives), clip)
    lo, lp = naive_term(obj.local_critic, estimator, z, _positions(out.local), _perm(negatives), clip)
    kl = gaussian_kl(out.mu, out.logvar).item()
    assert gp > 1.0 and lp > 1.0  # the scores are large enough for the clip to matter
    assert (got.global_mi.item(), got.local_mi.item()) == pytest.approx((g, lo), abs=1e-5)
    assert got.score_penalty.item() == pytest.approx(lam * (0.7 * gp + 1.3 * lp), rel=1e-5)
    assert got.loss.item() == pytest.approx(-0.7 * g - 1.3 * lo + 0.2 * kl + lam * (0.7 * gp + 1.3 * lp), abs=1e-4)
    assert got.local_local_mi is None


@pytest.mark.parametrize("negatives", ["one", "all"])
def test_two_views_two_scales_and_local_to_local_against_a_naive_loop(negatives):
    """Every AMDIM option at once, InfoNCE: z of each view against the other view's C(x) and its
    extra map (the local term: the mean over the two scales, of each direction's mean), the global
    codes across the views, and one random position of each view's C(x) against every position of
    the other view's; penalty and clip on every term."""
    first, second = _output(2, extra=True), _output(3, extra=True)
    lam, clip = 0.04, 2.0
    obj = _objective(
        alpha=0.5,
        beta=1.5,
        gamma=0.1,
        delta=0.8,
        global_estimator="infonce",
        local_estimator="infonce",
        negatives=negatives,
        extra_channels=[C2],
        score_penalty=lam,
        score_clip=clip,
    )
    torch.manual_seed(8)
    got = obj(first, second)
    torch.manual_seed(8)
    z1 = reparameterize(first.mu, first.logvar)
    z2 = reparameterize(second.mu, second.logvar)

    def term(critic, src, tgt):
        return naive_term(critic, "infonce", src, tgt, _perm(negatives), clip)

    def both(a, b):
        return 0.5 * (a[0] + b[0]), 0.5 * (a[1] + b[1])

    g = both(term(obj.global_critic, z1, z2[:, None]), term(obj.global_critic, z2, z1[:, None]))
    lo_c = both(term(obj.local_critic, z1, _positions(second.local)), term(obj.local_critic, z2, _positions(first.local)))
    lo_e = both(
        term(obj.extra_critics[0], z1, _positions(second.maps[0])), term(obj.extra_critics[0], z2, _positions(first.maps[0]))
    )
    lo = (0.5 * (lo_c[0] + lo_e[0]), 0.5 * (lo_c[1] + lo_e[1]))

    def local_local(src_map, tgt_map):
        at = torch.randint(H * H, (N,)).tolist()  # one source position per image, drawn first
        sources = [src_map[i, :, at[i] // H, at[i] % H] for i in range(N)]
        return term(obj.local_local_critic, sources, _positions(tgt_map))

    ll_1 = local_local(first.local, second.local)
    ll = both(ll_1, local_local(second.local, first.local))
    prior = 0.5 * (gaussian_kl(first.mu, first.logvar) + gaussian_kl(second.mu, second.logvar)).item()
    penalty = lam * (0.5 * g[1] + 1.5 * lo[1] + 0.8 * ll[1])
    assert got.global_mi.item() == pytest.approx(g[0], abs=1e-5)
    assert got.local_mi.item() == pytest.approx(lo[0], abs=1e-5)
    assert got.local_local_mi.item() == pytest.approx(ll[0], abs=1e-5)
    assert got.score_penalty.item() == pytest.approx(penalty, rel=1e-5)
    assert got.loss.item() == pytest.approx(-0.5 * g[0] - 1.5 * lo[0] + 0.1 * prior - 0.8 * ll[0] + penalty, abs=1e-4)


def test_the_naive_loop_tells_the_variants_apart():
    """Not blind: on these inputs the penalty of clipped scores, one pooled InfoNCE over both
    scales, and the local-to-local source taken from the target's own view each give other numbers."""
    first, second = _output(2, extra=True), _output(3, extra=True)
    obj = _objective(alpha=0.5, beta=1.5, delta=0.8, local_estimator="infonce", negatives="all", extra_channels=[C2])
    z1 = reparameterize(first.mu, first.logvar)
    raw = naive_term(obj.local_critic, "infonce", z1, _positions(second.local), None, 0.0)
    clipped = naive_term(obj.local_critic, "infonce", z1, _positions(second.local), None, 2.0)
    assert abs(raw[0] - clipped[0]) > 1e-3
    src = [second.local[i, :, 0, 0] for i in range(N)]
    across = naive_term(obj.local_local_critic, "infonce", src, _positions(first.local), None, 0.0)
    same_view = naive_term(obj.local_local_critic, "infonce", src, _positions(second.local), None, 0.0)
    assert abs(across[0] - same_view[0]) > 1e-3


def test_only_the_local_to_local_term():
    """alpha = beta = 0, delta > 0 is a valid objective; one view is refused (nothing to compare)."""
    first, second = _output(4, extra=False), _output(5, extra=False)
    obj = _objective(alpha=0.0, beta=0.0, gamma=0.0, delta=1.0, local_estimator="infonce", negatives="all")
    torch.manual_seed(3)
    got = obj(first, second)
    assert got.global_mi.item() == 0.0 and got.local_mi.item() == 0.0
    assert got.loss.item() == pytest.approx(-got.local_local_mi.item(), abs=1e-6)
    with pytest.raises(ValueError, match="delta=1.0"):
        obj(first)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(score_penalty=-0.1), "score_penalty=-0.1"),
        (dict(score_clip=float("nan")), "score_clip=nan"),
        (dict(score_clip=float("inf")), "score_clip=inf"),
        (dict(delta=-1.0), "delta=-1.0"),
        (dict(beta=0.0, extra_channels=[4]), r"extra_channels=\[4\] with beta=0"),
    ],
)
def test_bad_amdim_settings_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DIMObjective(8, 4, **kwargs)


# -- the encoders' maps ----------------------------------------------------------------------------


def test_conv_encoder_returns_the_named_maps_and_the_same_outputs():
    torch.manual_seed(0)
    enc = build_encoder("conv", input_size=32, z_dim=8, base_width=4, global_width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = enc(x)
    named = enc(x, maps=("global1", "block2"))
    assert plain.maps == ()
    for a, b in zip(plain[:3], named[:3]):
        assert torch.equal(a, b)
    assert named.maps[0].shape == (2, 8, 4, 4) and named.maps[1].shape == (2, 8, 8, 8)  # 4x4 and 8x8
    assert torch.equal(named.maps[1], enc.local_net[:2](x))
    assert check_maps(enc, ["block2", "global1"]) == [8, 8]
    half = named.rows(slice(1, None))
    assert half.maps[1].shape[0] == 1 and torch.equal(half.mu, named.mu[1:])


def test_resnet18_gives_its_8x8_and_4x4_maps():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", input_size=32, z_dim=8).eval()
    x = torch.randn(1, 3, 32, 32)
    out = enc(x, maps=("layer4",))
    assert out.local.shape == (1, 256, 8, 8) and out.maps[0].shape == (1, 512, 4, 4)
    assert torch.equal(out.mu, enc(x).mu)
    assert check_maps(enc, ["layer4", "layer2"]) == [512, 128]


@pytest.mark.parametrize(
    "names,match",
    [(["layer9"], "'layer9' is not a map"), (["layer3"], "C\\(x\\) itself"), (["layer4", "layer4"], "twice")],
)
def test_bad_map_names_quote_the_setting(names, match):
    enc = build_encoder("resnet18", input_size=32, z_dim=8)
    with pytest.raises(ValueError, match=match):
        check_maps(enc, names)


# -- the module ------------------------------------------------------------------------------------


def test_module_trains_with_every_amdim_option():
    """Two views, the 8x8 and the 4x4 map of a conv encoder (block2 besides C(x)), local-to-local,
    penalty and clip: a few steps, finite, and the encoder gets gradients from the extra map."""
    torch.manual_seed(0)
    m = DeepInfoMax(
        z_dim=16,
        arch_kwargs={"base_width": 4, "global_width": 16},
        critic="dot",
        critic_hidden=16,
        alpha=0.5,
        beta=1.0,
        gamma=0.01,
        delta=0.5,
        global_estimator="infonce",
        local_estimator="infonce",
        negatives="all",
        views=2,
        augment="crop_flip",
        extra_local_maps=["block2"],
        score_penalty=0.04,
        score_clip=20.0,
    )
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(3):
        losses = m._losses((images,))
        opt.zero_grad()
        losses.loss.backward()
        opt.step()
        assert torch.isfinite(losses.loss) and losses.local_local_mi is not None and losses.score_penalty > 0
    assert m.objective.extra_critics[0].g[0].weight.grad.abs().sum() > 0
    assert m.objective.local_local_critic.f[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(delta=0.5), "delta=0.5"),
        (dict(extra_local_maps=["block7"]), "extra_local_maps=\\['block7'\\]"),
        (dict(lr_warmup=1.0), "lr_warmup=1.0"),
        (dict(score_clip=-1.0), "score_clip=-1.0"),
    ],
)
def test_bad_module_amdim_settings_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepInfoMax(**kwargs)


def test_a_checkpoint_without_the_options_loads_with_the_same_keys():
    """The options add no parameters when off: a default module's state dict is unchanged."""
    torch.manual_seed(0)
    default = DeepInfoMax(z_dim=8, arch_kwargs={"base_width": 4})
    hp = {
        k: v
        for k, v in default.hparams.items()
        if k not in ("extra_local_maps", "delta", "score_penalty", "score_clip", "lr_warmup")
    }
    again = DeepInfoMax(**hp)
    assert list(again.state_dict()) == list(default.state_dict())
    again.load_state_dict(default.state_dict())
