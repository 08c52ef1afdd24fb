"""The HTTP routes: each reads its fields and hands them to :class:`clip_runner.api.ClipAPI`.

The app is plain FastAPI (exact control over multipart parsing, error bodies and headers).
Every image route takes the same field names as a multipart form (files, repeated text fields)
or as a JSON object (images as base64, a ``data:`` URI or, when enabled, a URL; lists as
arrays): :func:`read_form` gives a :class:`Form` over either, so a route's logic never knows
which it got and answers the same. ``clip_http.openai_api`` adds OpenAI's ``/v1`` routes.
``service.py`` mounts it in the BentoML service, whose worker puts the loaded ``ClipAPI`` in
``app.state.api``; :func:`local_app` does the same in any process (the in-process client), so
both run exactly these routes. Importing this module loads neither torch nor open_clip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clip_runner.api import ClipAPI, Timings
from clip_runner.errors import InvalidInput, UnsupportedMediaType
from clip_runner.settings import ClipSettings

from .middleware import install
from .openapi import request_body

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# What Server-Timing reports per request, on BentoML's /metrics (its collector merges workers).
DECODE_MS = bentoml.metrics.Histogram(
    name="clip_decode_ms", documentation="Milliseconds decoding and preprocessing a request's images.",
    buckets=_MS_BUCKETS)
QUEUE_MS = bentoml.metrics.Histogram(
    name="clip_queue_wait_ms", documentation="Milliseconds a request waited for the model.",
    buckets=_MS_BUCKETS)
INFER_MS = bentoml.metrics.Histogram(
    name="clip_inference_ms", documentation="Model milliseconds of the batches a request ran in.",
    buckets=_MS_BUCKETS)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="clip_request_batch_size", documentation="Size of the adaptive batch a request's items ran in.",
    labelnames=["kind"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

Route = Callable[[Timings], Awaitable[Any]]


def api_of(request: Request) -> ClipAPI:
    """The loaded model's API, which the serving worker put in ``app.state.api``."""
    return request.app.state.api  # type: ignore[no-any-return]


async def respond(route: Route) -> JSONResponse:
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
    return JSONResponse(body, headers={
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

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Form:
        """A JSON object: arrays are lists, anything else one value (null is absent)."""
        return cls({k: v if isinstance(v, list) else [v] for k, v in payload.items() if v is not None}, json=True)

    def one(self, name: str) -> Any:
        """The field's value (a form's last one, as FastAPI reads forms), or None when absent.

        A JSON array where one value is expected is handed over as is, for the route to refuse."""
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
        yield Form.from_json(await json_object(request))
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


def create_app(settings: ClipSettings) -> FastAPI:
    """The routes behind the guards that ``settings`` configure; ``app.state.api`` serves them."""
    app = FastAPI(title="clip-service", version="0.1.0",
                  description="OpenCLIP image and text embeddings, similarity, mismatch detection "
                  "and zero-shot classification, with adaptive batching. Image routes take a multipart "
                  "form or JSON with base64 images; /v1/embeddings speaks OpenAI's embeddings API.")
    install(app, api_key=settings.api_key, max_request_bytes=settings.max_request_bytes,
            max_concurrency=settings.max_concurrency, cors_origins=settings.cors_origins)
    from . import openai_api  # it builds on this module's helpers

    for method, path, handler, body in ROUTES + openai_api.ROUTES:
        app.add_api_route(path, handler, methods=[method], openapi_extra=body)
    path, handler, methods = openai_api.CATCH_ALL
    app.add_api_route(path, handler, methods=methods, include_in_schema=False)
    return app


FormLogic = Callable[..., Awaitable[Any]]  # (api, form, timings, **bound) → the answer's body


def form_route(logic: FormLogic, **bound: str) -> Callable[[Request], Awaitable[JSONResponse]]:
    """A route that reads its fields (multipart or JSON) and runs ``logic`` on them (and ``bound``)."""
    async def route(request: Request) -> JSONResponse:
        api = api_of(request)
        async with read_form(request, api.settings.max_request_bytes) as form:
            return await respond(lambda t: logic(api, form, t, **bound))

    # OpenAPI's operation name and text.
    route.__name__, route.__doc__ = "_".join([logic.__name__, *bound.values()]), logic.__doc__
    return route


def encode_image(api: ClipAPI, form: Form, t: Timings) -> Awaitable[Any]:
    """One image → its L2-normalised embedding (a JSON array of D floats)."""
    return api.encode_image(form.one("image"), "image", t)


def encode_images(api: ClipAPI, form: Form, t: Timings) -> Awaitable[Any]:
    """Several images → ``{"embeddings": [...|null], "errors": [null|"why"]}``."""
    return api.encode_images(form.many("images"), "images", t)


async def encode_text(request: Request) -> JSONResponse:
    """``{"text": "..."}`` → one embedding; ``{"text": [...]}`` → one per text."""
    body = await request.body()
    return await respond(lambda t: api_of(request).encode_text(body, t))


def similarity(api: ClipAPI, form: Form, t: Timings) -> Awaitable[Any]:
    """Cosine similarity of one image with 1..N texts, plus softmax probabilities."""
    return api.similarity(form.one("image"), form.many("texts"), t)


def analyze(api: ClipAPI, form: Form, t: Timings, field: str = "image") -> Awaitable[Any]:
    """Image–text similarity and a mismatch verdict against the threshold."""
    return api.analyze(form.one(field), field, form.one("text"), form.one("threshold"), t)


def analyze_batch(api: ClipAPI, form: Form, t: Timings) -> Awaitable[Any]:
    """Paired ``images`` and ``texts`` → one analyze result per pair."""
    return api.analyze_batch(form.many("images"), "images", form.many("texts"), form.one("threshold"), t)


def clip_analyze_batch(api: ClipAPI, form: Form, t: Timings) -> Awaitable[Any]:
    """Compatibility path for ``/analyze_batch``: repeated ``file``/``files`` and ``text``/``texts``."""
    if form.many("items"):
        raise InvalidInput("'items' is not read: image paths are never read by the server; send the images "
                           "in 'file' (files, base64 or URLs) and their texts in 'text'", field="items")
    files = (form.many("file") or []) + (form.many("files") or [])
    texts = (form.many("text") or []) + (form.many("texts") or [])
    return api.analyze_batch(files, "file", texts, form.one("threshold"), t)


def classify(api: ClipAPI, form: Form, t: Timings, field: str = "image") -> Awaitable[Any]:
    """Zero-shot classification over the default categories or the given ones."""
    return api.classify(form.one(field), field, form.many("categories"), form.one("top_k"), t)


async def categories(request: Request) -> dict[str, Any]:
    """The default label set used by ``/classify``."""
    return api_of(request).categories_body()


async def health(request: Request) -> JSONResponse:
    """Liveness plus what is served: model, device, precision, embedding size, threshold, batching."""
    api: ClipAPI | None = getattr(request.app.state, "api", None)
    if api is None:
        return JSONResponse({"status": "starting", "error": "the model is loading"}, status_code=503)
    status, body = api.health()
    return JSONResponse(body, status_code=status)


_ANALYZE = {"text": "text", "threshold": "number?"}
_CLASSIFY = {"categories": "texts?", "top_k": "integer?"}
# (method, path, handler, OpenAPI request body): image routes take a form or JSON, documented both ways;
# the /clip/* compatibility paths are the same logic with the image in field ``file``.
ROUTES: tuple[tuple[str, str, Callable[..., Any], dict[str, Any] | None], ...] = (
    ("POST", "/encode_image", form_route(encode_image), request_body({"image": "image"})),
    ("POST", "/encode_images", form_route(encode_images), request_body({"images": "images"})),
    ("POST", "/encode_text", encode_text, request_body({"text": "texts"}, form=False)),
    ("POST", "/similarity", form_route(similarity), request_body({"image": "image", "texts": "texts"})),
    ("POST", "/analyze", form_route(analyze), request_body({"image": "image", **_ANALYZE})),
    ("POST", "/analyze_batch", form_route(analyze_batch),
     request_body({"images": "images", "texts": "texts", "threshold": "number?"})),
    ("POST", "/classify", form_route(classify), request_body({"image": "image", **_CLASSIFY})),
    ("GET", "/categories", categories, None), ("GET", "/health", health, None),
    ("POST", "/clip/analyze", form_route(analyze, field="file"), request_body({"file": "image", **_ANALYZE})),
    ("POST", "/clip/analyze-batch", form_route(clip_analyze_batch), request_body(
        {"file": "images", "files": "images?", "text": "texts", "texts": "texts?", "threshold": "number?"})),
    ("POST", "/clip/classify", form_route(classify, field="file"), request_body({"file": "image", **_CLASSIFY})),
    ("GET", "/clip/categories", categories, None), ("GET", "/clip/health", health, None),
)


@dataclasses.dataclass
class LocalApp:
    """The service's app over a model loaded in this process (the in-process client drives it)."""

    app: FastAPI
    api: ClipAPI

    def close(self) -> None:
        """Finish queued work and stop the model and decode threads."""
        self.api.close()


def local_app(settings: ClipSettings | None = None) -> LocalApp:
    """Load the configured model here and serve it through the very routes of the service.

    No API key is asked for in process: the caller already holds the model.
    """
    settings = (settings or ClipSettings()).model_copy(update={"api_key": None})
    app = create_app(settings)
    app.state.api = ClipAPI.load(settings)
    return LocalApp(app, app.state.api)
