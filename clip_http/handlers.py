"""Error mapping and authentication for the public FastAPI app.

Every refusal is JSON ``{"error", "status", "field"?}`` with the right status: typed input
errors keep theirs, request-shape errors are 400 naming the field, encoder overload is 503
with ``Retry-After`` and any other encoder failure a 502 — never a bare 500.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from clip_runner.errors import InputError, Overloaded, Unauthorized
from clip_runner.settings import ClipSettings

from . import metrics
from .guards import AdmissionLimit, ASGIApp, BodyLimit, Receive, Scope, Send, send_json

logger = logging.getLogger("clip_service")
OPEN_PATHS = frozenset({"/health", "/clip/health"})


async def _input_error(_: Request, exc: InputError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "form")]
        problems.append(f"field '{'.'.join(loc) or 'body'}': {err.get('msg', 'invalid')}")
    return JSONResponse({"error": "; ".join(problems), "status": 400}, status_code=400)


async def _encoder_error(_: Request, exc: bentoml.exceptions.BentoMLException) -> JSONResponse:
    """The batched encoder refused or failed: overload is 503 + Retry-After, never a bare 500."""
    status = int(getattr(exc, "error_code", 500))
    if status in (429, 503):
        return JSONResponse({"error": "the model is overloaded (batch queue full); retry shortly",
                             "status": 503}, status_code=503, headers={"Retry-After": "1"})
    logger.error("encoder error: %s", exc)
    return JSONResponse({"error": "the model service failed; see the server log", "status": 502},
                        status_code=502)


async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
    """The in-process model's queue is full or it is shutting down: 503 + Retry-After."""
    metrics.refused("model_queue_full")
    return JSONResponse({"error": str(exc), "status": 503}, status_code=503,
                        headers={"Retry-After": "1"})


class ApiKeyAuth:
    """ASGI: when an API key is configured, every path but the open ones needs it (401 otherwise).

    Plain ASGI rather than an ``@app.middleware("http")`` function: that wrapper re-streams
    every request and response through an extra task, which costs CPU on every request.
    """

    def __init__(self, app: ASGIApp, settings: Callable[[], ClipSettings]) -> None:
        self.app = app
        self._settings = settings  # read per request so configuration changes apply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._settings().api_key
        if scope["type"] != "http" or not key or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        given = headers.get("x-api-key") or ""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        # Constant-time comparison: response timing must not reveal how much of a key matched.
        if hmac.compare_digest(given.encode(), key.encode()):
            return await self.app(scope, receive, send)
        err = Unauthorized("missing or invalid API key (send 'Authorization: Bearer <key>' "
                           "or 'X-API-Key: <key>')")
        metrics.refused("unauthorized")
        await send_json(send, 401, err.to_dict(), [("WWW-Authenticate", "Bearer")])


def install(app: FastAPI, settings: Callable[[], ClipSettings]) -> None:
    """Error handlers, then guards, then auth; the last added middleware runs first.

    ``settings`` is read per request, so the service's current settings always apply.
    """
    app.add_exception_handler(InputError, _input_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(bentoml.exceptions.BentoMLException, _encoder_error)  # type: ignore[arg-type]
    app.add_exception_handler(Overloaded, _overloaded)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, max_bytes=lambda: settings().max_request_bytes)
    app.add_middleware(AdmissionLimit, max_in_flight=lambda: settings().max_concurrency)
    app.add_middleware(ApiKeyAuth, settings=settings)
