"""Encoder shapes, critics against naive loops, and the objective's all-pairs terms."""

import math

import pytest
import torch

from infomax.discriminators import ConcatCritic, CosineCritic, DotCritic, build_critic
from infomax.encoders import build_encoder
from infomax.estimators import jsd_bound
from infomax.objective import DIMObjective, reparameterize


@pytest.mark.parametrize(
    "arch,channels,size,local_shape",
    [
        ("conv", 3, 32, (256, 4, 4)),  # the reference recipe: 4x4x256 local map
        ("conv", 1, 28, (256, 4, 4)),
        ("conv", 3, 64, (512, 4, 4)),
        ("resnet18", 3, 32, (256, 8, 8)),
    ],
)
def test_encoder_shapes(arch, channels, size, local_shape):
    enc = build_encoder(arch, in_channels=channels, input_size=size, z_dim=64)
    out = enc(torch.randn(3, channels, size, size))
    assert out.local.shape == (3, *local_shape)
    assert out.mu.shape == out.logvar.shape == (3, 64)
    assert enc.local_channels == local_shape[0] and enc.local_size == local_shape[1]


@pytest.mark.parametrize("local_stage", ["layer2", "layer3"])
def test_resnet18_is_torchvisions_with_a_cifar_stem(local_stage):
    """Values, not shapes: the encoder equals a torchvision ResNet-18 given the same weights, with a
    3x3 stride-1 first conv and no max-pool; C(x) is the output of ``local_stage`` and mu / log
    sigma^2 are linear in the global average pool of layer4."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    enc = build_encoder("resnet18", in_channels=3, input_size=32, z_dim=8, local_stage=local_stage)
    ref = resnet18(weights=None)
    ref.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    ref.maxpool = torch.nn.Identity()
    with torch.no_grad():  # give every parameter and BN statistic a non-trivial value
        for t in [*enc.parameters(), *(b for b in enc.buffers() if b.dtype.is_floating_point)]:
            t.copy_(torch.rand_like(t) * 0.5 + 0.5 if t.dim() <= 1 else torch.randn_like(t) * 0.05)
    stages = [enc.local_net, enc.global_net]
    flat = [m for part in stages for m in part]  # conv1, bn1, relu, layer1, ..., layer4
    ref_modules = [ref.conv1, ref.bn1, ref.relu, ref.layer1, ref.layer2, ref.layer3, ref.layer4]
    assert len(flat) == len(ref_modules)
    for mine, theirs in zip(flat, ref_modules):
        theirs.load_state_dict(mine.state_dict())
    enc.eval(), ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        h = ref.relu(ref.bn1(ref.conv1(x)))
        maps = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(ref, name)(h)
            maps[name] = h
        pooled = maps["layer4"].mean(dim=(2, 3))
    torch.testing.assert_close(out.local, maps[local_stage])
    torch.testing.assert_close(out.mu, enc.mu(pooled))
    torch.testing.assert_close(out.logvar, enc.logvar(pooled))
    assert not torch.allclose(out.mu, out.logvar)


def test_reference_conv_layout():
    enc = build_encoder("conv")
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    acts = [m for m in enc.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert len(acts) == 5 and all(a.negative_slope == 0.2 for a in acts)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.modules()) == 3


@pytest.mark.parametrize("global_width,n_global,pooled", [(None, 2, 64), (256, 2, 256), (128, 1, 128), (None, 0, 64)])
def test_narrow_conv_layout_and_global_width(global_width, n_global, pooled):
    enc = build_encoder(
        "conv", in_channels=1, input_size=28, z_dim=32, base_width=16, n_global_blocks=n_global, global_width=global_width
    )
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64] + [pooled] * n_global
    assert enc.local_channels == 64 and enc.mu.in_features == enc.logvar.in_features == pooled
    out = enc(torch.randn(2, 1, 28, 28))
    assert out.local.shape == (2, 64, 4, 4) and out.mu.shape == (2, 32)


@pytest.mark.parametrize("pool", ["max", "avg", "flatten"])
def test_conv_pool_matches_a_naive_reference(pool):
    torch.manual_seed(0)
    enc = build_encoder("conv", in_channels=1, input_size=28, z_dim=8, base_width=4, global_width=6, pool=pool).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = enc(x)
        fmap = enc.global_net(enc.local_net(x))  # (3, 6, 4, 4)
    assert fmap.shape == (3, 6, 4, 4)
    rows = []
    for b in range(3):
        cells = [fmap[b, :, i, j] for i in range(4) for j in range(4)]
        if pool == "max":
            rows.append(torch.stack(cells).max(dim=0).values)
        elif pool == "avg":
            rows.append(sum(cells) / len(cells))
        else:  # every channel at every position, channel-major like (c, h, w)
            rows.append(torch.stack([fmap[b, c, i, j] for c in range(6) for i in range(4) for j in range(4)]))
    h = torch.stack(rows)
    assert enc.mu.in_features == enc.logvar.in_features == h.shape[1] == (96 if pool == "flatten" else 6)
    torch.testing.assert_close(out.mu, h @ enc.mu.weight.T + enc.mu.bias)
    torch.testing.assert_close(out.logvar, h @ enc.logvar.weight.T + enc.logvar.bias)


@pytest.mark.parametrize("pool", ["max", "avg", "flatten"])
def test_only_the_flatten_pool_sees_where_features_fire(pool):
    # With mirror-symmetric kernels the feature maps of a mirrored image are the mirrored maps, so a
    # pooled head gives the same code for both; the flattened head keeps the layout and tells them apart.
    torch.manual_seed(0)
    enc = build_encoder(
        "conv", in_channels=1, input_size=8, z_dim=4, base_width=4, n_blocks=2, n_global_blocks=1, pool=pool
    ).eval()
    with torch.no_grad():
        for conv in (m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        x = torch.randn(2, 1, 8, 8)
        mu, mu_mirrored = enc(x).mu, enc(x.flip(-1)).mu
    assert torch.allclose(mu, mu_mirrored, atol=1e-5) == (pool != "flatten")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch="vit"), "arch='vit'"),
        (dict(arch="conv", global_width=0), "global_width=0"),
        (dict(arch="conv", global_width=128, n_global_blocks=0), "global_width=128"),
        (dict(arch="conv", pool="mean"), "pool='mean'"),
        (dict(arch="conv", z_dim=0), "z_dim=0"),
        (dict(arch="conv", input_size=4), "input_size=4"),
        (dict(arch="conv", in_channels=0), "in_channels=0"),
        (dict(arch="resnet18", input_size=8), "input_size=8"),
        (dict(arch="resnet18", local_stage="layer4"), "local_stage='layer4'"),
    ],
)
def test_bad_encoder_settings_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        build_encoder(**kwargs)


@pytest.mark.parametrize("cls", [ConcatCritic, DotCritic, CosineCritic])
def test_critic_pairs_match_a_naive_loop(cls):
    torch.manual_seed(0)
    critic = cls(5, 7, hidden=16)
    x, y = torch.randn(4, 5), torch.randn(3, 6, 7)  # y: 3 items with 6 positions each
    got = critic.pairs(x, y)
    assert got.shape == (4, 3, 6)
    for i in range(4):
        for j in range(3):
            for p in range(6):
                assert got[i, j, p].item() == pytest.approx(critic(x[i], y[j, p]).item(), abs=1e-5)


def test_concat_critic_is_an_mlp_on_the_concatenation():
    torch.manual_seed(0)
    critic = ConcatCritic(3, 2, hidden=8, n_layers=2)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    w = torch.cat([critic.x_in.weight, critic.y_in.weight], dim=1)
    h = torch.relu(torch.cat([x, y], -1) @ w.T + critic.x_in.bias)
    ref = critic.tail[-1](h).squeeze(-1)
    assert torch.allclose(critic(x, y), ref, atol=1e-6)


def test_cosine_critic_is_the_cosine_of_the_embeddings_over_the_temperature():
    torch.manual_seed(0)
    critic = build_critic("cosine", 5, 7, hidden=16, temperature=0.2)
    x, y = torch.randn(4, 5), torch.randn(4, 7)
    fx = critic.f[2](torch.relu(critic.f[0](x)))  # the two linear layers, no normalisation
    gy = critic.g[2](torch.relu(critic.g[0](y)))
    ref = torch.nn.functional.cosine_similarity(fx, gy, dim=-1) / 0.2
    assert torch.allclose(critic(x, y), ref, atol=1e-5)
    # Bounded by 1 / temperature whatever the scale of the inputs.
    assert critic.pairs(100 * x, 100 * y).abs().max() <= 1 / 0.2 + 1e-4


def test_bad_critic():
    with pytest.raises(ValueError, match="temperature=-1"):
        build_critic("cosine", 4, 4, temperature=-1)
    with pytest.raises(ValueError, match="critic='bilinear'"):
        build_critic("bilinear", 4, 4)


def _fake_output(n=6, z_dim=8, c=5, h=2):
    torch.manual_seed(0)
    from infomax.encoders import EncoderOutput

    return EncoderOutput(torch.randn(n, c, h, h), torch.randn(n, z_dim), torch.randn(n, z_dim) * 0.1)


def test_all_pairs_local_infonce_matches_a_naive_loop():
    """negatives='all', local term: for each image i and position q, the positive is
    T(z_i, C(x_i)_q) and the negatives are every position of every other image."""
    out = _fake_output()
    obj = DIMObjective(
        8, 5, alpha=0.0, beta=1.0, gamma=0.0, local_estimator="infonce", negatives="all", critic="dot", critic_hidden=16
    )
    torch.manual_seed(5)
    got = obj(out).local_mi
    torch.manual_seed(5)
    z = reparameterize(out.mu, out.logvar)
    feats = out.local.flatten(2).transpose(1, 2)  # (N, P, c)
    n, p = feats.shape[:2]
    terms = []
    with torch.no_grad():
        for i in range(n):
            negs = [obj.local_critic(z[i], feats[j, q]) for j in range(n) if j != i for q in range(p)]
            for q in range(p):
                pos = obj.local_critic(z[i], feats[i, q])
                all_scores = torch.stack([pos, *negs])
                terms.append(pos - torch.logsumexp(all_scores, 0) + math.log(len(all_scores)))
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


def test_one_negative_global_jsd_matches_a_naive_computation():
    out = _fake_output()
    obj = DIMObjective(8, 5, alpha=1.0, beta=0.0, gamma=0.0, critic_hidden=16)
    torch.manual_seed(7)
    got = obj(out).global_mi
    torch.manual_seed(7)
    z = reparameterize(out.mu, out.logvar)
    from infomax.estimators import derangement

    perm = derangement(6)
    with torch.no_grad():
        pos = torch.stack([obj.global_critic(z[i], z[i]) for i in range(6)])
        neg = torch.stack([obj.global_critic(z[i], z[perm[i]]) for i in range(6)])
    ref = torch.log(torch.sigmoid(pos)).mean() + torch.log(1 - torch.sigmoid(neg)).mean()
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    assert jsd_bound(pos, neg[:, None]).item() == pytest.approx(ref.item(), abs=1e-5)


@pytest.mark.parametrize("negatives", ["one", "all"])
@pytest.mark.parametrize("estimator", ["jsd", "infonce", "dv"])
@pytest.mark.parametrize("prior", ["kl", "adversarial"])
def test_every_combination_trains_the_encoder(negatives, estimator, prior):
    torch.manual_seed(0)
    enc = build_encoder("conv", in_channels=1, input_size=28, z_dim=16, n_global_blocks=1, base_width=8)
    obj = DIMObjective(
        16,
        enc.local_channels,
        global_estimator=estimator,
        local_estimator=estimator,
        negatives=negatives,
        prior=prior,
        critic_hidden=16,
    )
    losses = obj(enc(torch.randn(5, 1, 28, 28)))
    assert torch.isfinite(losses.loss)
    losses.loss.backward()
    assert enc.local_net[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=-1.0), "alpha=-1.0"),
        (dict(gamma=float("nan")), "gamma=nan"),
        (dict(alpha=0.0, beta=0.0), "alpha=0"),
        (dict(negatives="two"), "negatives='two'"),
        (dict(prior="flow"), "prior='flow'"),
        (dict(global_estimator="mine"), "estimator='mine'"),
    ],
)
def test_bad_objective_settings_quote_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DIMObjective(8, 4, **kwargs)
