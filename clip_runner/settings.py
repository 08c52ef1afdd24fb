"""Service configuration, read once from ``CLIP_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .hardware import serves_on_cpu

DEFAULT_MODEL_NAME = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEFAULT_THRESHOLD = 0.25
CPU_BATCH_SIZE = 32  # measured for ViT-B-32 on CPU (docs/performance.md)
CUDA_BATCH_SIZE = 64


class ClipSettings(BaseSettings):
    """All server-side settings. Frozen: read at startup, never mutated while serving. An empty variable
    (``CLIP_MODEL_NAME=`` in a compose or ``.env`` file) means unset."""

    model_config = SettingsConfigDict(env_prefix="CLIP_", frozen=True, extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True)

    # Which model to serve. MODEL_TAG wins; otherwise MODEL_PATH, then MODEL_NAME + PRETRAINED.
    model_tag: str | None = Field(None, description="BentoML model-store tag to serve.")
    model_name: str = Field(DEFAULT_MODEL_NAME, description="open_clip name (ViT-B-32), OpenAI/HF id "
                            "(openai/clip-vit-base-patch32) or hf-hub:org/repo.")
    pretrained: str | None = Field(None, description="open_clip pretrained tag (default openai).")
    model_path: str | None = Field(None, description="Fine-tuned checkpoint file or directory.")
    allow_download: bool = Field(True, description="Download the model when not in the store.")
    strict_model: bool = Field(False, description="Never fall back to the bundled demo model (production deployments).")

    # Scoring.
    similarity_threshold: float | None = Field(None, ge=-1.0, le=1.0,
                                               description="Mismatch threshold; default 0.25 or the model's own.")

    # Batching and hardware.
    batch_size: int | None = Field(None, ge=1, le=1024,
                                   description="Max batch size (1 turns batching off); default 32 on CPU, 64 on CUDA.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    gpus: int = Field(0, ge=0, description="GPUs the service requests (deployment resources).")
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto picks the fastest that meets parity on this machine; int8 needs a compiled runtime.")
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto", description="auto: a compiled OpenVINO entry on CPU when OpenVINO is installed, else torch.")
    num_threads: int | None = Field(None, ge=1, description="Inference threads per worker; default the CPUs ÷ workers.")
    workers: int = Field(
        1, ge=1, le=64, validation_alias=AliasChoices("CLIP_WORKERS", "CLIP_ENCODER_WORKERS"),
        description="Worker processes, each with a model copy and a batch queue (CLIP_ENCODER_WORKERS "
        "is the older name).")
    decode_threads: int | None = Field(
        None, ge=1, le=256, description="Threads decoding uploads, per worker; default 2 × CPUs ÷ workers, at least 4.")
    tracing: bool = Field(False, description="Trace requests as BentoML's `tracing` config says; off, none traced.")
    fast_decode: bool = Field(True, description="Decode JPEGs at reduced size (libjpeg DCT scaling) when far above "
                              "the model input.")

    # Request limits.
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(64_000_000, ge=1, description="Decoded pixel limit (w*h).")
    max_text_chars: int = Field(500, ge=1)
    max_texts: int = Field(64, ge=1, description="Texts per request.")
    max_images: int = Field(32, ge=1, description="Images per request.")
    max_categories: int = Field(1000, ge=1)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Whole request body limit (413).")
    max_concurrency: int = Field(64, ge=1,
                                 description="Requests in flight per public worker; the excess gets 429 + Retry-After.")

    # Image URLs in JSON bodies and /v1/embeddings (clip_runner.serving.fetch): off unless enabled.
    allow_image_urls: bool = Field(False, description="Fetch images given as http(s) URLs (public addresses only).")
    image_url_hosts: str | None = Field(
        None, description="Comma-separated host[:port] allow-list for image URLs; when set, only these "
        "hosts are fetched, and they may be private.")
    image_url_timeout: float = Field(10.0, gt=0, le=600, description="Seconds one image URL fetch may take, "
                                     "redirects included.")

    cors_origins: str | None = Field(
        None, description="Comma-separated origins whose web pages may call the service (CORS), or *.")

    # Fine-tuning defaults (python -m models finetune; its flags override them).
    train_batch_size: int = Field(16, ge=2, description="Pairs per contrastive batch.")
    train_learning_rate: float = Field(5e-6, gt=0, description="Peak AdamW learning rate.")
    train_epochs: int = Field(3, ge=1, description="Passes over the training split.")
    checkpoint_dir: Path = Field(Path("./clip_checkpoints"), description="Where training runs write checkpoints.")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_key: str | None = Field(None, description="When set, callers must send it.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
            return value
        raise ValueError("CLIP_DEVICE must be auto, cpu, cuda or cuda:N")

    @field_validator("image_url_hosts")
    @classmethod
    def _check_hosts(cls, value: str | None) -> str | None:
        parse_hosts(value)  # a malformed entry stops the server at start, not at the first fetch
        return value

    @property
    def model_configured(self) -> bool:
        """Whether any model setting was given explicitly (else the hardware-aware default applies)."""
        return bool({"model_tag", "model_name", "pretrained", "model_path"} & self.model_fields_set)

    @property
    def max_batch(self) -> int:
        """``CLIP_BATCH_SIZE``, or the measured best for the device (docs/performance.md)."""
        if self.batch_size is not None:
            return self.batch_size
        return CPU_BATCH_SIZE if serves_on_cpu(self.device) else CUDA_BATCH_SIZE

    @property
    def inference_thread_count(self) -> int:
        """``CLIP_NUM_THREADS``, else this worker's share of the CPUs: over-subscribed cores run batches slower."""
        return self.num_threads or cpu_share(self.workers)

    @property
    def decode_thread_count(self) -> int:
        """``CLIP_DECODE_THREADS``, else 2 × this worker's share of the CPUs (at least 4): Pillow releases the
        GIL, and twice the cores keeps them busy while some wait on the event loop."""
        return self.decode_threads or max(4, 2 * cpu_share(self.workers))


def parse_hosts(entries: str | None) -> frozenset[tuple[str, int | None]] | None:
    """``CLIP_IMAGE_URL_HOSTS`` (``host[:port],...``) → {(host, port or None)}; None when unset."""
    if entries is None or not entries.strip():
        return None
    hosts = set()
    for entry in filter(None, (e.strip() for e in entries.split(","))):
        parts = urlsplit(f"//{entry}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"CLIP_IMAGE_URL_HOSTS: {entry!r} has an invalid port") from None
        if not parts.hostname or parts.path or parts.username:
            raise ValueError(f"CLIP_IMAGE_URL_HOSTS: {entry!r} is not host or host:port")
        hosts.add((parts.hostname.lower(), port))
    return frozenset(hosts)


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_share(workers: int) -> int:
    """This process's share of the CPUs when ``workers`` processes split them (at least 1)."""
    return max(1, available_cpus() // max(1, workers))


@lru_cache(maxsize=1)
def get_settings() -> ClipSettings:
    """Process-wide settings (cached: environment variables are read once)."""
    return ClipSettings()
