"""ASGI guards that run before any expensive work: request-body size and admission control.

* :class:`BodyLimit` refuses a body larger than the limit with 413 — at once when
  ``Content-Length`` says so, and while streaming when a client lies about it or sends
  chunked data, so the limit holds whatever the headers claim.
* :class:`AdmissionLimit` bounds the requests in flight per worker; the excess is refused at
  once with 429 and ``Retry-After`` instead of joining an unbounded queue, so admitted
  requests keep their latency under overload.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from . import metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXEMPT_PATHS = frozenset({"/health", "/clip/health", "/livez", "/readyz", "/metrics"})


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send a complete JSON response."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return int(value)  # ValueError is handled by the caller
    return None


class BodyLimit:
    """413 for request bodies over ``max_bytes``, however they are sent."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int]) -> None:
        self.app = app
        self._max_bytes = max_bytes  # read per request so configuration changes apply

    @property
    def max_bytes(self) -> int:
        return self._max_bytes()

    def _too_large(self) -> dict[str, Any]:
        return {"error": f"request body exceeds the limit of {self.max_bytes / 1e6:.1f} MB "
                         "(CLIP_MAX_REQUEST_BYTES)", "status": 413}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            declared = _content_length(scope)
        except ValueError:
            return await send_json(send, 400, {"error": "invalid Content-Length header", "status": 400})
        if declared is not None and declared > self.max_bytes:
            metrics.refused("body_too_large")
            return await send_json(send, 413, self._too_large())
        state = {"received": 0, "over": False, "responded": False}

        async def limited_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    # Stop feeding the app; it sees a disconnect and we answer 413 instead.
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if not state["responded"]:
                    state["responded"] = True
                    metrics.refused("body_too_large")
                    await send_json(send, 413, self._too_large(), [("connection", "close")])
                return
            if message["type"] == "http.response.start":
                state["responded"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["responded"]:
            metrics.refused("body_too_large")
            await send_json(send, 413, self._too_large(), [("connection", "close")])


class AdmissionLimit:
    """At most ``max_in_flight`` requests per worker; the excess gets 429 + Retry-After at once."""

    def __init__(self, app: ASGIApp, max_in_flight: Callable[[], int], retry_after_s: int = 1,
                 exempt: frozenset[str] = EXEMPT_PATHS) -> None:
        self.app = app
        self._max_in_flight = max_in_flight  # read per request so configuration changes apply
        self.retry_after_s = retry_after_s
        self.exempt = exempt
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        limit = self._max_in_flight()
        if self.in_flight >= limit:
            self.refused += 1
            body = {"error": f"server is at capacity ({limit} requests in flight); "
                             f"retry after {self.retry_after_s}s", "status": 429}
            metrics.refused("overload")
            return await send_json(send, 429, body, [("retry-after", str(self.retry_after_s))])
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
