"""The public service's view of the encoder service: layout, retries and overload mapping."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import bentoml
import numpy as np

from clip_runner.settings import ClipSettings

logger = logging.getLogger("clip_service")

TRAFFIC = {"timeout": 600}  # seconds: a 32-image request on a slow CPU must not be cut off
# Beyond its batch queue limit (CLIP_MAX_LATENCY_MS), how long an encoder call may take before
# the caller gets a 503: a lost call must not hold a client until the 600 s traffic timeout.
ENCODER_GRACE_S = 60.0
# BentoML's client for a dependency replaces its HTTP session every `max_requests` calls (100 by
# default) or `max_age` seconds and closes the old one with its calls still in flight: under load
# those fail with "Server disconnected" (about one call in five at 64 clients). The two services
# always run side by side, so there is nothing to rebalance: keep one session for good.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0**9}


def service_configs(settings: ClipSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """BentoML configs ``(encoder, entry)`` for the layout ``CLIP_ENCODER_MODE`` picks.

    Whichever service holds the model gets ``CLIP_ENCODER_WORKERS`` workers (one model copy
    each) and the GPUs; in the ``service`` layout the public entry is one async worker.
    """
    model: dict[str, Any] = {"workers": settings.encoder_workers, "traffic": dict(TRAFFIC)}
    if settings.gpus:
        model["resources"] = {"gpu": settings.gpus}
    if settings.encoder_mode == "inprocess":
        return model, dict(model)
    # Read by the entry's client of the encoder, from the encoder's own config.
    encoder = {**model, "runner_connection": dict(RUNNER_CONNECTION)}
    return encoder, {"workers": 1, "traffic": dict(TRAFFIC)}


class RemoteEncoder:
    """Adapts the encoder dependency (remote or in-process) to the pipeline's async protocol.

    Calls are retried on connection-level failures: a pooled keep-alive connection that the
    encoder closes just as it is reused fails before the request is processed, so resending
    is safe (encoding has no side effects). A call that gets no answer within ``timeout_s``
    fails with 503 (not retried: the encoder may be overloaded).
    """

    ATTEMPTS = 3

    def __init__(self, encoder: Any, timeout_s: float | None = None) -> None:
        self._encoder = encoder
        self.timeout_s = timeout_s

    async def _call(self, name: str, *args: Any) -> Any:
        import aiohttp

        for attempt in range(1, self.ATTEMPTS + 1):
            try:
                return await asyncio.wait_for(getattr(self._encoder.to_async, name)(*args), self.timeout_s)
            except TimeoutError:
                raise EncoderUnavailable(f"the encoder did not answer {name} within "
                                         f"{self.timeout_s:.0f}s") from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if attempt == self.ATTEMPTS:
                    raise EncoderUnavailable(f"encoder connection failed: {exc}") from exc
                logger.info("encoder call %s failed on a stale connection (%s); retrying", name, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return await self._call("encode_pixels", pixels)

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        return await self._call("encode_texts", texts)

    async def info(self) -> dict[str, Any]:
        return await self._call("info")

    async def ping(self) -> None:
        await self._call("ping")


class EncoderUnavailable(bentoml.exceptions.ServiceUnavailable):
    """The encoder could not be reached (starting, restarting or gone)."""
