"""The public service's encoder adapter resends on stale pooled connections, and only then; it never waits forever."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from clip_http.backend import EncoderUnavailable, RemoteEncoder


class FlakyEncoder:
    """Stands in for the encoder dependency: fails the first ``failures`` calls like a reset socket."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0
        self.to_async = self

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return np.ones((len(texts), 4), dtype=np.float32)


async def test_stale_connection_is_retried() -> None:
    encoder = FlakyEncoder(2, aiohttp.ClientOSError("Cannot write to closing transport"))
    rows = await RemoteEncoder(encoder).encode_texts(["a", "b"])
    assert rows.shape == (2, 4) and encoder.calls == 3


async def test_persistent_failure_becomes_service_unavailable() -> None:
    encoder = FlakyEncoder(10, aiohttp.ServerDisconnectedError())
    with pytest.raises(EncoderUnavailable) as info:
        await RemoteEncoder(encoder).encode_texts(["a"])
    assert encoder.calls == RemoteEncoder.ATTEMPTS and info.value.error_code == 503


async def test_other_errors_are_not_retried() -> None:
    encoder = FlakyEncoder(1, ValueError("bad input"))
    with pytest.raises(ValueError):
        await RemoteEncoder(encoder).encode_texts(["a"])
    assert encoder.calls == 1


class SilentEncoder:
    """An encoder that accepts a call and never answers (a lost request)."""

    def __init__(self) -> None:
        self.to_async, self.calls = self, 0

    async def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_call_without_answer_becomes_service_unavailable_at_the_deadline() -> None:
    encoder = SilentEncoder()
    with pytest.raises(EncoderUnavailable, match="did not answer encode_texts within 0s") as info:
        await RemoteEncoder(encoder, timeout_s=0.05).encode_texts(["a"])
    assert info.value.error_code == 503 and encoder.calls == 1  # not resent to a busy encoder
