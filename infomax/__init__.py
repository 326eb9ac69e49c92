"""infomax: Deep INFOMAX image representations, indexed with FAISS, served over HTTP.

The public names are imported lazily, so ``import infomax`` stays cheap (no torch at import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_encoder": "infomax.artifact",
    "save_artifact": "infomax.artifact",
    "InferenceEncoder": "infomax.artifact",
    "ArtifactError": "infomax.artifact",
    "DeepInfoMax": "infomax.module",
    "build_encoder": "infomax.encoders",
    "EmbeddingIndex": "infomax.index",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'infomax' has no attribute {name!r}")
