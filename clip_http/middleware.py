"""ASGI guards and error mapping around the routes; each refuses before any expensive work (error shapes:
README, "HTTP API"). Plain ASGI classes, not ``@app.middleware("http")``: those re-stream every request
through an extra task.
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
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clip_runner.errors import InputError, Overloaded

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


# OpenAI's error "type" and "code" for a status (their SDKs map the status to an exception class).
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_OPENAI_CODES = {401: "invalid_api_key", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
                 503: "overloaded"}


def error_body(path: str, status: int, message: str, field: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON body of every error: ``{"error", "status", "field"?}``, or OpenAI's shape on ``/v1/*``."""
    if path.startswith("/v1/"):
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": message, "type": kind, "param": field,
                          "code": code or _OPENAI_CODES.get(status)}}
    return {"error": message, "status": status, **({"field": field} if field else {})}


async def send_error(scope: Scope, send: Send, status: int, message: str,
                     headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send a complete JSON error response, shaped for the request's path."""
    payload = json.dumps(error_body(scope.get("path", ""), status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """413 for request bodies over ``max_bytes``, however they are sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, send: Send, headers: Iterable[tuple[str, str]] = ()) -> None:
        refused("body_too_large")
        await send_error(scope, send, 413, f"request body exceeds the limit of {self.max_bytes / 1e6:.1f} MB "
                         "(CLIP_MAX_REQUEST_BYTES)", headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            declared = next((int(v) for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        except ValueError:
            return await send_error(scope, send, 400, "invalid Content-Length header")
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(scope, send)
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
                    await self._refuse(scope, send, [("connection", "close")])
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
            await self._refuse(scope, send, [("connection", "close")])


class AdmissionLimit:
    """At most ``max_in_flight`` requests per worker; the excess gets 429 + Retry-After at once."""

    def __init__(self, app: ASGIApp, max_in_flight: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            self.refused += 1
            message = (f"server is at capacity ({self.max_in_flight} requests in flight); "
                       f"retry after {self.retry_after_s}s")
            refused("overload")
            return await send_error(scope, send, 429, message, [("retry-after", str(self.retry_after_s))])
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
        refused("unauthorized")
        await send_error(scope, send, 401, "missing or invalid API key (send 'Authorization: Bearer <key>' "
                         "or 'X-API-Key: <key>')", [("WWW-Authenticate", "Bearer")])


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, exc.status, exc.message, exc.field, exc.code),
                        status_code=exc.status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "form")]
        problems.append(f"field '{'.'.join(loc) or 'body'}': {err.get('msg', 'invalid')}")
    return JSONResponse(error_body(request.url.path, 400, "; ".join(problems)), status_code=400)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method, unparseable form), in our shape."""
    return JSONResponse(error_body(request.url.path, exc.status_code, str(exc.detail)),
                        status_code=exc.status_code, headers=exc.headers)


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    """The model's queue is full or it is shutting down: 503 + Retry-After."""
    refused("model_queue_full")
    return JSONResponse(error_body(request.url.path, 503, str(exc)), status_code=503, headers={"Retry-After": "1"})


def install(app: FastAPI, *, api_key: str | None, max_request_bytes: int, max_concurrency: int,
            cors_origins: str | None = None) -> None:
    """Error handlers, then the guards; the last added middleware runs first (CORS, then auth)."""
    app.add_exception_handler(InputError, _input_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.add_middleware(AdmissionLimit, max_in_flight=max_concurrency)
    app.add_middleware(ApiKeyAuth, api_key=api_key)
    if cors_origins:  # outermost: a browser's preflight carries no API key
        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in cors_origins.split(",") if o.strip()],
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type", "X-API-Key"],
                           expose_headers=["X-Batch-Size", "Server-Timing"])
