"""The clients against a real `bentoml serve`, compared with the in-process backend; retries."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from clip_runner.backends import AsyncLocalClip, LocalClip
from clip_runner.client import (
    AsyncClipClient,
    ClipClient,
    ClipConnectionError,
    ClipServiceError,
    RetryPolicy,
    retry_after,
)
from clip_runner.settings import ClipSettings
from tests.conftest import make_jpeg, make_png
from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.slow

CORRUPT = make_jpeg(9)[:300]
FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)
LABELS = ["a cat", "a dog", "a red car"]


def _settings(tag: str) -> ClipSettings:
    # Built outside the per-test environment cleanup (module scope): ignore the shell's CLIP_*.
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("CLIP_")]:
            mp.delenv(name)
        return ClipSettings(model_tag=tag, device="cpu", precision="fp32")  # as the `server` fixture


@pytest.fixture(scope="module")
def local(tiny_tag: str) -> Iterator[LocalClip]:
    with LocalClip(_settings(tiny_tag)) as backend:
        yield backend


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    """The same three images as bytes, a path and a PIL image."""
    path = tmp_path / "b.png"
    path.write_bytes(make_png(2))
    return {"bytes": make_jpeg(1, size=(160, 120)), "path": path, "pil": Image.open(io.BytesIO(make_jpeg(3)))}


def _same_vectors(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.all(np.sum(a * b, axis=1) >= 0.9999)


def _same_json(a: Any, b: Any) -> None:
    """Equal structure and values; floats within batching noise."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _same_json(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_json(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-4)
    else:
        assert a == b


def _by_category(result: dict[str, Any]) -> dict[str, Any]:
    # Near-equal probabilities may rank in either order; compare per category.
    return {**result, "predictions": {p["category"]: p for p in result["predictions"]}, "top_category": None}


def _compare(remote: dict[str, Any], local: LocalClip, inputs: dict[str, Any]) -> None:
    """Results of one client (already computed) against the in-process backend."""
    for kind, image in inputs.items():
        _same_vectors(remote[f"image:{kind}"], local.encode_image(image))
    batch = local.encode_images([inputs["bytes"], CORRUPT, inputs["path"]])
    got = remote["images"]
    assert got.embeddings[1] is None and got.errors == batch.errors and "images[1]" in got.errors[1]
    _same_vectors(got.embeddings[0], batch.embeddings[0])
    _same_vectors(got.embeddings[2], batch.embeddings[2])
    _same_vectors(remote["text"], local.encode_text("a red shoe"))
    _same_vectors(remote["texts"], local.encode_text(["a red shoe", "a blue bag"]))
    _same_json(remote["similarity"], local.similarity(inputs["bytes"], LABELS))
    _same_json(remote["analyze"], local.analyze(inputs["bytes"], "a red shoe"))
    _same_json(remote["analyze_batch"], local.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], 0.1))
    _same_json(_by_category(remote["classify"]), _by_category(local.classify(inputs["bytes"], LABELS, 3)))
    assert remote["categories"] == local.categories()
    assert remote["health"]["embedding_size"] == local.health()["embedding_size"] == 32
    assert remote["health"]["model"] == local.health()["model"]


def test_sync_client_matches_in_process(server: Server, local: LocalClip, inputs: dict[str, Any]) -> None:
    with ClipClient(server.url) as c:
        remote: dict[str, Any] = {f"image:{kind}": c.encode_image(image) for kind, image in inputs.items()}
        remote.update(
            images=c.encode_images([inputs["bytes"], CORRUPT, inputs["path"]]),
            text=c.encode_text("a red shoe"), texts=c.encode_text(["a red shoe", "a blue bag"]),
            similarity=c.similarity(inputs["bytes"], LABELS), analyze=c.analyze(inputs["bytes"], "a red shoe"),
            analyze_batch=c.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], threshold=0.1),
            classify=c.classify(inputs["bytes"], LABELS, top_k=3), categories=c.categories(), health=c.health(),
        )
    assert remote["text"].shape == (32,) and remote["texts"].shape == (2, 32)
    _compare(remote, local, inputs)


async def test_async_client_matches_in_process(server: Server, local: LocalClip, tiny_tag: str,
                                               inputs: dict[str, Any]) -> None:
    async with AsyncClipClient(server.url) as c, AsyncLocalClip(_settings(tiny_tag)) as mine:
        remote: dict[str, Any] = {f"image:{kind}": await c.encode_image(image) for kind, image in inputs.items()}
        remote.update(
            images=await c.encode_images([inputs["bytes"], CORRUPT, inputs["path"]]),
            text=await c.encode_text("a red shoe"), texts=await c.encode_text(["a red shoe", "a blue bag"]),
            similarity=await c.similarity(inputs["bytes"], LABELS),
            analyze=await c.analyze(inputs["bytes"], "a red shoe"),
            analyze_batch=await c.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], threshold=0.1),
            classify=await c.classify(inputs["bytes"], LABELS, top_k=3), categories=await c.categories(),
            health=await c.health(),
        )
        _same_vectors(await mine.encode_image(inputs["bytes"]), remote["image:bytes"])
        _same_json(await mine.analyze(inputs["bytes"], "a red shoe"), remote["analyze"])
    _compare(remote, local, inputs)


@pytest.mark.parametrize(
    ("call", "status", "field", "needle"),
    [
        (lambda b: b.encode_image(CORRUPT), 400, "image", "image"),
        (lambda b: b.encode_text("x" * 501), 400, "text", "limit is 500"),
        (lambda b: b.classify(make_jpeg(1), top_k=0), 400, "top_k", "top_k"),
    ],
)
def test_errors_carry_the_server_message(server: Server, local: LocalClip, call, status, field, needle) -> None:
    with ClipClient(server.url) as c, pytest.raises(ClipServiceError) as remote:
        call(c)
    with pytest.raises(ClipServiceError) as mine:
        call(local)
    for err in (remote.value, mine.value):
        assert (err.status, err.field) == (status, field) and needle in err.message
    assert remote.value.message == mine.value.message
    assert str(remote.value) == f"{status}: {remote.value.message}"


async def test_async_errors_carry_the_server_message(server: Server) -> None:
    async with AsyncClipClient(server.url) as c:
        with pytest.raises(ClipServiceError, match="limit is 500") as err:
            await c.encode_text("x" * 501)
    assert err.value.status == 400 and err.value.field == "text"


# ---- retries ------------------------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await super().handle_async_request(request)


def test_closed_port_is_retried_then_fails_clearly() -> None:
    url, transport = f"http://127.0.0.1:{free_port()}", CountingTransport()
    with ClipClient(url, retry=FAST_RETRY, transport=transport) as c, pytest.raises(ClipConnectionError) as err:
        c.encode_text("hello")
    assert transport.calls == 3 and err.value.attempts == 3 and err.value.status is None
    assert url in err.value.message and "after 3 attempt" in err.value.message


async def test_closed_port_is_retried_then_fails_clearly_async() -> None:
    url, transport = f"http://127.0.0.1:{free_port()}", AsyncCountingTransport()
    async with AsyncClipClient(url, retry=FAST_RETRY, transport=transport) as c:
        with pytest.raises(ClipConnectionError, match="could not reach") as err:
            await c.health()
    assert transport.calls == 3 and err.value.attempts == 3


class Stub:
    """A real HTTP server answering from a script of (status, headers, JSON body)."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script, self.seen = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                stub.seen.append((self.path, dict(self.headers), body))
                status, headers, payload = stub.script.pop(0)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "content-type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[Stub]:
    server = Stub(request.param)
    yield server
    server.close()


BUSY = (503, {"Retry-After": "0"}, {"error": "model is warming up", "status": 503})
LIMITED = (429, {"Retry-After": "0"}, {"error": "slow down", "status": 429})
OK = (200, {}, [0.6, 0.8])


@pytest.mark.parametrize("stub", [[BUSY, LIMITED, OK]], indirect=True)
def test_busy_then_ok_succeeds(stub: Stub) -> None:
    with ClipClient(stub.url, api_key="k3y", retry=FAST_RETRY) as c:
        row = c.encode_text("hello")
    assert row.tolist() == pytest.approx([0.6, 0.8]) and row.dtype == np.float32
    assert [path for path, _, _ in stub.seen] == ["/encode_text"] * 3
    assert all(headers["Authorization"] == "Bearer k3y" for _, headers, _ in stub.seen)
    assert json.loads(stub.seen[0][2]) == {"text": "hello"}


@pytest.mark.parametrize("stub", [[BUSY, OK]], indirect=True)
async def test_busy_then_ok_succeeds_async(stub: Stub) -> None:
    async with AsyncClipClient(stub.url, retry=FAST_RETRY) as c:
        row = await c.encode_text("hello")
    assert row.tolist() == pytest.approx([0.6, 0.8]) and len(stub.seen) == 2


@pytest.mark.parametrize("stub", [[BUSY, BUSY]], indirect=True)
def test_still_busy_after_retries_raises_the_server_message(stub: Stub) -> None:
    with ClipClient(stub.url, retry=RetryPolicy(attempts=2, backoff_s=0.01)) as c:
        with pytest.raises(ClipServiceError, match="warming up") as err:
            c.encode_text("hello")
    assert err.value.status == 503 and err.value.attempts == 2 and len(stub.seen) == 2


def test_retry_after_is_honoured() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    policy = RetryPolicy(backoff_s=0.5, max_retry_after_s=30)
    assert policy.delay(1, answer("7")) == 7.0
    assert policy.delay(1, answer("3600")) == 30.0
    assert policy.delay(1, answer("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # a date in the past
    assert retry_after(answer("soon")) is None
    assert 0.25 <= policy.delay(1) <= 0.5 and 1.0 <= policy.delay(3) <= 2.0  # exponential, jittered
