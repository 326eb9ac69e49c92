"""Why two images match: the local critic's scores of a query's code against every position of a
neighbour's local feature map (Deep INFOMAX's local term, read at serving time).

The local term trains a critic T(z, c) to score the code z of an image against the feature vector
C(x)_p at each position p of a local map: high where what the map holds at p agrees with the code
(Hjelm et al. 2019, section 3.2). With the query's code mu(q) and a neighbour's map C(n), the scores
over positions say which parts of the neighbour agree with the query: an h x w heat map (4 x 4 for
the conv encoders at 28, 32 or 64 px; 8 x 8 for resnet18's layer3 at 32 px).

The critic is saved beside the encoder when the local term was on (beta > 0):

    ARTIFACT/critic.safetensors   the local critic's weights (safetensors: nothing is unpickled)
    ARTIFACT/critic.json          {"format_version": 1, "kind", "x_dim", "y_dim", "hidden",
                                   "temperature", "weights_sha256", "encoder_sha256"}

Two files of their own rather than keys of encoder.json: an artifact's identity (``artifact_id``),
and so every index built with it, is the same with or without them. ``encoder_sha256`` ties the
critic to the encoder weights it was trained with; a critic of other weights is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from infomax.atomic import atomic_write_bytes, atomic_write_json
from infomax.discriminators import CRITICS, build_critic
from infomax.errors import UserError

if TYPE_CHECKING:
    from infomax.artifact import InferenceEncoder

CRITIC_WEIGHTS = "critic.safetensors"
CRITIC_CONFIG = "critic.json"
CRITIC_FORMAT = 1


class ExplainUnavailable(UserError, ValueError):
    """The artifact cannot explain matches: it carries no local critic, or one that is not its own."""


def save_local_critic(
    critic: nn.Module,
    path: str | Path,
    *,
    kind: str,
    x_dim: int,
    y_dim: int,
    hidden: int,
    temperature: float,
    encoder_sha256: str,
) -> Path:
    """Writes ``critic`` (the objective's local critic: x = code of ``x_dim``, y = a local feature
    vector of ``y_dim``) into the artifact folder ``path``, weights first, each file through a
    temporary file and a rename. Returns the JSON's path."""
    from safetensors.torch import save

    if kind not in CRITICS:
        raise ValueError(f"kind={kind!r}: choose one of {sorted(CRITICS)}")
    path = Path(path)
    blob = save({k: v.detach().to("cpu").contiguous() for k, v in critic.state_dict().items()})
    atomic_write_bytes(path / CRITIC_WEIGHTS, blob)
    config = {
        "format_version": CRITIC_FORMAT,
        "kind": kind,
        "x_dim": int(x_dim),
        "y_dim": int(y_dim),
        "hidden": int(hidden),
        "temperature": float(temperature),
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "encoder_sha256": encoder_sha256,
    }
    atomic_write_json(path / CRITIC_CONFIG, config)
    return path / CRITIC_CONFIG


def has_local_critic(path: str | Path) -> bool:
    return (Path(path) / CRITIC_CONFIG).is_file()


def load_local_critic(path: str | Path, encoder_sha256: str) -> nn.Module:
    """The local critic saved in the artifact folder ``path``, in eval mode on the CPU;
    :class:`ExplainUnavailable` naming the reason when there is none, it belongs to other encoder
    weights than ``encoder_sha256``, or its files do not match each other."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    cfg_path, weights = path / CRITIC_CONFIG, path / CRITIC_WEIGHTS
    if not cfg_path.is_file():
        raise ExplainUnavailable(
            f"{path} carries no local critic ({CRITIC_CONFIG}): the encoder was trained with the local term off "
            f"(beta 0) or exported before critics were saved, so it cannot say why two images match; train "
            f"with the local term on (model.beta > 0) to get one"
        )
    try:
        config: dict[str, Any] = json.loads(cfg_path.read_text())
        kind, x_dim, y_dim = config["kind"], int(config["x_dim"]), int(config["y_dim"])
        hidden, temperature = int(config["hidden"]), float(config["temperature"])
    except (ValueError, KeyError, TypeError) as e:
        raise ExplainUnavailable(f"{cfg_path} is not a readable critic record ({e}); export the artifact again") from e
    if config.get("format_version") != CRITIC_FORMAT:
        raise ExplainUnavailable(
            f"{cfg_path} has format_version {config.get('format_version')!r}; this infomax reads {CRITIC_FORMAT}"
        )
    if config.get("encoder_sha256") != encoder_sha256:
        raise ExplainUnavailable(
            f"{cfg_path} belongs to other encoder weights ({str(config.get('encoder_sha256'))[:12]}, "
            f"this artifact's are {encoder_sha256[:12]}): a critic only explains the encoder "
            f"it was trained with"
        )
    if not weights.is_file():
        raise ExplainUnavailable(f"{weights} is missing: the critic is incomplete; export the artifact again")
    blob = weights.read_bytes()
    if hashlib.sha256(blob).hexdigest() != config.get("weights_sha256"):
        raise ExplainUnavailable(f"{weights} does not match the hash in {cfg_path}; export the artifact again")
    try:
        critic = build_critic(kind, x_dim, y_dim, hidden, temperature)
    except ValueError as e:  # a hand-edited record: unknown kind, sizes < 1, temperature <= 0
        raise ExplainUnavailable(f"{cfg_path} does not describe a critic this infomax builds ({e})") from e
    try:
        critic.load_state_dict(load(blob))
    except (SafetensorError, RuntimeError) as e:
        raise ExplainUnavailable(f"{weights} does not fit a {kind} critic of {x_dim} x {y_dim}: {e}") from e
    return critic.eval()


class Explainer(nn.Module):
    """An artifact's encoder with its local critic: codes of queries and heat maps of neighbours.

    ``encoder``: an :class:`infomax.artifact.InferenceEncoder` (images in; its ``embed_features``
    gives mu and the local map whatever the artifact serves). The heat map of a neighbour n for a
    query code z is ``T(z, C(n)_p)`` at each position p: raw critic scores, (h, w), higher where the
    neighbour agrees with the query (a cosine critic's are cosines over its temperature)."""

    encoder: InferenceEncoder
    critic: nn.Module

    def __init__(self, encoder: InferenceEncoder, critic: nn.Module) -> None:
        super().__init__()
        self.encoder, self.critic = encoder, critic
        self.z_dim = z_dim = int(encoder.config["arch_kwargs"]["z_dim"])
        x_dim, y_dim = _critic_dims(critic)
        local_c = int(getattr(encoder.encoder, "local_channels"))  # noqa: B009 (an nn.Module attribute)
        self.local_size = int(getattr(encoder.encoder, "local_size"))  # noqa: B009 (square maps: h = w)
        if (x_dim, y_dim) != (z_dim, local_c):
            raise ExplainUnavailable(
                f"the critic scores codes of {x_dim} against features of {y_dim}; this "
                f"encoder gives codes of {z_dim} and local features of {local_c}"
            )

    @classmethod
    def from_artifact(cls, encoder: InferenceEncoder, path: str | Path) -> Explainer:
        """``encoder``: the artifact at ``path`` loaded (``load_encoder(path)``)."""
        return cls(encoder, load_local_critic(path, encoder.config["weights_sha256"]).to(encoder.device))

    @torch.inference_mode()
    def codes(self, images) -> torch.Tensor:
        """Any image input ``InferenceEncoder.embed`` takes -> mu (B, z_dim), float32 on the CPU."""
        return self.encoder.embed(images, features="mu")

    @torch.inference_mode()
    def heatmaps(self, code: torch.Tensor, images, batch_size: int = 256) -> torch.Tensor:
        """``code`` (z_dim,) against every position of each image's local map: (N, h, w) float32."""
        code = torch.as_tensor(code, dtype=torch.float32).flatten()
        z_dim = self.z_dim
        if code.numel() != z_dim:
            raise ValueError(f"a code of {code.numel()} values; this encoder's codes have {z_dim}")
        if not torch.isfinite(code).all():
            raise ValueError("the code holds NaN or infinite values")
        # The encoder's own pass (batched, eval mode): the local maps flattened channel-major, (N, c*h*w).
        flat = self.encoder.embed_features(images, batch_size, ("local",))["local"]
        n, h = len(flat), self.local_size
        feats = flat.view(n, -1, h * h).transpose(1, 2)  # (N, P, c): one feature vector per position
        feats = feats.to(next(self.critic.parameters()).device)
        z = code.to(feats.device).expand(n, h * h, -1)  # the query's code at every position
        return self.critic(z, feats).reshape(n, h, h).float().cpu()


def _critic_dims(critic: nn.Module) -> tuple[int, int]:
    """(x_dim, y_dim) a critic was built for, read from its first layers."""
    first = (critic.x_in, critic.y_in) if hasattr(critic, "x_in") else (critic.f[0], critic.g[0])  # type: ignore[index]
    return int(first[0].in_features), int(first[1].in_features)  # type: ignore[union-attr, arg-type]


def remove_local_critic(path: str | Path) -> None:
    """Removes an artifact folder's critic files (before writing other encoder weights there, whose
    critic they are not)."""
    for name in (CRITIC_CONFIG, CRITIC_WEIGHTS):  # the record first: weights without one are inert
        (Path(path) / name).unlink(missing_ok=True)


def carry_local_critic(src: str | Path, dst: str | Path, encoder_sha256: str) -> bool:
    """Copies the local critic of the artifact ``src`` into ``dst``, an artifact of the same encoder
    weights (``infomax export --artifact``: other vectors, same network); removes a stale one from
    ``dst`` when ``src`` has none. True when a critic was carried."""
    remove_local_critic(dst)
    if not has_local_critic(src):
        return False
    load_local_critic(src, encoder_sha256)  # checks it is whole and this encoder's
    atomic_write_bytes(Path(dst) / CRITIC_WEIGHTS, (Path(src) / CRITIC_WEIGHTS).read_bytes())
    atomic_write_bytes(Path(dst) / CRITIC_CONFIG, (Path(src) / CRITIC_CONFIG).read_bytes())
    return True
