"""The clients' retries, error mapping and argument checks against real local HTTP servers (no model needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from clip_client import AsyncClipClient, ClipClient, ClipConnectionError, ClipServiceError, RetryPolicy
from clip_client.http import retry_after

from bench.server import free_port

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


class CountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await super().handle_async_request(request)


def test_closed_port_is_retried_then_fails_clearly() -> None:
    url, transport = f"http://127.0.0.1:{free_port()}", CountingTransport()  # the blocking client runs it too
    with ClipClient(url, retry=FAST_RETRY, transport=transport) as c, pytest.raises(ClipConnectionError) as err:
        c.encode_text("hello")
    assert transport.calls == 3 and err.value.attempts == 3 and err.value.status is None
    assert url in err.value.message and "after 3 attempt" in err.value.message


async def test_closed_port_is_retried_then_fails_clearly_async() -> None:
    url, transport = f"http://127.0.0.1:{free_port()}", CountingTransport()
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


def test_bad_arguments_fail_before_anything_is_sent() -> None:
    transport = CountingTransport()
    with ClipClient(f"http://127.0.0.1:{free_port()}", transport=transport) as c:
        with pytest.raises(TypeError, match="list of strings"):
            c.similarity(b"image", "a cat")  # a bare string would be read character by character
        with pytest.raises(TypeError, match="bytes, a path or a PIL image"):
            c.encode_image(42)  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError):
            c.encode_image("no/such/file.jpg")
    assert transport.calls == 0
