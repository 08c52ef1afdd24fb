"""What every route shares: the loaded API, reading a request's fields, and answering with timings.

:func:`read_form` gives one :class:`Form` over a multipart form or a JSON object, so a route's
logic answers the same either way; :func:`respond` reports its timings as headers and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import bentoml
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from clip_runner.errors import InvalidInput, UnsupportedMediaType
from clip_runner.serving import ClipAPI, Timings

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# What Server-Timing reports per request, on BentoML's /metrics (its collector merges workers).
DECODE_MS, QUEUE_MS, INFER_MS = (
    bentoml.metrics.Histogram(name=name, documentation=text, buckets=_MS_BUCKETS) for name, text in (
        ("clip_decode_ms", "Milliseconds decoding and preprocessing a request's images."),
        ("clip_queue_wait_ms", "Milliseconds a request waited for the model."),
        ("clip_inference_ms", "Model milliseconds of the batches a request ran in.")))
BATCH_SIZE = bentoml.metrics.Histogram(
    name="clip_request_batch_size", documentation="Size of the adaptive batch a request's items ran in.",
    labelnames=["kind"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

Route = Callable[[Timings], Awaitable[Any]]


class FastJSONResponse(JSONResponse):
    """JSON by orjson: a 512-float embedding encodes several times faster than with the stdlib,
    and the stdlib's encoding was the event loop's largest single cost per request."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


#: (method, path, handler, OpenAPI request body) of each route a module serves.
RouteTable = tuple[tuple[str, str, Callable[..., Any], dict[str, Any] | None], ...]


def api_of(request: Request) -> ClipAPI:
    """The loaded model's API, which the serving worker put in ``app.state.api``."""
    return request.app.state.api  # type: ignore[no-any-return]


async def respond(route: Route) -> FastJSONResponse:
    """Run a route's logic; a 200 JSON answer with ``X-Batch-Size`` and ``Server-Timing``."""
    timings = Timings()
    body = await route(timings)
    if timings.decode_ms:
        DECODE_MS.observe(timings.decode_ms)
    if timings.batch_size:
        QUEUE_MS.observe(timings.queue_ms)
        INFER_MS.observe(timings.infer_ms)
    for kind, size in (("image", timings.image_batch), ("text", timings.text_batch)):
        if size:
            BATCH_SIZE.labels(kind=kind).observe(size)
    return FastJSONResponse(body, headers={
        "X-Batch-Size": str(timings.batch_size),
        "Server-Timing": (f"decode;dur={timings.decode_ms:.1f}, queue;dur={timings.queue_ms:.1f}, "
                          f"infer;dur={timings.infer_ms:.1f}, batch;desc=\"{timings.batch_size}\""),
    })


INLINE_JSON_BYTES = 1 << 20
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class Form:
    """A request's fields by name: ``one`` for a single value, ``many`` for a list."""

    def __init__(self, values: Mapping[str, list[Any]], *, json: bool) -> None:
        self.values = values
        self.json = json

    def one(self, name: str) -> Any:
        """The field's value (a form's last one, as FastAPI reads forms), or None when absent; a JSON array
        where one value is expected is handed over as is, for the route to refuse."""
        values = self.values.get(name) or []
        if self.json and len(values) != 1:
            return values or None
        return values[-1] if values else None

    def many(self, name: str) -> list[Any] | None:
        """The field's values (repeated form fields or a JSON array), or None when absent."""
        return list(self.values.get(name) or []) or None


@contextlib.asynccontextmanager
async def read_form(request: Request, max_part_bytes: int) -> AsyncIterator[Form]:
    """The request's fields, for the duration of the route (uploaded files are closed after)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in FORM_TYPES:
        # A text field may hold a base64 image: let it be as large as the body may be.
        async with request.form(max_part_size=max_part_bytes) as form:
            yield Form({key: form.getlist(key) for key in form}, json=False)
    elif kind == "application/json" or kind.endswith("+json"):
        payload = await json_object(request)  # arrays are lists, anything else one value (null is absent)
        yield Form({k: v if isinstance(v, list) else [v] for k, v in payload.items() if v is not None}, json=True)
    elif not kind and not await request.body():
        yield Form({}, json=False)  # nothing sent: each required field says so
    else:
        raise UnsupportedMediaType(f"send multipart/form-data or application/json, not {kind or 'untyped data'}")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what it is instead."""
    body = await request.body()
    try:  # a body with images in it takes ~15 ms per 10 MB to parse: in a thread, off the event loop
        payload = json.loads(body) if len(body) < INLINE_JSON_BYTES else await asyncio.to_thread(json.loads, body)
    except ValueError:
        raise InvalidInput("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput(f"the JSON body must be an object of fields, not {type(payload).__name__}")
    return payload
