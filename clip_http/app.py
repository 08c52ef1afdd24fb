"""The HTTP routes: each reads its fields and hands them to :class:`clip_runner.api.ClipAPI`.

The app is plain FastAPI (exact control over multipart parsing, error bodies and headers).
``service.py`` mounts it in the BentoML service, whose worker puts the loaded ``ClipAPI`` in
``app.state.api``; :func:`local_app` does the same in any process (the in-process client), so
both run exactly these routes. Importing this module loads neither torch nor open_clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from clip_runner.api import ClipAPI, Timings
from clip_runner.errors import InvalidInput
from clip_runner.settings import ClipSettings

from .middleware import install

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


def _api(request: Request) -> ClipAPI:
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


def create_app(settings: ClipSettings) -> FastAPI:
    """The routes behind the guards that ``settings`` configure; ``app.state.api`` serves them."""
    app = FastAPI(title="clip-service", version="0.1.0",
                  description="OpenCLIP image and text embeddings, similarity, mismatch detection "
                  "and zero-shot classification, with adaptive batching.")
    install(app, api_key=settings.api_key, max_request_bytes=settings.max_request_bytes,
            max_concurrency=settings.max_concurrency)
    for method, path, handler in ROUTES:
        app.add_api_route(path, handler, methods=[method])
    return app


Api = Depends(_api)


async def encode_image(image: UploadFile | None = File(None), api: ClipAPI = Api) -> JSONResponse:
    """One image → its L2-normalised embedding (a JSON array of D floats)."""
    return await respond(lambda t: api.encode_image(image, "image", t))


async def encode_images(images: list[UploadFile] | None = File(None), api: ClipAPI = Api) -> JSONResponse:
    """Several images → ``{"embeddings": [...|null], "errors": [null|"why"]}``."""
    return await respond(lambda t: api.encode_images(images, "images", t))


async def encode_text(request: Request, api: ClipAPI = Api) -> JSONResponse:
    """``{"text": "..."}`` → one embedding; ``{"text": [...]}`` → one per text."""
    body = await request.body()
    return await respond(lambda t: api.encode_text(body, t))


async def similarity(image: UploadFile | None = File(None), texts: list[str] | None = Form(None),
                     api: ClipAPI = Api) -> JSONResponse:
    """Cosine similarity of one image with 1..N texts, plus softmax probabilities."""
    return await respond(lambda t: api.similarity(image, texts, t))


async def analyze(image: UploadFile | None = File(None), text: str | None = Form(None),
                  threshold: str | None = Form(None), api: ClipAPI = Api) -> JSONResponse:
    """Image–text similarity and a mismatch verdict against the threshold."""
    return await respond(lambda t: api.analyze(image, "image", text, threshold, t))


async def clip_analyze(file: UploadFile | None = File(None), text: str | None = Form(None),
                       threshold: str | None = Form(None), api: ClipAPI = Api) -> JSONResponse:
    """Compatibility path for ``/analyze`` (image field ``file``)."""
    return await respond(lambda t: api.analyze(file, "file", text, threshold, t))


async def analyze_batch(images: list[UploadFile] | None = File(None), texts: list[str] | None = Form(None),
                        threshold: str | None = Form(None), api: ClipAPI = Api) -> JSONResponse:
    """Paired ``images`` and ``texts`` → one analyze result per pair."""
    return await respond(lambda t: api.analyze_batch(images, "images", texts, threshold, t))


async def clip_analyze_batch(request: Request, api: ClipAPI = Api) -> JSONResponse:
    """Compatibility path for ``/analyze_batch``: repeated ``file``/``files`` and ``text``/``texts``."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send multipart/form-data with repeated 'file' and 'text' fields; "
                           "image paths or URLs are never read by the server")
    form = await request.form()
    files = form.getlist("file") + form.getlist("files")
    if any(isinstance(f, str) for f in files):
        raise InvalidInput("field 'file' must hold file uploads, not text (paths and URLs are "
                           "never read by the server)", field="file")
    texts = [t for t in form.getlist("text") + form.getlist("texts") if isinstance(t, str)]
    threshold = form.get("threshold")
    threshold = threshold if isinstance(threshold, str) else None
    return await respond(lambda t: api.analyze_batch(files, "file", texts, threshold, t))  # type: ignore[arg-type]


async def classify(image: UploadFile | None = File(None), categories: list[str] | None = Form(None),
                   top_k: str | None = Form(None), api: ClipAPI = Api) -> JSONResponse:
    """Zero-shot classification over the default categories or the given ones."""
    return await respond(lambda t: api.classify(image, "image", categories, top_k, t))


async def clip_classify(file: UploadFile | None = File(None), categories: list[str] | None = Form(None),
                        top_k: str | None = Form(None), api: ClipAPI = Api) -> JSONResponse:
    """Compatibility path for ``/classify`` (image field ``file``)."""
    return await respond(lambda t: api.classify(file, "file", categories, top_k, t))


async def categories(api: ClipAPI = Api) -> dict[str, Any]:
    """The default label set used by ``/classify``."""
    return api.categories_body()


async def health(request: Request) -> JSONResponse:
    """Liveness plus what is served: model, device, precision, embedding size, threshold, batching."""
    api: ClipAPI | None = getattr(request.app.state, "api", None)
    if api is None:
        return JSONResponse({"status": "starting", "error": "the model is loading"}, status_code=503)
    status, body = api.health()
    return JSONResponse(body, status_code=status)


ROUTES: tuple[tuple[str, str, Callable[..., Any]], ...] = (
    ("POST", "/encode_image", encode_image), ("POST", "/encode_images", encode_images),
    ("POST", "/encode_text", encode_text), ("POST", "/similarity", similarity),
    ("POST", "/analyze", analyze), ("POST", "/analyze_batch", analyze_batch),
    ("POST", "/classify", classify), ("GET", "/categories", categories), ("GET", "/health", health),
    ("POST", "/clip/analyze", clip_analyze), ("POST", "/clip/analyze-batch", clip_analyze_batch),
    ("POST", "/clip/classify", clip_classify), ("GET", "/clip/categories", categories),
    ("GET", "/clip/health", health),
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
