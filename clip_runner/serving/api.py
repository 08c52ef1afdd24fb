"""What every route does, in one place: fields → checks → pre → batch → core → post → scores.

:class:`ClipAPI` serves one warm model on the raw fields the routes (``clip_http``) hand it. It
knows nothing of HTTP, and importing it loads neither torch nor open_clip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from ..errors import InputError, InvalidInput, PayloadTooLarge
from ..preprocessing.images import UploadPreparer
from ..runtimes.encoder import unit_rows
from ..settings import ClipSettings
from . import scoring
from .batcher import Batch, DecodeWindow, MicroBatcher
from .fetch import ByteBudget
from .references import FORMS, ImageReferences
from .scoring import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
from .served_model import ServedModel

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


class Upload(Protocol):
    """An uploaded file as the web framework hands it over (e.g. FastAPI's ``UploadFile``)."""

    async def read(self, size: int = -1) -> bytes: ...


ImageField = Upload | str  # an uploaded file, or text standing for an image (see ImageReferences)
Item = tuple[str, Any, str]  # ("text" or "image", the value, its field name) of /v1/embeddings


@dataclasses.dataclass
class Timings:
    """Per-request timings and batch facts, reported as response headers and metrics."""

    decode_ms: float = 0.0
    image_batch: int = 0
    text_batch: int = 0
    infer_ms: float = 0.0
    queue_ms: float = 0.0  # waiting for the model: batcher call minus inference

    def add(self, batch: Batch, kind: str, call_ms: float) -> None:
        self.infer_ms += batch.infer_ms
        self.queue_ms += max(0.0, call_ms - batch.infer_ms)
        if kind == "image":
            self.image_batch = max(self.image_batch, batch.size)
        else:
            self.text_batch = max(self.text_batch, batch.size)

    @property
    def batch_size(self) -> int:
        """The batch the request's primary item ran in: its image if any, else its texts."""
        return self.image_batch or self.text_batch


class ClipAPI:
    """The routes' logic over one served model."""

    def __init__(self, model: ServedModel, settings: ClipSettings) -> None:
        self.model = model
        self.settings = settings
        entry = model.encoder.entry
        metadata = entry.metadata
        self._prepare = UploadPreparer.from_settings(entry.preprocess_cfg, settings)
        self.references = ImageReferences.from_settings(settings)
        self.max_batch = settings.max_batch  # resolved once: it may probe the device
        self.embedding_size = entry.embedding_size
        self.scorer = scoring.Scorer.of(metadata)
        self.threshold = scoring.resolve_threshold(settings, metadata)
        self.categories: tuple[str, ...] = tuple(metadata.get("categories") or DEFAULT_CATEGORIES)
        self.labels = scoring.LabelCache(metadata.get("prompt_templates") or DEFAULT_TEMPLATES)
        self.decode_threads = settings.decode_thread_count
        self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        self.batcher = MicroBatcher(model.encoder.image_features, model.encoder.text_features,
                                    self.max_batch, name="clip-model")
        self.window = DecodeWindow(2 * self.max_batch)

    def close(self) -> None:
        """Finish queued work, stop the model thread and the decode threads."""
        self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- fields -----------------------------------------------------------------------------

    async def read_upload(self, upload: ImageField | None, field: str, budget: ByteBudget | None = None) -> bytes:
        """An image field's bytes; nothing is read past the limit (nor, for URLs, past the request's ``budget``)."""
        if upload is None:
            raise InvalidInput(f"field '{field}' is required: send the image as a file, or as {FORMS}", field=field)
        if not hasattr(upload, "read"):  # text (JSON or a form's text field): base64, data: URI or URL
            return await self.references.read(upload, field, budget)
        limit = self.settings.max_image_bytes
        if len(data := await upload.read(limit + 1)) > limit:
            raise PayloadTooLarge(f"field '{field}': upload is larger than the limit of "
                                  f"{limit / 1e6:.1f} MB (CLIP_MAX_IMAGE_BYTES)", field=field)
        return data

    async def read_uploads(self, uploads: Sequence[ImageField] | None, field: str) -> list[bytes]:
        """1..CLIP_MAX_IMAGES image fields; one that cannot be read fails the request (the caller's contract)."""
        if not uploads:
            raise InvalidInput(f"field '{field}' is required: send one or more images", field=field)
        if len(uploads) > self.settings.max_images:
            raise InvalidInput(f"field '{field}' has {len(uploads)} images; the limit is "
                               f"{self.settings.max_images} (CLIP_MAX_IMAGES)", field=field)
        return await self._read_all([(u, f"{field}[{i}]") for i, u in enumerate(uploads)], field)

    async def _read_all(self, fields: Sequence[tuple[ImageField, str]], field: str) -> list[bytes]:
        """Read image fields concurrently, within one byte budget named ``field``; the first failure in
        order is raised and stops the others."""
        budget = ByteBudget(self.settings.max_request_bytes, field)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.read_upload(value, field, budget)) for value, field in fields]
        except ExceptionGroup as failed:
            order = {field: i for i, (_, field) in enumerate(fields)}
            first = min(failed.exceptions, key=lambda e: order.get(getattr(e, "field", None), -1))
            raise first from None
        return [task.result() for task in tasks]

    def check_text(self, text: Any, field: str) -> str:
        """A non-empty string within the length limit, without control characters."""
        if not isinstance(text, str):
            raise InvalidInput(f"field '{field}' must be a string, got {type(text).__name__}", field=field)
        if not text.strip():
            raise InvalidInput(f"field '{field}' is empty", field=field)
        if len(text) > self.settings.max_text_chars:
            raise InvalidInput(f"field '{field}' is {len(text)} characters; the limit is "
                               f"{self.settings.max_text_chars}", field=field)
        if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text):
            raise InvalidInput(f"field '{field}' contains control characters (e.g. NUL)", field=field)
        return text

    def check_texts(self, texts: Any, field: str, *, limit: int | None = None) -> list[str]:
        """1..limit valid texts; a single JSON-array string is accepted as a list."""
        texts = parse_list_field(texts)
        limit = limit or self.settings.max_texts
        if not texts:
            raise InvalidInput(f"field '{field}' needs at least one text", field=field)
        if len(texts) > limit:
            raise InvalidInput(f"field '{field}' has {len(texts)} items; the limit is {limit}", field=field)
        return [self.check_text(t, f"{field}[{i}]") for i, t in enumerate(texts)]

    def threshold_for(self, override: Any) -> scoring.Threshold:
        """The request's ``threshold`` field, else the served one."""
        if override is None or override == "":
            return self.threshold
        try:
            value = float(override)
        except (TypeError, ValueError):
            raise InvalidInput("field 'threshold' must be a number", field="threshold") from None
        low = 0.0 if self.scorer.sigmoid else -1.0  # a probability, or a cosine
        if not low <= value <= 1.0:
            raise InvalidInput(f"field 'threshold' must be between {low:g} and 1", field="threshold")
        return scoring.Threshold(value, "request")

    @staticmethod
    def check_top_k(top_k: Any) -> int:
        """The ``top_k`` field, default 5."""
        if top_k is None or top_k == "":
            return DEFAULT_TOP_K
        try:
            if isinstance(top_k, bool) or (isinstance(top_k, float) and not top_k.is_integer()):
                raise ValueError(top_k)  # JSON true or 2.5 is not a count
            value = int(top_k)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput("field 'top_k' must be an integer", field="top_k") from None
        if not 1 <= value <= 1000:
            raise InvalidInput("field 'top_k' must be between 1 and 1000", field="top_k")
        return value

    # ---- pre: decode and tokenize, in the thread pool -------------------------------------------

    async def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids of checked texts, in a decode thread: the one tokenization a text gets."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.model.encoder.tokenize, list(texts))

    async def prepare(self, blobs: Sequence[bytes], fields: Sequence[str], timings: Timings) -> list[Any]:
        """Decode images in parallel (one field name each): pixels, or the InputError in place."""
        start, loop = time.perf_counter(), asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self._pool, self._prepare, blob, field)
                                         for blob, field in zip(blobs, fields, strict=True)), return_exceptions=True)
        timings.decode_ms += (time.perf_counter() - start) * 1000
        if bug := next((r for r in results if isinstance(r, BaseException) and not isinstance(r, InputError)), None):
            raise bug
        return results

    # ---- core (the batcher's model thread) and post ----------------------------------------

    async def embed_texts(self, texts: Sequence[str], timings: Timings | None = None) -> np.ndarray:
        """Unit text embeddings (N, D) of checked texts."""
        return await self._embed("text", await self.tokenize(texts), timings)

    async def _embed(self, kind: str, items: np.ndarray, timings: Timings | None) -> np.ndarray:
        """Unit embeddings (N, D), sent in chunks no larger than the max batch size."""
        submit = self.batcher.image_features if kind == "image" else self.batcher.text_features
        chunks = [np.zeros((0, self.embedding_size), np.float32)]
        for i in range(0, len(items), self.max_batch):
            start = time.perf_counter()
            batch = await submit(items[i : i + self.max_batch])
            if timings is not None:
                timings.add(batch, kind, (time.perf_counter() - start) * 1000)
            chunks.append(unit_rows(batch.rows))
        return np.concatenate(chunks)

    async def _image_rows(self, blobs: Sequence[bytes], fields: Sequence[str],
                          timings: Timings) -> list[np.ndarray | InputError]:
        """One unit row per image, or the InputError its bytes raised (the others still run). Decoding
        starts once the decode window has room: it runs one batch ahead of the model, no further."""
        async with self.window.hold(len(blobs)) as waited_ms:
            timings.queue_ms += waited_ms
            prepared = await self.prepare(blobs, fields, timings)
            good = [p for p in prepared if not isinstance(p, InputError)]
            rows = iter(await self._embed("image", np.stack(good), timings)) if good else iter(())
        return [p if isinstance(p, InputError) else next(rows) for p in prepared]

    async def _image_row(self, upload: ImageField | None, field: str, timings: Timings) -> np.ndarray:
        (row,) = await self._image_rows([await self.read_upload(upload, field)], [field], timings)
        if isinstance(row, InputError):
            raise row
        return row

    # ---- routes -----------------------------------------------------------------------------

    async def encode_image(self, upload: ImageField | None, field: str, timings: Timings) -> list[float]:
        """``/encode_image``: one upload → its unit embedding."""
        return (await self._image_row(upload, field, timings)).tolist()

    async def encode_images(self, uploads: Sequence[ImageField] | None, field: str,
                            timings: Timings) -> dict[str, Any]:
        """``/encode_images``: ``{"embeddings": [...|None], "errors": [None|"why"]}``."""
        blobs = await self.read_uploads(uploads, field)
        rows = await self._image_rows(blobs, [f"{field}[{i}]" for i in range(len(blobs))], timings)
        return {"embeddings": [None if isinstance(r, InputError) else r.tolist() for r in rows],
                "errors": [r.message if isinstance(r, InputError) else None for r in rows]}

    async def encode_text(self, body: bytes, timings: Timings) -> list[float] | list[list[float]]:
        """``/encode_text``: JSON ``{"text": "..."}`` → one embedding, ``{"text": [...]}`` → one each."""
        try:
            payload = json.loads(body)
        except ValueError:
            raise InvalidInput('body must be JSON like {"text": "..."} or {"text": [...]}') from None
        if not isinstance(payload, dict) or "text" not in payload:
            raise InvalidInput("field 'text' is required", field="text")
        text = payload["text"]
        if isinstance(text, list):
            return (await self.embed_texts(self.check_texts(text, "text"), timings)).tolist()
        return (await self.embed_texts([self.check_text(text, "text")], timings))[0].tolist()

    async def similarity(self, upload: ImageField | None, texts: Any, timings: Timings) -> dict[str, Any]:
        """``/similarity``: cosine of one image with 1..N texts, plus the model's probabilities."""
        checked = self.check_texts(texts, "texts")
        image, text_rows = await asyncio.gather(
            self._image_row(upload, "image", timings), self.embed_texts(checked, timings))
        results = scoring.similarity_scores(image, checked, text_rows, self.scorer)
        return {
            "results": results,
            "similarities": [r["similarity"] for r in results],
            "probabilities": [r["probability"] for r in results],
            "best_match": max(results, key=lambda r: r["probability"])["text"],
        }

    async def analyze(self, upload: ImageField | None, field: str, text: Any, threshold: Any,
                      timings: Timings) -> dict[str, Any]:
        """``/analyze``: image–text similarity and the mismatch verdict."""
        if not text:
            raise InvalidInput("field 'text' is required", field="text")
        checked, limit = self.check_text(text, "text"), self.threshold_for(threshold)
        image, text_rows = await asyncio.gather(
            self._image_row(upload, field, timings), self.embed_texts([checked], timings))
        return {"text": checked, **scoring.analyze_pair(float(text_rows[0] @ image), limit, self.scorer)}

    async def analyze_batch(self, uploads: Sequence[ImageField] | None, field: str, texts: Any,
                            threshold: Any, timings: Timings) -> dict[str, Any]:
        """``/analyze_batch``: one analyze result per (image, text) pair; a bad image fails its pair."""
        checked = self.check_texts(texts, "texts", limit=self.settings.max_images)
        if uploads and len(checked) != len(uploads):  # checked before any image is read or fetched
            raise InvalidInput(f"got {len(uploads)} images and {len(checked)} texts; "
                               "send one text per image, in the same order", field="texts")
        limit = self.threshold_for(threshold)
        blobs = await self.read_uploads(uploads, field)
        rows, text_rows = await asyncio.gather(
            self._image_rows(blobs, [f"{field}[{i}]" for i in range(len(blobs))], timings),
            self.embed_texts(checked, timings))
        results = [{"text": text, "error": row.message, "status": row.status} if isinstance(row, InputError)
                   else {"text": text, **scoring.analyze_pair(float(row @ text_row), limit, self.scorer)}
                   for text, row, text_row in zip(checked, rows, text_rows, strict=True)]
        return {"results": results}

    async def classify(self, upload: ImageField | None, field: str, categories: Any, top_k: Any,
                       timings: Timings) -> dict[str, Any]:
        """``/classify``: zero-shot over the request's categories, else the served label set."""
        labels = self.categories
        if categories:
            labels = tuple(self.check_texts(split_categories(categories), "categories",
                                            limit=self.settings.max_categories))
        k = self.check_top_k(top_k)
        image, label_rows = await asyncio.gather(
            self._image_row(upload, field, timings), self.labels.get(labels, self.embed_texts))
        ranked = scoring.rank_labels(image, labels, label_rows, self.scorer, min(k, len(labels)))
        return {
            "predictions": ranked,
            "top_category": ranked[0]["category"],
            "categories_source": "request" if categories else "default",
            "num_categories": len(labels),
        }

    async def embed(self, items: Sequence[Item], timings: Timings) -> tuple[np.ndarray, list[int]]:
        """``/v1/embeddings``: texts and images in one list → unit rows in order, and the tokens of each
        (0 for an image). Any bad item fails the request, named by its field (OpenAI's contract)."""
        texts = [(i, self.check_text(value, field)) for i, (kind, value, field) in enumerate(items) if kind == "text"]
        images = [(i, value, field) for i, (kind, value, field) in enumerate(items) if kind == "image"]
        for kind, count, limit, name in (("texts", len(texts), self.settings.max_texts, "CLIP_MAX_TEXTS"),
                                         ("images", len(images), self.settings.max_images, "CLIP_MAX_IMAGES")):
            if count > limit:
                raise InvalidInput(f"{count} {kind} in one request; the limit is {limit} ({name})", field="input")
        blobs = await self._read_all([(value, field) for _, value, field in images], "input")
        ids = await self.tokenize([text for _, text in texts]) if texts else np.zeros((0, 1), np.int64)
        image_rows, text_rows = await asyncio.gather(
            self._image_rows(blobs, [field for _, _, field in images], timings), self._embed("text", ids, timings))
        for row in image_rows:
            if isinstance(row, InputError):
                raise row
        rows = np.zeros((len(items), self.embedding_size), np.float32)
        for (i, _, _), row in zip(images, image_rows, strict=True):
            rows[i] = row
        rows[[i for i, _ in texts]] = text_rows
        counts = dict(zip((i for i, _ in texts), self.model.encoder.token_counts(ids), strict=True))
        return rows, [counts.get(i, 0) for i in range(len(items))]

    def categories_body(self) -> dict[str, Any]:
        """``/categories``: the default label set."""
        return {"categories": list(self.categories), "count": len(self.categories)}

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/health``: (status, body): what is served, where and how; 503 once the model thread stopped."""
        if not self.batcher.alive:
            return 503, {"status": "unavailable", "error": "the model thread has stopped; restart the server"}
        return 200, {"status": "healthy", **self.model.info(), "scores": dataclasses.asdict(self.scorer),
                     "threshold": self.threshold.value,
                     "threshold_source": self.threshold.source, "image_urls": self.references.url_policy,
                     "batching": {"max_batch_size": self.max_batch, "workers": self.settings.workers,
                                  "decode_threads": self.decode_threads}}


def parse_list_field(value: Any) -> list[Any]:
    """A form field that may arrive repeated, as one JSON array string, or as a single value."""
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped.startswith("["):
            return [value]
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            raise InvalidInput("a list field holds invalid JSON") from None
        if not isinstance(parsed, list):
            raise InvalidInput("a list field must be a JSON array")
        return parsed
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], str) and value[0].strip().startswith("["):
            return parse_list_field(value[0])
        return list(value)
    return [value]


def split_categories(values: Any) -> list[Any]:
    """Categories may come repeated, as a JSON array, or comma-separated in one field."""
    items = parse_list_field(values)
    if len(items) == 1 and isinstance(items[0], str) and "," in items[0]:
        items = [part.strip() for part in items[0].split(",") if part.strip()]
    return items
