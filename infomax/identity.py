"""An artifact's identity, from its ``encoder.json`` alone (no torch: the serve command checks an
index against its artifact with it before anything heavy is imported)."""

from __future__ import annotations

import hashlib


def served_dim(config: dict) -> int:
    """Length of the vectors an artifact serves: ``dim`` in its ``encoder.json``, or ``z_dim`` in
    one written before the name changed (beside ``arch_kwargs.z_dim``, the code's dimension, it
    meant two things)."""
    return int(config["dim"] if "dim" in config else config["z_dim"])


def artifact_id(config: dict) -> str:
    """The identity an index and an eval report record: the weights' hash for an artifact serving
    codes (``output`` mu, or none: indexes built before outputs existed stay valid), else a hash of
    it and the output (and of the whitening, when the artifact whitens what it serves), so that
    vectors of one kind never enter an index of another."""
    output = config.get("output", "mu")
    whitening = config.get("whitening")
    if whitening:
        sha = whitening.get("sha256") if isinstance(whitening, dict) else None
        return hashlib.sha256(f"{config['weights_sha256']}:{output}:whitened:{sha}".encode()).hexdigest()
    if output == "mu":
        return config["weights_sha256"]
    return hashlib.sha256(f"{config['weights_sha256']}:{output}".encode()).hexdigest()
