"""Why two images match (infomax.explain): the local critic saved beside the encoder, and heat maps
that are that critic's scores of a query's code against each position of a neighbour's local map."""

from __future__ import annotations

import json

import pytest
import torch

from infomax.artifact import load_encoder
from infomax.explain import CRITIC_CONFIG, CRITIC_WEIGHTS, Explainer, ExplainUnavailable, load_local_critic
from infomax.identity import artifact_id
from infomax.module import DeepInfoMax


def _module(critic: str, **kw) -> DeepInfoMax:
    torch.manual_seed(0)
    return DeepInfoMax(z_dim=16, beta=1.0, critic=critic, critic_hidden=24, arch_kwargs={"base_width": 8}, **kw).eval()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("critic", ["concat", "dot", "cosine"])
def test_heat_maps_are_the_trained_critics_scores_at_each_position(critic, tmp_path):
    module = _module(critic)
    module.export(tmp_path / "art")
    enc = load_encoder(tmp_path / "art")
    explainer = Explainer.from_artifact(enc, tmp_path / "art")
    query, neighbours = _images(1), _images(3, seed=1)
    code = explainer.codes(query)[0]
    maps = explainer.heatmaps(code, neighbours)
    assert maps.shape == (3, 4, 4)
    # Naive reference: the training module's own critic, one position at a time.
    with torch.no_grad():
        mu = module.encoder(module.normalize(query)).mu[0]
        local = module.encoder(module.normalize(neighbours)).local  # (3, c, 4, 4)
        want = torch.empty(3, 4, 4)
        for n in range(3):
            for i in range(4):
                for j in range(4):
                    want[n, i, j] = module.objective.local_critic(mu[None], local[n, :, i, j][None])[0]
    torch.testing.assert_close(code, mu)
    torch.testing.assert_close(maps, want)


def test_the_critic_files_do_not_change_the_artifacts_identity(tmp_path):
    module = _module("cosine")
    module.export(tmp_path / "with")
    off = DeepInfoMax(z_dim=16, beta=0.0, critic="cosine", critic_hidden=24, arch_kwargs={"base_width": 8})
    off.encoder.load_state_dict(module.encoder.state_dict())
    off.export(tmp_path / "without")
    a, b = (json.loads((tmp_path / d / "encoder.json").read_text()) for d in ("with", "without"))
    assert artifact_id(a) == artifact_id(b)
    assert (tmp_path / "with" / CRITIC_CONFIG).is_file() and not (tmp_path / "without" / CRITIC_CONFIG).exists()
    with pytest.raises(ExplainUnavailable, match=r"carries no local critic.*beta 0"):
        Explainer.from_artifact(load_encoder(tmp_path / "without"), tmp_path / "without")


def test_a_critic_of_other_weights_or_altered_files_is_refused(tmp_path):
    module = _module("dot")
    module.export(tmp_path / "a")
    sha = json.loads((tmp_path / "a" / "encoder.json").read_text())["weights_sha256"]
    load_local_critic(tmp_path / "a", sha)  # its own encoder: fine
    with pytest.raises(ExplainUnavailable, match="other encoder weights"):
        load_local_critic(tmp_path / "a", "0" * 64)
    blob = bytearray((tmp_path / "a" / CRITIC_WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (tmp_path / "a" / CRITIC_WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(ExplainUnavailable, match="does not match the hash"):
        load_local_critic(tmp_path / "a", sha)
    blob[-1] ^= 1
    (tmp_path / "a" / CRITIC_WEIGHTS).write_bytes(bytes(blob))  # whole again
    record = json.loads((tmp_path / "a" / CRITIC_CONFIG).read_text())
    for key, value in (("kind", "mlp"), ("hidden", 0), ("x_dim", 0)):
        (tmp_path / "a" / CRITIC_CONFIG).write_text(json.dumps({**record, key: value}))
        with pytest.raises(ExplainUnavailable, match="does not describe a critic"):
            load_local_critic(tmp_path / "a", sha)
    (tmp_path / "a" / CRITIC_CONFIG).write_text("{not json")
    with pytest.raises(ExplainUnavailable, match="not a readable critic record"):
        load_local_critic(tmp_path / "a", sha)


def test_a_checkpoints_critic_is_exported_not_the_live_modules(tmp_path):
    """export(state_dict=...) writes the critic of the checkpoint's weights, as it does the encoder."""
    module = _module("cosine")
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        for p in module.objective.local_critic.parameters():
            p.add_(1.0)  # the live module moves on after the checkpoint
    module.export(tmp_path / "art", state_dict=state)
    critic = load_local_critic(tmp_path / "art", json.loads((tmp_path / "art" / "encoder.json").read_text())["weights_sha256"])
    for name, p in critic.state_dict().items():
        torch.testing.assert_close(p, state[f"objective.local_critic.{name}"])


def test_bad_codes_are_refused_with_the_reason(tmp_path):
    _module("cosine").export(tmp_path / "art")
    explainer = Explainer.from_artifact(load_encoder(tmp_path / "art"), tmp_path / "art")
    with pytest.raises(ValueError, match="a code of 3 values; this encoder's codes have 16"):
        explainer.heatmaps(torch.zeros(3), _images(1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        explainer.heatmaps(torch.full((16,), float("nan")), _images(1))


def test_export_of_an_artifact_carries_its_critic_and_a_beta_0_export_removes_a_stale_one(tmp_path):
    import subprocess
    import sys

    from test_service import REPO

    module = _module("cosine")
    module.export(tmp_path / "a")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "infomax.cli",
            "export",
            "--artifact",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "local"),
            "--output",
            "local",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "local" / CRITIC_WEIGHTS).read_bytes() == (tmp_path / "a" / CRITIC_WEIGHTS).read_bytes()
    Explainer.from_artifact(load_encoder(tmp_path / "local"), tmp_path / "local")  # same weights: accepted
    # Other weights written over the folder, local term off: the old critic must not stay behind.
    off = DeepInfoMax(z_dim=16, beta=0.0, arch_kwargs={"base_width": 8})
    off.export(tmp_path / "a")
    assert not (tmp_path / "a" / CRITIC_CONFIG).exists() and not (tmp_path / "a" / CRITIC_WEIGHTS).exists()
