"""In-process encoder backend: the service's pipeline over a model loaded in this process.

Serves the public service in its default mode (``CLIP_ENCODER_MODE=inprocess``: no hop to a
separate encoder process), the in-process client (``USE_LOCAL_CLIP`` unset) and tests.
Concurrent callers are micro-batched onto the model by :class:`~clip_runner.batcher.MicroBatcher`,
which runs the model on its own thread so the event loop is never blocked.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from .batcher import MicroBatcher
from .device import configure_threads, pick_device
from .encoder import BatchEncoder
from .loading import LoadedModel, load_entry, model_info
from .pipeline import ClipPipeline
from .resolve import Resolution, resolve_model
from .settings import ClipSettings

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ServedModel:
    """The model one process serves: resolved, loaded on its device, wrapped for batches, warm.

    Both layouts load it the same way: the public service in process, or each ``ClipEncoder``
    worker in the two-service layout.
    """

    resolution: Resolution
    loaded: LoadedModel
    encoder: BatchEncoder
    threads: int

    @classmethod
    def load(cls, settings: ClipSettings, workers: int = 1) -> ServedModel:
        """Resolve (registering if needed), load and warm up the configured model.

        ``workers`` is how many processes share this machine's CPUs (torch threads are split).
        """
        threads = configure_threads(settings.num_threads, workers)
        resolution = resolve_model(settings)
        loaded = load_entry(resolution.tag, pick_device(settings.device))
        encoder = BatchEncoder(loaded, settings.precision)
        encoder.warm_up()  # the first call pays for lazy initialisation: not a caller's
        logger.info("serving %s (%s) on %s", resolution.tag, resolution.reason, loaded.device)
        return cls(resolution, loaded, encoder, threads)

    def info(self, batching: dict[str, Any]) -> dict[str, Any]:
        """What is served, where and why, with how requests are batched onto it."""
        return served_info(self.loaded, self.resolution, torch_threads=self.threads,
                           precision=self.encoder.precision.name, batching=batching)


class LocalBackend:
    """:class:`~clip_runner.pipeline.EncoderBackend` over a model loaded in this process."""

    def __init__(self, served: ServedModel, settings: ClipSettings) -> None:
        self.served = served
        self.settings = settings
        self.encoder = served.encoder
        self.batcher = MicroBatcher(self.encoder.encode_pixels, self.encoder.encode_texts,
                                    settings.max_batch, name="clip-model")

    @classmethod
    def from_settings(cls, settings: ClipSettings, workers: int = 1) -> LocalBackend:
        """Resolve (registering if needed) and load the configured model (see :class:`ServedModel`)."""
        return cls(ServedModel.load(settings, workers), settings)

    async def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self.batcher.encode_pixels(pixels)

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        return await self.batcher.encode_texts(texts)

    def info_sync(self) -> dict[str, Any]:
        """Same shape as the encoder service's ``info`` API."""
        return self.served.info({"mode": "inprocess", "max_batch_size": self.settings.max_batch,
                                 "max_latency_ms": 0})

    async def info(self) -> dict[str, Any]:
        """The served facts; raises while the model thread is not running (``/health`` says 503)."""
        if not self.batcher.alive:
            raise RuntimeError("the model thread has stopped; restart the server")
        return self.info_sync()

    def close(self) -> None:
        """Finish queued work and stop the model thread."""
        self.batcher.close()


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
