"""In-process encoder backend: the same pipeline as the service, without HTTP or BentoML.

Used by the in-process client (``USE_LOCAL_CLIP`` unset) and by tests. Encoding runs in a
worker thread so async callers are not blocked; calls are serialised because one model
instance should run one batch at a time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from .device import configure_threads, pick_device
from .encoder import BatchEncoder, timed, with_trailer
from .loading import LoadedModel, load_entry, model_info
from .pipeline import ClipPipeline
from .resolve import Resolution, resolve_model
from .settings import ClipSettings


class LocalBackend:
    """:class:`~clip_runner.pipeline.EncoderBackend` over a model loaded in this process."""

    def __init__(self, loaded: LoadedModel, resolution: Resolution, settings: ClipSettings) -> None:
        self.loaded = loaded
        self.resolution = resolution
        self.settings = settings
        self.encoder = BatchEncoder(loaded, settings.precision)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ClipSettings) -> LocalBackend:
        """Resolve (registering if needed) and load the configured model."""
        configure_threads(settings.num_threads)
        resolution = resolve_model(settings)
        loaded = load_entry(resolution.tag, pick_device(settings.device))
        return cls(loaded, resolution, settings)

    def _pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock, timed() as elapsed:
            rows = self.encoder.encode_pixels(pixels)
        return with_trailer(rows, len(rows), elapsed[0])

    def _texts(self, texts: list[str]) -> np.ndarray:
        with self._lock, timed() as elapsed:
            rows = self.encoder.encode_texts(texts)
        return with_trailer(rows, len(rows), elapsed[0])

    async def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(self._pixels, pixels)

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self._texts, texts)

    def info_sync(self) -> dict[str, Any]:
        """Same shape as the encoder service's ``info`` API."""
        return served_info(self.loaded, self.resolution, precision=self.encoder.precision.name,
                           batching={"max_batch_size": self.settings.max_batch, "max_latency_ms": 0})

    async def info(self) -> dict[str, Any]:
        return self.info_sync()


def served_info(loaded: LoadedModel, resolution: Resolution, **extra: Any) -> dict[str, Any]:
    """What is served, where and why: the encoder's ``info`` (for /health and pipeline setup)."""
    entry = loaded.entry
    return {
        **model_info(loaded),
        "reason": resolution.reason,
        "fallback": resolution.fallback,
        "hardware": resolution.hardware,
        "preprocess_cfg": entry.preprocess_cfg,
        "metadata": entry.metadata,
        **extra,
    }


def local_pipeline(settings: ClipSettings | None = None) -> ClipPipeline:
    """A ready :class:`ClipPipeline` over an in-process model (for clients and scripts)."""
    settings = settings or ClipSettings()
    backend = LocalBackend.from_settings(settings)
    return ClipPipeline(backend, settings, backend.info_sync())
