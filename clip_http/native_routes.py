"""The native routes (``/encode_image`` … ``/health``) and the ``/clip/*`` compatibility paths.

Each image route reads its fields (:class:`~clip_http.common.Form`, multipart or JSON) and hands
them to :class:`~clip_runner.serving.ClipAPI`; the ``/clip/*`` paths are the same logic with the
image in field ``file``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from clip_runner.errors import InvalidInput
from clip_runner.serving import ClipAPI, Timings

from .common import Form, RouteTable, api_of, read_form, respond
from .schemas import request_body

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
    """Cosine similarity of one image with 1..N texts, plus the model's probabilities (softmax or sigmoid)."""
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
ROUTES: RouteTable = (
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
