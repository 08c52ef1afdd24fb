"""Body-size and admission guards, driven through raw ASGI calls."""

from __future__ import annotations

import asyncio
from typing import Any

from clip_http.middleware import AdmissionLimit, BodyLimit


def _scope(path: str = "/encode_image", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers or []}


class Recorder:
    """A minimal ASGI app that reads the whole body, then answers 200 (or waits on an event).

    ``arrived`` receives each request's path as the app gets it: tests wait on it, not on time.
    """

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.calls, self.bodies, self.gate = 0, [], gate
        self.arrived: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        self.arrived.put_nowait(scope["path"])
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client went away")
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        if self.gate:
            await self.gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _run(app, scope, chunks: list[bytes]) -> list[dict]:
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    inner = Recorder()
    sent = await _run(BodyLimit(inner, 100), _scope(headers=[(b"content-length", b"101")]), [b"x" * 101])
    assert sent[0]["status"] == 413 and inner.calls == 0
    assert b"limit" in sent[1]["body"]


async def test_streamed_body_over_limit_is_refused_even_if_length_lies() -> None:
    inner = Recorder()
    scope = _scope(headers=[(b"content-length", b"10")])  # claims 10 bytes, streams 300
    sent = await _run(BodyLimit(inner, 100), scope, [b"x" * 60, b"x" * 60, b"x" * 180])
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]
    assert inner.bodies == []  # the app never got the oversized body


async def test_body_under_limit_passes() -> None:
    inner = Recorder()
    sent = await _run(BodyLimit(inner, 100), _scope(), [b"x" * 50, b"y" * 50])
    assert sent[0]["status"] == 200 and inner.bodies == [b"x" * 50 + b"y" * 50]


async def test_bad_content_length_is_400() -> None:
    sent = await _run(BodyLimit(Recorder(), 100), _scope(headers=[(b"content-length", b"ten")]), [b""])
    assert sent[0]["status"] == 400


async def test_admission_refuses_the_excess_at_once() -> None:
    gate = asyncio.Event()
    inner = Recorder(gate)
    guard = AdmissionLimit(inner, 1, retry_after_s=2)
    first = asyncio.create_task(_run(guard, _scope(), [b"a"]))
    assert await asyncio.wait_for(inner.arrived.get(), 5) == "/encode_image"  # admitted, held at the gate
    assert guard.in_flight == 1
    second = await _run(guard, _scope(), [b"b"])
    assert second[0]["status"] == 429 and (b"retry-after", b"2") in second[0]["headers"]
    health = asyncio.create_task(_run(guard, _scope("/health"), [b""]))  # exempt path is admitted
    assert await asyncio.wait_for(inner.arrived.get(), 5) == "/health"
    gate.set()
    assert (await first)[0]["status"] == 200 and (await health)[0]["status"] == 200
    assert guard.in_flight == 0 and guard.refused == 1
