"""HTTP layer: the public BentoML service, and the encoder service it may delegate to.

* ``ClipService`` is the public entry point: a FastAPI app (for exact control over multipart
  parsing, error bodies and headers) whose routes validate input and delegate to
  ``clip_runner.pipeline``, which decodes images in parallel and calls the encoder backend.
* The backend depends on ``CLIP_ENCODER_MODE``:

  - ``inprocess`` (default): ``ClipService`` loads the model itself and micro-batches
    concurrent requests onto it (``clip_runner.batcher``). No hop between processes: this is
    the faster layout on every load level measured (docs/performance.md).
  - ``service``: ``ClipEncoder``, an internal service with two batchable APIs
    (``encode_pixels``, ``encode_texts``) where BentoML's adaptive batching groups requests.

Configuration is read from ``CLIP_*`` environment variables (see ``clip_runner.settings``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from clip_http.backend import ENCODER_GRACE_S, RemoteEncoder, service_configs
from clip_http.handlers import install as install_handlers
from clip_http.uploads import json_response, read_upload, read_uploads, split_categories
from clip_runner.errors import InvalidInput
from clip_runner.pipeline import ClipPipeline, Timings
from clip_runner.settings import get_settings

if TYPE_CHECKING:
    from clip_runner.local import LocalBackend


logger = logging.getLogger("clip_service")
settings = get_settings()
# CLIP_BATCH_SIZE=1 turns adaptive batching off: each call is encoded on its own (benchmarks).
BATCHING = settings.max_batch > 1


def _show_our_logs() -> None:
    """BentoML leaves the root logger at WARNING; our startup facts and warnings are INFO."""
    for name in ("clip_service", "clip_runner", "models"):
        logging.getLogger(name).setLevel(settings.log_level)


BAKED_MODEL_FILE = Path(__file__).with_name("bento_model.json")


def _baked_model_tag() -> str | None:
    """The model tag `make build` baked into a bento (absent in a source checkout)."""
    if not BAKED_MODEL_FILE.is_file():
        return None
    return str(json.loads(BAKED_MODEL_FILE.read_text())["tag"])


MODEL_TAG = settings.model_tag or _baked_model_tag()
# A bento's baked tag applies unless CLIP_MODEL_TAG names another.
SERVED = settings if settings.model_tag or not MODEL_TAG else settings.model_copy(
    update={"model_tag": MODEL_TAG})
IN_PROCESS = settings.encoder_mode == "inprocess"
MODEL_CONFIG, ENTRY_CONFIG = service_configs(settings)


@bentoml.service(name="clip_encoder", **MODEL_CONFIG)
class ClipEncoder:
    """``CLIP_ENCODER_MODE=service``: loads the model once per worker and encodes whole batches."""

    def __init__(self) -> None:
        from clip_runner.drain import DrainGuard
        from clip_runner.local import ServedModel

        _show_our_logs()
        self.served = ServedModel.load(SERVED, settings.encoder_workers)
        self.encoder = self.served.encoder
        self.drain = DrainGuard(max_s=settings.shutdown_drain_s)
        self.drain.install()

    @bentoml.api(batchable=BATCHING, max_batch_size=max(2, settings.max_batch),
                 max_latency_ms=settings.max_latency_ms)
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 preprocessed images → (N, D + 2): unit rows + batch trailer."""
        from clip_runner.encoder import timed, with_trailer

        with self.drain.active(), timed() as elapsed:
            rows = self.encoder.encode_pixels(np.asarray(pixels, dtype=np.uint8))
        return with_trailer(rows, len(rows), elapsed[0])

    @bentoml.api(batchable=BATCHING, max_batch_size=max(2, settings.max_batch),
                 max_latency_ms=settings.max_latency_ms)
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """N texts → (N, D + 2): unit rows + batch trailer."""
        from clip_runner.encoder import timed, with_trailer

        with self.drain.active(), timed() as elapsed:
            rows = self.encoder.encode_texts(texts)
        return with_trailer(rows, len(rows), elapsed[0])

    @bentoml.api
    def ping(self) -> bool:
        """Heartbeat from the public service while it has requests in flight (see DrainGuard)."""
        self.drain.touch()
        return True

    @bentoml.api
    def info(self) -> dict[str, Any]:
        """What is served, where, and why (for /health and the entry service's setup)."""
        return self.served.info({"mode": "service", "max_batch_size": settings.max_batch,
                                 "max_latency_ms": settings.max_latency_ms})


app = FastAPI(
    title="clip-service",
    description="OpenCLIP image and text embeddings, similarity, mismatch detection and "
    "zero-shot classification, with adaptive batching.",
    version="0.1.0",
)
install_handlers(app, lambda: settings)


_SERVICE: ClipService | None = None  # the instance serving in this worker (set in its __init__)


class _InFlight:
    """ASGI: count requests in flight on the serving instance, so that a separate encoder
    does not drain away under them (two-service layout only: in process there is none).

    Plain ASGI: an ``@app.middleware("http")`` function would re-stream every request and
    response through an extra task.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        service = _SERVICE
        if scope["type"] != "http" or service is None:  # not constructed (app driven without BentoML)
            return await self.app(scope, receive, send)
        service.started()
        try:
            await self.app(scope, receive, send)
        finally:
            service.finished()


if not IN_PROCESS:
    app.add_middleware(_InFlight)


@bentoml.service(name="clip_service", **ENTRY_CONFIG)
@bentoml.asgi_app(app, path="/")
class ClipService:
    """Public routes; model work goes to the in-process batcher or the ``ClipEncoder`` service."""

    if MODEL_TAG:  # pinned so that `bentoml build` packs it into the bento
        model_ref = bentoml.models.BentoModel(MODEL_TAG)
    if not IN_PROCESS:
        encoder = bentoml.depends(ClipEncoder)

    def __init__(self) -> None:
        global _SERVICE
        _show_our_logs()
        _SERVICE = self
        self._local: LocalBackend | None = None
        if IN_PROCESS:  # the model's modules load torch: only where the model is served
            from clip_runner.local import LocalBackend

            self._local = LocalBackend.from_settings(SERVED, settings.encoder_workers)
        self._pipeline: ClipPipeline | None = None
        self._lock = asyncio.Lock()
        self._in_flight = 0
        self._heartbeat: asyncio.Task[None] | None = None

    def started(self) -> None:
        """Count a request; while any is in flight, keep a separate encoder from draining away."""
        self._in_flight += 1
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat())

    def finished(self) -> None:
        self._in_flight -= 1

    @functools.cached_property
    def _remote(self) -> RemoteEncoder:
        """The encoder service, with a deadline past its own batch queue limit."""
        return RemoteEncoder(self.encoder, timeout_s=settings.max_latency_ms / 1000 + ENCODER_GRACE_S)

    async def _beat(self) -> None:
        while self._in_flight > 0:
            try:
                await self._remote.ping()
            except Exception as exc:  # the encoder may be gone already; requests will say so
                logger.debug("encoder heartbeat failed: %s", exc)
            await asyncio.sleep(0.5)

    async def pipeline(self) -> ClipPipeline:
        """Built on first use from the encoder's model facts (it starts alongside this service)."""
        if self._pipeline is None:
            async with self._lock:
                if self._pipeline is None:
                    backend = self._local or self._remote
                    self._pipeline = ClipPipeline(backend, settings, await backend.info())
        return self._pipeline

    @app.post("/encode_image")
    async def encode_image(self, image: UploadFile | None = File(None)) -> JSONResponse:
        """One image → its L2-normalised embedding (a JSON array of D floats)."""
        pipe, timings = await self.pipeline(), Timings()
        row = await pipe.image_embedding(await read_upload(image, "image", settings), "image", timings)
        return json_response(row.tolist(), timings)

    @app.post("/encode_images")
    async def encode_images(self, images: list[UploadFile] | None = File(None)) -> JSONResponse:
        """Several images → ``{"embeddings": [...|null], "errors": [null|"why"]}``."""
        pipe, timings = await self.pipeline(), Timings()
        body = await pipe.encode_images(await read_uploads(images, "images", settings), timings)
        return json_response(body, timings)

    @app.post("/encode_text")
    async def encode_text(self, request: Request) -> JSONResponse:
        """``{"text": "..."}`` → one embedding; ``{"text": [...]}`` → one per text."""
        pipe, timings = await self.pipeline(), Timings()
        try:
            payload = await request.json()
        except ValueError:
            raise InvalidInput('body must be JSON like {"text": "..."} or {"text": [...]}') from None
        if not isinstance(payload, dict) or "text" not in payload:
            raise InvalidInput("field 'text' is required", field="text")
        text = payload["text"]
        if isinstance(text, list):
            rows = await pipe.embed_texts(pipe.check_texts(text, "text"), timings)
            return json_response(rows.tolist(), timings)
        rows = await pipe.embed_texts([pipe.check_text(text, "text")], timings)
        return json_response(rows[0].tolist(), timings)

    @app.post("/similarity")
    async def similarity(self, image: UploadFile | None = File(None),
                         texts: list[str] | None = Form(None)) -> JSONResponse:
        """Cosine similarity of one image with 1..N texts, plus softmax probabilities."""
        pipe, timings = await self.pipeline(), Timings()
        checked = pipe.check_texts(texts, "texts")
        body = await pipe.similarity(await read_upload(image, "image", settings), checked, timings)
        return json_response(body, timings)

    async def _analyze(self, upload: UploadFile | None, field: str, text: str | None,
                       threshold: str | None) -> JSONResponse:
        pipe, timings = await self.pipeline(), Timings()
        checked = pipe.check_text(text if text is not None else "", "text") if text else None
        if checked is None:
            raise InvalidInput("field 'text' is required", field="text")
        body = await pipe.analyze(await read_upload(upload, field, settings), checked,
                                  pipe.threshold_for(threshold), timings)
        return json_response(body, timings)

    @app.post("/analyze")
    async def analyze(self, image: UploadFile | None = File(None), text: str | None = Form(None),
                      threshold: str | None = Form(None)) -> JSONResponse:
        """Image–text similarity and a mismatch verdict against the threshold."""
        return await self._analyze(image, "image", text, threshold)

    @app.post("/clip/analyze")
    async def clip_analyze(self, file: UploadFile | None = File(None),
                           text: str | None = Form(None),
                           threshold: str | None = Form(None)) -> JSONResponse:
        """Compatibility path for ``/analyze`` (image field ``file``)."""
        return await self._analyze(file, "file", text, threshold)

    async def _analyze_batch(self, uploads: list[UploadFile] | None, field: str,
                             texts: list[str] | None, threshold: str | None) -> JSONResponse:
        pipe, timings = await self.pipeline(), Timings()
        blobs = await read_uploads(uploads, field, settings)
        checked = pipe.check_texts(texts, "texts", limit=settings.max_images)
        if len(checked) != len(blobs):
            raise InvalidInput(f"got {len(blobs)} images and {len(checked)} texts; "
                               "send one text per image, in the same order", field="texts")
        results = await pipe.analyze_batch(blobs, checked, pipe.threshold_for(threshold), timings)
        return json_response({"results": results}, timings)

    @app.post("/analyze_batch")
    async def analyze_batch(self, images: list[UploadFile] | None = File(None),
                            texts: list[str] | None = Form(None),
                            threshold: str | None = Form(None)) -> JSONResponse:
        """Paired ``images`` and ``texts`` → one analyze result per pair."""
        return await self._analyze_batch(images, "images", texts, threshold)

    @app.post("/clip/analyze-batch")
    async def clip_analyze_batch(self, request: Request) -> JSONResponse:
        """Compatibility path for ``/analyze_batch``: repeated ``file``/``files`` and ``text``/``texts``."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInput("send multipart/form-data with repeated 'file' and 'text' fields; "
                               "image paths or URLs are never read by the server")
        form = await request.form()
        uploads = [u for u in form.getlist("file") + form.getlist("files") if not isinstance(u, str)]
        if len(uploads) != len(form.getlist("file") + form.getlist("files")):
            raise InvalidInput("field 'file' must hold file uploads, not text (paths and URLs are "
                               "never read by the server)", field="file")
        texts = [t for t in form.getlist("text") + form.getlist("texts") if isinstance(t, str)]
        threshold = form.get("threshold")
        return await self._analyze_batch(uploads, "file", texts, threshold if isinstance(threshold, str) else None)  # type: ignore[arg-type]

    async def _classify(self, upload: UploadFile | None, field: str, categories: list[str] | None,
                        top_k: str | None) -> JSONResponse:
        pipe, timings = await self.pipeline(), Timings()
        labels = None
        if categories:
            labels = pipe.check_texts(split_categories(categories), "categories",
                                      limit=settings.max_categories)
        k = pipe.check_top_k(top_k if top_k not in (None, "") else settings.default_top_k)
        body = await pipe.classify(await read_upload(upload, field, settings), labels, k, timings)
        return json_response(body, timings)

    @app.post("/classify")
    async def classify(self, image: UploadFile | None = File(None),
                       categories: list[str] | None = Form(None),
                       top_k: str | None = Form(None)) -> JSONResponse:
        """Zero-shot classification over the default categories or the given ones."""
        return await self._classify(image, "image", categories, top_k)

    @app.post("/clip/classify")
    async def clip_classify(self, file: UploadFile | None = File(None),
                            categories: list[str] | None = Form(None),
                            top_k: str | None = Form(None)) -> JSONResponse:
        """Compatibility path for ``/classify`` (image field ``file``)."""
        return await self._classify(file, "file", categories, top_k)

    @app.get("/categories")
    async def categories(self) -> dict[str, Any]:
        """The default label set used by ``/classify``."""
        pipe = await self.pipeline()
        return {"categories": list(pipe.categories), "count": len(pipe.categories)}

    @app.get("/clip/categories")
    async def clip_categories(self) -> dict[str, Any]:
        """Compatibility path for ``/categories``."""
        return await self.categories()

    @app.get("/health")
    async def health(self) -> JSONResponse:
        """Liveness plus what is served: model, device, embedding size, threshold, batching."""
        try:
            pipe = await self.pipeline()
            info = await pipe.backend.info()
        except Exception as exc:  # the encoder is still starting or has failed
            logger.warning("health: encoder unavailable: %s", exc)
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        body = {k: v for k, v in info.items() if k not in ("preprocess_cfg", "metadata")}
        body.update(status="healthy", threshold=pipe.threshold.value,
                    threshold_source=pipe.threshold.source,
                    image_size=info["metadata"].get("image_size"))
        return JSONResponse(body)

    @app.get("/clip/health")
    async def clip_health(self) -> JSONResponse:
        """Compatibility path for ``/health``."""
        return await self.health()
