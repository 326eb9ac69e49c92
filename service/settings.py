"""Typed settings of the HTTP service, read from ``INFOMAX_*`` environment variables;
``infomax serve`` flags override them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="INFOMAX_",
        extra="ignore",  # other INFOMAX_* variables (INFOMAX_DATA_DIR...) belong to other parts
    )

    # what is served
    artifact: Path | None = Field(None, description="serving artifact folder (encoder.safetensors + encoder.json)")
    index: Path | None = Field(None, description="index folder (index.faiss, index.json, metadata.sqlite, images.sqlite)")
    create_index: bool = Field(False, description="create an empty Flat index bound to the artifact if --index does not exist")
    read_only: bool = Field(
        False, description="no writes: index and image store opened read-only; POST/DELETE /v1/items answer 403"
    )
    refresh_s: float = Field(
        2.0, ge=0, description="read-only instances pick up items written by the writer process this often (0: never)"
    )

    # where (used by `infomax serve` only)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes; more than 1 requires read_only")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # security
    api_key: SecretStr | None = Field(None, description="required (X-API-Key or Authorization: Bearer) for writes")
    api_key_for_reads: bool = Field(False, description="also require the key for embed, search, items and metrics")

    # limits: every request is bounded
    max_k: int = Field(100, ge=1, description="largest k a search may ask for")
    default_k: int = Field(10, ge=1)
    max_upload_bytes: int = Field(24 << 20, ge=1, description="largest request body (refused while streaming: 413)")
    max_image_pixels: int = Field(24_000_000, ge=1, description="largest width*height, checked from the header before decoding")
    max_images_per_request: int = Field(64, ge=1)
    max_sample: int = Field(200, ge=1, description="largest n of GET /v1/items/sample")

    # encoding
    batching: bool = Field(True, description="gather concurrent encode requests into batches")
    max_batch_size: int = Field(64, ge=1, description="most images encoded in one forward pass")
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long a batch may wait for requests still decoding their images (a lone request never waits)"
    )
    torch_threads: int = Field(
        0, ge=0, description="threads of the encoder and of batched FAISS searches (0: half the CPUs, 1 to 4)"
    )
    optimize: bool = Field(True, description="fold BatchNorm into convolutions and use channels-last (same codes to ~1e-6)")
    background_load: bool = Field(
        False, description="load model and index after startup (/readyz answers 503 meanwhile) instead of before"
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        if self.workers > 1 and not self.read_only:
            raise ValueError(
                "workers > 1 needs read_only: each worker holds its own copy of the index, and only one "
                "process may write (run a separate single-worker writer; readers refresh every refresh_s)"
            )
        return self

    @property
    def compute_threads(self) -> int:
        """Half the CPUs by default: the other half parses HTTP and decodes images. (OpenMP
        teams as wide as the machine spin-wait for cores the event loop needs.)"""
        if self.torch_threads:
            return self.torch_threads
        try:
            cpus = len(os.sched_getaffinity(0))  # honours taskset / cpusets, unlike cpu_count()
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 2
        return max(1, min(4, cpus // 2))

    @property
    def write_key(self) -> bytes | None:
        return self.api_key.get_secret_value().encode() if self.api_key else None
