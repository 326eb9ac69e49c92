"""PCA whitening of the vectors an artifact serves (issue 14, item 4: what is served).

Contrastive codes and local maps are anisotropic: a few directions carry most of the variance (the
brightness or the layout every image shares), and cosine similarity is dominated by them. Whitening
centres the vectors on the mean of a collection and rescales every principal direction to unit
variance, so that cosine compares images along the directions that tell them apart. No label is
used: the transform is fitted on the unlabelled images the artifact will index (a data set's train
split, or a folder), as the pixel baseline is centred on the train split's mean image.

    v (B, d) -> (v - mean) @ matrix (B, k),  matrix = U_k diag(1 / sqrt(lambda_k + eps * lambda_1))

with ``lambda`` the covariance's eigenvalues in decreasing order and ``U`` its eigenvectors: ``k``
(``dim``) keeps the k leading directions (shorter vectors: a smaller index, faster search), ``eps``
is a ridge relative to the largest eigenvalue that keeps near-empty directions from being blown up
into noise (``eps`` 0 would be the textbook whitening, and divide by ~0 on a rank-deficient set).

Stored in an artifact folder as ``whitening.safetensors`` (``mean`` (d,), ``matrix`` (d, k), float32)
with its sha256 and settings in ``encoder.json`` under ``whitening``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn

from infomax.atomic import atomic_write_bytes
from infomax.errors import SettingError
from infomax.validate import optional_positive_int

WHITENING = "whitening.safetensors"
DEFAULT_EPS = 1e-2


class Whitening(nn.Module):
    """``(v - mean) @ matrix``: float (B, d) -> float32 (B, k). Buffers, so ``.to(device)`` and
    ``deepcopy`` carry it; no parameter (nothing here trains)."""

    mean: torch.Tensor
    matrix: torch.Tensor

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor) -> None:
        super().__init__()
        if mean.dim() != 1 or matrix.dim() != 2 or matrix.shape[0] != mean.shape[0]:
            raise ValueError(f"whitening needs mean (d,) and matrix (d, k); got {tuple(mean.shape)} and {tuple(matrix.shape)}")
        self.register_buffer("mean", mean.detach().float().contiguous())
        self.register_buffer("matrix", matrix.detach().float().contiguous())

    @property
    def in_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[1])

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors.float() - self.mean) @ self.matrix


def check_settings(eps: float, dim: int | None) -> None:
    """``ValueError`` (a :class:`SettingError`) quoting a bad ``eps`` or ``dim``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise SettingError(
            f"whiten_eps={eps!r}: the ridge, relative to the largest variance, must be a number > 0 (e.g. {DEFAULT_EPS})",
            setting="whiten_eps",
        )
    optional_positive_int("whiten_dim", dim, what="a positive integer, the number of directions kept")


def fit_whitening(features: torch.Tensor, *, eps: float = DEFAULT_EPS, dim: int | None = None) -> Whitening:
    """Fits the whitening of ``features`` (N, d), N >= 2 vectors of one collection; ``dim`` keeps
    the ``dim`` <= d leading principal directions (None: all d). The covariance is the biased one
    (divided by N) and is decomposed in float64."""
    check_settings(eps, dim)
    if features.dim() != 2 or len(features) < 2:
        raise ValueError(f"whitening is fitted on (N, d) vectors with N >= 2, got shape {tuple(features.shape)}")
    d = features.shape[1]
    if dim is not None and dim > d:
        raise SettingError(f"whiten_dim={dim}: the vectors have only {d} values; keep at most {d}", setting="whiten_dim")
    x = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("the vectors to fit the whitening on hold NaN or infinite values")
    mean = x.mean(0)
    x = x - mean
    lam, vecs = torch.linalg.eigh(x.T @ x / len(x))  # ascending
    lam, vecs = lam.flip(0).clamp_min(0), vecs.flip(1)
    k = dim or d
    ridge = eps * float(lam[0]) if lam[0] > 0 else eps  # a constant collection: scale by 1/sqrt(eps)
    matrix = vecs[:, :k] / (lam[:k] + ridge).sqrt()
    return Whitening(mean, matrix)


def save_whitening(whitening: Whitening, folder: str | Path) -> str:
    """Writes ``whitening.safetensors`` into ``folder`` (temporary file and rename); returns its sha256."""
    from safetensors.torch import save

    blob = save({"mean": whitening.mean.cpu().contiguous(), "matrix": whitening.matrix.cpu().contiguous()})
    atomic_write_bytes(Path(folder) / WHITENING, blob)
    return hashlib.sha256(blob).hexdigest()


def remove_whitening(folder: str | Path) -> None:
    """Removes a stale ``whitening.safetensors`` (an artifact written without one must not keep it)."""
    (Path(folder) / WHITENING).unlink(missing_ok=True)


def whitening_from_bytes(blob: bytes) -> Whitening:
    """The whitening a ``whitening.safetensors`` file holds; ValueError when the bytes are not one.
    (``infomax.artifact`` reads the file and checks it against the sha256 its record holds.)"""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        state = load(blob)
        return Whitening(state["mean"], state["matrix"])
    except (SafetensorError, KeyError, ValueError) as e:
        raise ValueError(str(e)) from None
