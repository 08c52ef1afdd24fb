"""ASGI guards and error mapping around the routes; each refuses before any expensive work.

* :class:`ApiKeyAuth`: when ``CLIP_API_KEY`` is set, every path but the open ones needs it (401).
* :class:`AdmissionLimit` bounds the requests in flight per worker; the excess is refused at
  once with 429 and ``Retry-After`` instead of joining an unbounded queue, so admitted
  requests keep their latency under overload.
* :class:`BodyLimit` refuses a body larger than the limit with 413: at once when
  ``Content-Length`` says so, and while streaming when a client lies about it or sends
  chunked data, so the limit holds whatever the headers claim.
* :func:`install` adds them with the error handlers: every refusal is JSON
  ``{"error", "status", "field"?}`` with the right status, never a bare 500.

Plain ASGI classes rather than ``@app.middleware("http")`` functions: those re-stream every
request and response through an extra task, which costs CPU on every request.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from clip_runner.errors import InputError, Overloaded, Unauthorized

logger = logging.getLogger("clip_service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/clip/health"})  # no API key needed (BentoML's own are outside)
EXEMPT_PATHS = frozenset({"/health", "/clip/health", "/livez", "/readyz", "/metrics"})  # never refused

REFUSED = bentoml.metrics.Counter(
    name="clip_refused_total", documentation="Requests refused before any work, by reason.",
    labelnames=["reason"])


def refused(reason: str) -> None:
    """Count a refused request (``overload``, ``body_too_large``, ``unauthorized``, ``model_queue_full``)."""
    REFUSED.labels(reason=reason).inc()


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

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
            refused("body_too_large")
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
                    refused("body_too_large")
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
            refused("body_too_large")
            await send_json(send, 413, self._too_large(), [("connection", "close")])


class AdmissionLimit:
    """At most ``max_in_flight`` requests per worker; the excess gets 429 + Retry-After at once."""

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int = 1,
                 exempt: frozenset[str] = EXEMPT_PATHS) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.exempt = exempt
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        limit = self.max_in_flight
        if self.in_flight >= limit:
            self.refused += 1
            body = {"error": f"server is at capacity ({limit} requests in flight); "
                             f"retry after {self.retry_after_s}s", "status": 429}
            refused("overload")
            return await send_json(send, 429, body, [("retry-after", str(self.retry_after_s))])
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class ApiKeyAuth:
    """When ``api_key`` is set, every path but the open ones needs it (401 otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get("x-api-key") or ""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        # Constant-time comparison: response timing must not reveal how much of a key matched.
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return await self.app(scope, receive, send)
        err = Unauthorized("missing or invalid API key (send 'Authorization: Bearer <key>' "
                           "or 'X-API-Key: <key>')")
        refused("unauthorized")
        await send_json(send, 401, err.to_dict(), [("WWW-Authenticate", "Bearer")])


async def _input_error(_: Request, exc: InputError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "form")]
        problems.append(f"field '{'.'.join(loc) or 'body'}': {err.get('msg', 'invalid')}")
    return JSONResponse({"error": "; ".join(problems), "status": 400}, status_code=400)


async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
    """The model's queue is full or it is shutting down: 503 + Retry-After."""
    refused("model_queue_full")
    return JSONResponse({"error": str(exc), "status": 503}, status_code=503, headers={"Retry-After": "1"})


def install(app: FastAPI, *, api_key: str | None, max_request_bytes: int, max_concurrency: int) -> None:
    """Error handlers, then the guards; the last added middleware runs first (auth)."""
    app.add_exception_handler(InputError, _input_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.add_middleware(AdmissionLimit, max_in_flight=max_concurrency)
    app.add_middleware(ApiKeyAuth, api_key=api_key)
