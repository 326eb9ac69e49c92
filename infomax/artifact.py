"""The serving artifact: a folder that rebuilds an encoder with no training code and no pickle.

    ARTIFACT/encoder.safetensors   encoder weights only (safetensors: no code is ever unpickled)
    ARTIFACT/encoder.json          how to rebuild it: {"format_version", "arch", "arch_kwargs",
                                   "dim", "input_size", "in_channels", "normalization",
                                   "weights_sha256", "output", "dataset", "metrics", "command", ...}

``output`` says which vectors the artifact serves: ``"mu"``, the code (the default; format 1),
``"pooled"``, the vector the code's heads read, or ``"local"``, the flattened local feature map C(x)
(format 2: an older infomax refuses these rather than serve codes in their place). An artifact may
also whiten what it serves (``infomax export --whiten``: ``whitening.safetensors``, its sha256 and
settings under ``whitening`` in the JSON; :mod:`infomax.whitening`): the served vectors are then
``(v - mean) @ matrix`` of the output (format 3: an older infomax refuses them rather than serve
unwhitened vectors under their name). ``dim`` is the
length of the served vectors: the code's dimension (``arch_kwargs.z_dim``), the pooled vector's, or
c*h*w of the local map; artifacts written before it had that name call it ``z_dim``, and still load.
The artifact's identity (``artifact_id``) is ``weights_sha256`` for codes
and a hash of it, the output and the whitening otherwise: an index records it and refuses an encoder whose
weights, or whose kind of vectors, differ. Both files are written through a temporary file and a
rename, weights first, so a crash leaves either the previous artifact or a JSON whose hash does not
match (refused on load).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from infomax.atomic import atomic_write_bytes, atomic_write_json
from infomax.encoders import VECTORS, build_encoder, check_vectors, pooled_dim
from infomax.errors import SettingError, UserError
from infomax.identity import artifact_id, served_dim
from infomax.transforms import Normalize
from infomax.whitening import WHITENING as WHITENING_FILE
from infomax.whitening import Whitening, remove_whitening, save_whitening, whitening_from_bytes

WEIGHTS = "encoder.safetensors"
CONFIG = "encoder.json"
FORMAT_VERSION = 3  # 2: outputs other than mu; 3: whitened vectors


def output_dim(encoder: nn.Module, output: str, z_dim: int) -> int:
    """Length of the vectors an encoder serves: ``z_dim`` for codes, the heads' input for the
    pooled vector, c*h*w for the local map."""
    if output == "mu":
        return int(z_dim)
    if output == "pooled":
        return pooled_dim(encoder)
    # Attributes every encoder of infomax.encoders has; nn.Module types them Tensor | Module.
    channels, size = cast(int, encoder.local_channels), cast(int, encoder.local_size)
    return int(channels * size**2)


class ArtifactError(UserError, ValueError):
    """The artifact folder is missing, incomplete or inconsistent; the message names the file."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No artifact folder where one was named (a FileNotFoundError as well as an ArtifactError)."""


# What save_artifact derives from the encoder and its arguments: never taken from ``extra`` (a copy
# of another artifact's config must not override them; training/export.py drops them).
DERIVED_KEYS = frozenset(
    {
        "format_version",
        "arch",
        "arch_kwargs",
        "output",
        "dim",
        "input_size",
        "in_channels",
        "normalization",
        "weights_sha256",
        "created_at",
        "whitening",
    }
)
# What older artifacts recorded under a name save_artifact no longer writes (``z_dim``: now ``dim``):
# refused as extra keys too, and dropped when another artifact's config is copied.
RENAMED_KEYS = frozenset({"z_dim"})


def save_artifact(
    encoder: nn.Module,
    path: str | Path,
    *,
    arch: str,
    arch_kwargs: dict,
    normalization: dict,
    dataset: str | None = None,
    metrics: dict | None = None,
    command: str | None = None,
    output: str = "mu",
    whitening: Whitening | None = None,
    whitening_info: dict | None = None,
    **extra: Any,
) -> Path:
    """Writes ``encoder``'s weights and the JSON that rebuilds it into the folder ``path``;
    ``output`` chooses the vectors the artifact serves (``"mu"``, ``"pooled"`` or ``"local"``);
    ``whitening`` (fitted on vectors of that output), when given, whitens them, and
    ``whitening_info`` (what it was fitted on, its settings) is recorded beside its hash."""
    from safetensors.torch import save

    check_vectors("output", output)
    clash = sorted((DERIVED_KEYS | RENAMED_KEYS) & extra.keys())
    if clash:
        raise ValueError(f"save_artifact derives {clash} itself; do not pass them as extra keys")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw_dim = output_dim(encoder, output, arch_kwargs["z_dim"])
    if whitening is not None and whitening.in_dim != raw_dim:
        raise ValueError(f"the whitening takes vectors of {whitening.in_dim} values; the encoder's {output} has {raw_dim}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    blob = save(state)
    whitened = None
    if whitening is not None:  # written first: the JSON that names it comes last
        whitened = {**(whitening_info or {}), "sha256": save_whitening(whitening, path), "input_dim": raw_dim}
    else:
        remove_whitening(path)
    config = {
        # Codes keep format 1, which every infomax reads; another output needs a reader that knows it,
        # whitened vectors one that applies the whitening.
        "format_version": 3 if whitening is not None else 1 if output == "mu" else 2,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "output": output,
        "dim": whitening.out_dim if whitening is not None else raw_dim,
        "input_size": int(arch_kwargs["input_size"]),
        "in_channels": int(arch_kwargs["in_channels"]),
        "normalization": {"mean": list(normalization["mean"]), "std": list(normalization["std"])},
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "dataset": dataset,
        "metrics": metrics or {},
        "command": command,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **({"whitening": whitened} if whitened else {}),
        **extra,
    }
    atomic_write_bytes(path / WEIGHTS, blob)
    atomic_write_json(path / CONFIG, config)
    return path


def read_config(path: str | Path, *, setting: str | None = None) -> dict:
    """Reads and checks ``encoder.json`` of an artifact folder; ``setting``: the caller's name for
    the folder (``model``), which the error of a missing folder names."""
    path = Path(path).expanduser()
    cfg_path = path / CONFIG
    if not path.is_dir():
        where = f"{setting} {path}" if setting else str(path)
        raise ArtifactNotFoundError(
            f"{where}: no artifact folder there; give the folder written by `infomax train` or "
            f"`infomax export` ({CONFIG} + {WEIGHTS})",
            setting=setting,
        )
    if not cfg_path.is_file():
        raise ArtifactError(f"{cfg_path} is missing: {path} is not an infomax artifact folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{cfg_path} is not valid JSON ({e}); re-export the artifact") from None
    missing = [k for k in ("arch", "arch_kwargs", "normalization", "weights_sha256") if k not in config]
    if not isinstance(config, dict) or missing:
        raise ArtifactError(f"{cfg_path} lacks {missing}: not an infomax artifact (or a damaged one)")
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise ArtifactError(
            f"{cfg_path} has format_version {config['format_version']}, newer than this infomax "
            f"understands ({FORMAT_VERSION}); upgrade infomax"
        )
    if config.get("output", "mu") not in VECTORS:
        raise ArtifactError(f"{cfg_path} has output {config['output']!r}; infomax serves one of {VECTORS}")
    return config


def record_eval(path: str | Path, report: dict) -> Path:
    """Stores an ``infomax eval`` report in the artifact's ``encoder.json`` (key ``eval``, one entry
    per data set), so the artifact carries the figures measured on it. The report must be of these
    very weights (its artifact id is checked); the weights are untouched, the JSON is rewritten
    through a temporary file and a rename."""
    path = Path(path)
    config = read_config(path)
    art = report.get("artifact") or {}
    if art.get("id") != artifact_id(config):
        raise ArtifactError(
            f"the eval report is of artifact {str(art.get('id'))[:12]}, not of {path} "
            f"({artifact_id(config)[:12]}); evaluate this artifact to record its figures"
        )
    summary = {
        key: {m: row.get(m) for m in ("knn_top1", "nn1_top1", "probe_top1", "p10", "dim") if m in row}
        for key, row in report["results"].items()
    }
    entry = {
        "k": report["k"],
        "temperature": report["temperature"],
        "n_train": report["n_train"],
        "n_test": report["n_test"],
        "results": summary,
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    config.setdefault("eval", {})[report["data"]] = entry
    atomic_write_json(path / CONFIG, config)
    return path / CONFIG


SERVED = "served"  # embed_features' name for what the artifact serves: its output, whitened if it whitens


class InferenceEncoder(nn.Module):
    """An encoder rebuilt from an artifact: images in, the artifact's output (mu, or the flattened
    local map; whitened when the artifact whitens) out. No Lightning, no critics.

    ``embed`` accepts a uint8 tensor (B, C, H, W) or (C, H, W), a uint8 numpy array
    (B, H, W, C), (H, W, C) or (H, W), a PIL image, or a list of PIL images; PIL images of any size
    and mode are converted and resized as the data loaders do.
    """

    def __init__(self, config: dict, encoder: nn.Module, whitening: Whitening | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.whitening = whitening
        self.normalize = Normalize(config["normalization"]["mean"], config["normalization"]["std"])
        self.output = config.get("output", "mu")
        self.dim = served_dim(config)  # length of the served vectors
        self.input_size = int(config["input_size"])
        self.in_channels = int(config["in_channels"])
        self.id = artifact_id(config)

    @property
    def z_dim(self) -> int:
        """The served length's name before ``dim`` (kept for callers that use it)."""
        return self.dim

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._serve(self.encoder(self.normalize(images)).vectors(self.output))

    def _serve(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors if self.whitening is None else self.whitening(vectors)

    def to_tensor(self, images) -> torch.Tensor:
        """Any accepted image input -> uint8 (B, C, S, S) on the CPU."""
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            if not images:
                raise ValueError("no images given")
            if all(isinstance(im, Image.Image) for im in images):
                from infomax.imageio import load_image

                return torch.stack([load_image(im, self.input_size, self.in_channels) for im in images])
            raise TypeError("a list of images must hold PIL images only")
        if isinstance(images, np.ndarray):
            arr = images
            if arr.ndim == 2:
                arr = arr[None, :, :, None]
            elif arr.ndim == 3:
                arr = arr[None]
            if arr.ndim != 4:
                raise ValueError(f"expected a (B, H, W, C) array, got shape {images.shape}")
            images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"cannot embed {type(images).__name__}: give uint8 tensors, arrays or PIL images")
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        expected = (self.in_channels, self.input_size, self.input_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} do not fit this encoder, which takes "
                f"{expected}; pass PIL images to have them resized"
            )
        return images

    @torch.inference_mode()
    def embed(self, images, batch_size: int = 256, features: str | None = None) -> torch.Tensor:
        """Returns what the artifact serves, float32 (B, dim) on the CPU, computed in batches of
        ``batch_size``; ``features``: instead the encoder's own ``"mu"``, ``"pooled"`` (what the heads
        read) or ``"local"`` (the flattened local feature map, (B, c * h * w)), never whitened,
        whatever the artifact serves."""
        features = features or SERVED
        return self.embed_features(images, batch_size, (features,))[features]

    @torch.inference_mode()
    def embed_features(self, images, batch_size: int = 256, features: Sequence[str] = ("mu",)) -> dict:
        """Several kinds of features from one pass of the encoder: ``{"mu": (B, z_dim), "pooled":
        (B, p), "local": (B, c * h * w) (the flattened local feature map C(x)), "served": (B, dim)
        (what the artifact serves: its output, whitened if it whitens)}``, float32 on the CPU, only
        the kinds asked for; the first three are the encoder's own, never whitened."""
        if not features:
            raise SettingError(f"features={features!r}: ask for at least one of {(*VECTORS, SERVED)}", setting="features")
        for f in features:
            if f != SERVED:
                check_vectors("features", f)
        x = self.to_tensor(images)
        out: dict[str, list[torch.Tensor]] = {f: [] for f in features}
        was_training = self.training
        self.eval()
        try:
            for i in range(0, len(x), batch_size):
                enc = self.encoder(self.normalize(x[i : i + batch_size].to(self.device, non_blocking=True)))
                for f in features:
                    v = self._serve(enc.vectors(self.output)) if f == SERVED else enc.vectors(f)
                    out[f].append(v.float().cpu())
        finally:
            self.train(was_training)
        return {f: torch.cat(v) for f, v in out.items()}


def load_encoder(path: str | Path, device: str | torch.device = "cpu", *, setting: str | None = None) -> InferenceEncoder:
    """Rebuilds the encoder of an artifact folder, checks its weights against the recorded hash,
    and returns it in eval mode on ``device``: the one way to open an artifact. ``setting``: the
    caller's name for the folder (``model``), which the error of a missing folder names."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path).expanduser()
    config = read_config(path, setting=setting)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing: the artifact is incomplete; re-export it")
    blob = weights.read_bytes()
    if hashlib.sha256(blob).hexdigest() != config["weights_sha256"]:
        raise ArtifactError(
            f"{weights} does not match the weights_sha256 recorded in {path / CONFIG}: the file is "
            f"damaged or belongs to another artifact; re-export it"
        )
    try:
        state = load(blob)
    except (SafetensorError, ValueError) as e:
        raise ArtifactError(f"{weights} is not a readable safetensors file ({e})") from None
    try:
        encoder = build_encoder(config["arch"], **config["arch_kwargs"])
        encoder.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path}: cannot rebuild the encoder from {CONFIG} and {WEIGHTS}: {e}") from None
    served = output_dim(encoder, config.get("output", "mu"), config["arch_kwargs"].get("z_dim", 0))
    whitening = None
    if "whitening" in config:
        record = config["whitening"]
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ArtifactError(f"{path / CONFIG}: its whitening record has no sha256; re-export the artifact")
        whitening = _load_whitening(path, record["sha256"])
        if whitening.in_dim != served:
            raise ArtifactError(
                f"{path / WHITENING_FILE} takes vectors of {whitening.in_dim} values, but the encoder's "
                f"{config.get('output', 'mu')} has {served}: it belongs to another artifact; re-export it"
            )
        served = whitening.out_dim
    for key in ("dim", *RENAMED_KEYS):  # the length it records, under either name, is the encoder's
        if key in config and int(config[key]) != served:
            raise ArtifactError(
                f"{path / CONFIG} says {key} {config[key]}, but its encoder's "
                f"{config.get('output', 'mu')} has {served} values: the file was edited; re-export it"
            )
    model = InferenceEncoder(config, encoder, whitening).to(device)
    model.eval()
    return model


def _load_whitening(folder: Path, sha256: str) -> Whitening:
    """The whitening of an artifact folder, checked against the sha256 its ``encoder.json`` records;
    ``ArtifactError`` naming the file when it is missing, damaged or another artifact's."""
    path = folder / WHITENING_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {folder / CONFIG} says the vectors are whitened; re-export the artifact")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise ArtifactError(
            f"{path} does not match the whitening sha256 recorded in {folder / CONFIG}: the file is damaged or "
            f"belongs to another artifact; re-export it"
        )
    try:
        return whitening_from_bytes(blob)
    except ValueError as e:
        raise ArtifactError(f"{path} is not a readable whitening ({e}); re-export the artifact") from None
