"""Request-level logic between HTTP and the batched encoder.

:class:`ClipPipeline` validates inputs, decodes and preprocesses images in a thread pool
(per request, in parallel, outside the batched model call), sends pixels/texts to an
:class:`EncoderBackend` (the batchable BentoML service, or an in-process encoder in tests and
the local client) and turns embeddings into the contract's scores. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from . import scoring
from .categories import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
from .device import cpu_share
from .encoder import split_trailer
from .errors import InputError, InvalidInput
from .preprocess import UploadPreparer
from .settings import ClipSettings


class EncoderBackend(Protocol):
    """What the pipeline needs from a batched encoder. Rows come back with the batch trailer."""

    async def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    async def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    async def info(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class Encoded:
    """Unit embeddings plus how they were served."""

    rows: np.ndarray
    batch_size: int = 0
    infer_ms: float = 0.0


@dataclasses.dataclass
class Timings:
    """Per-request timings and batch facts, reported as response headers."""

    decode_ms: float = 0.0
    image_batch: int = 0
    text_batch: int = 0
    infer_ms: float = 0.0
    queue_ms: float = 0.0  # waiting for a batch slot plus transport: encoder call minus inference

    def add(self, encoded: Encoded, kind: str, call_ms: float = 0.0) -> None:
        self.infer_ms += encoded.infer_ms
        self.queue_ms += max(0.0, call_ms - encoded.infer_ms)
        if kind == "image":
            self.image_batch = max(self.image_batch, encoded.batch_size)
        else:
            self.text_batch = max(self.text_batch, encoded.batch_size)

    @property
    def batch_size(self) -> int:
        """The batch the request's primary item ran in: its image if any, else its texts."""
        return self.image_batch or self.text_batch


class ClipPipeline:
    """Validation, preprocessing and scoring for one served model."""

    def __init__(self, backend: EncoderBackend, settings: ClipSettings, info: dict[str, Any]) -> None:
        self.backend = backend
        self.settings = settings
        self.info = info
        metadata = info.get("metadata", {})
        self._prepare = UploadPreparer.from_settings(info["preprocess_cfg"], settings)
        self.draft_side = self._prepare.draft_side
        self.max_batch = settings.max_batch  # resolved once: it may probe the device
        self.logit_scale = float(metadata.get("logit_scale", 100.0))
        self.threshold = scoring.resolve_threshold(settings, metadata)
        self.categories: tuple[str, ...] = tuple(metadata.get("categories") or DEFAULT_CATEGORIES)
        self.labels = scoring.LabelCache(metadata.get("prompt_templates") or DEFAULT_TEMPLATES)
        self.decode_threads = decode_threads(settings)
        self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")

    def close(self) -> None:
        """Stop the decode threads, and the backend's model thread when it has one."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    # ---- validation -------------------------------------------------------------------------

    def check_text(self, text: Any, field: str) -> str:
        """A non-empty string within the length limit, without control characters."""
        if not isinstance(text, str):
            raise InvalidInput(f"field '{field}' must be a string, got {type(text).__name__}", field=field)
        if not text.strip():
            raise InvalidInput(f"field '{field}' is empty", field=field)
        if len(text) > self.settings.max_text_chars:
            raise InvalidInput(
                f"field '{field}' is {len(text)} characters; the limit is "
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

    def check_top_k(self, top_k: Any) -> int:
        try:
            value = int(top_k)
        except (TypeError, ValueError):
            raise InvalidInput("field 'top_k' must be an integer", field="top_k") from None
        if not 1 <= value <= 1000:
            raise InvalidInput("field 'top_k' must be between 1 and 1000", field="top_k")
        return value

    # ---- images -----------------------------------------------------------------------------

    async def prepare(self, data: bytes, field: str, timings: Timings) -> np.ndarray:
        """Decode + preprocess one upload off the event loop; raises an InputError for bad bytes."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, self._prepare, data, field)
        finally:
            timings.decode_ms += (time.perf_counter() - start) * 1000

    async def prepare_many(
        self, blobs: Sequence[bytes], field: str, timings: Timings
    ) -> list[np.ndarray | InputError]:
        """Decode several uploads in parallel; a failure is returned in place, not raised."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(self._pool, self._prepare, blob, f"{field}[{i}]")
            for i, blob in enumerate(blobs)
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        timings.decode_ms += (time.perf_counter() - start) * 1000
        out: list[np.ndarray | InputError] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, InputError):
                raise result
            out.append(result)  # type: ignore[arg-type]
        return out

    # ---- encoding ---------------------------------------------------------------------------

    async def embed_pixels(self, pixels: Sequence[np.ndarray], timings: Timings) -> np.ndarray:
        """Unit image embeddings (N, D), sent in chunks no larger than the max batch size."""
        chunks = []
        step = self.max_batch
        for i in range(0, len(pixels), step):
            start = time.perf_counter()
            raw = await self.backend.encode_pixels(np.stack(pixels[i : i + step]))
            encoded = Encoded(*split_trailer(raw))
            timings.add(encoded, "image", (time.perf_counter() - start) * 1000)
            chunks.append(encoded.rows)
        return np.concatenate(chunks) if chunks else np.zeros((0, self.embedding_size), np.float32)

    async def embed_texts(self, texts: Sequence[str], timings: Timings | None = None) -> np.ndarray:
        """Unit text embeddings (N, D)."""
        chunks = []
        step = self.max_batch
        for i in range(0, len(texts), step):
            start = time.perf_counter()
            encoded = Encoded(*split_trailer(await self.backend.encode_texts(list(texts[i : i + step]))))
            if timings is not None:
                timings.add(encoded, "text", (time.perf_counter() - start) * 1000)
            chunks.append(encoded.rows)
        return np.concatenate(chunks)

    @property
    def embedding_size(self) -> int:
        return int(self.info["embedding_size"])

    # ---- routes' logic ----------------------------------------------------------------------

    async def image_embedding(self, data: bytes, field: str, timings: Timings) -> np.ndarray:
        pixels = await self.prepare(data, field, timings)
        return (await self.embed_pixels([pixels], timings))[0]

    async def similarity(self, data: bytes, texts: list[str], timings: Timings) -> dict[str, Any]:
        image, text_rows = await asyncio.gather(
            self.image_embedding(data, "image", timings), self.embed_texts(texts, timings))
        results = scoring.similarity_scores(image, texts, text_rows, self.logit_scale)
        best = max(results, key=lambda r: r["similarity"])
        return {
            "results": results,
            "similarities": [r["similarity"] for r in results],
            "probabilities": [r["probability"] for r in results],
            "best_match": best["text"],
        }

    def threshold_for(self, override: Any) -> scoring.Threshold:
        if override is None or override == "":
            return self.threshold
        try:
            value = float(override)
        except (TypeError, ValueError):
            raise InvalidInput("field 'threshold' must be a number", field="threshold") from None
        if not -1.0 <= value <= 1.0:
            raise InvalidInput("field 'threshold' must be between -1 and 1", field="threshold")
        return scoring.Threshold(value, "request")

    async def analyze(self, data: bytes, text: str, threshold: scoring.Threshold,
                      timings: Timings) -> dict[str, Any]:
        image, text_rows = await asyncio.gather(
            self.image_embedding(data, "image", timings), self.embed_texts([text], timings))
        similarity = float(scoring.cosine(image, text_rows)[0])
        return {"text": text, **scoring.analyze_pair(similarity, threshold)}

    async def analyze_batch(self, blobs: list[bytes], texts: list[str],
                            threshold: scoring.Threshold, timings: Timings) -> list[dict[str, Any]]:
        """One analyze result per (image, text) pair; a bad image fails only its own pair."""
        prepared, text_rows = await asyncio.gather(
            self.prepare_many(blobs, "images", timings), self.embed_texts(texts, timings))
        good = [i for i, p in enumerate(prepared) if not isinstance(p, InputError)]
        rows = await self.embed_pixels([prepared[i] for i in good], timings) if good else None
        results: list[dict[str, Any]] = []
        for i, item in enumerate(prepared):
            if isinstance(item, InputError):
                results.append({"text": texts[i], "error": item.message, "status": item.status})
                continue
            sim = float(rows[good.index(i)] @ text_rows[i])  # type: ignore[index]
            results.append({"text": texts[i], **scoring.analyze_pair(sim, threshold)})
        return results

    async def classify(self, data: bytes, categories: list[str] | None, top_k: int,
                       timings: Timings) -> dict[str, Any]:
        labels = tuple(categories) if categories else self.categories
        image, label_rows = await asyncio.gather(
            self.image_embedding(data, "image", timings), self.labels.get(labels, self.embed_texts))
        ranked = scoring.rank_labels(image, labels, label_rows, self.logit_scale, min(top_k, len(labels)))
        return {
            "predictions": ranked,
            "top_category": ranked[0]["category"],
            "categories_source": "request" if categories else "default",
            "num_categories": len(labels),
        }

    async def encode_images(self, blobs: list[bytes], timings: Timings) -> dict[str, Any]:
        """``{"embeddings": [...|None], "errors": [None|"why"]}``: one bad file fails only itself."""
        prepared = await self.prepare_many(blobs, "images", timings)
        good = [i for i, p in enumerate(prepared) if not isinstance(p, InputError)]
        rows = await self.embed_pixels([prepared[i] for i in good], timings) if good else None
        embeddings: list[list[float] | None] = [None] * len(blobs)
        errors: list[str | None] = [None] * len(blobs)
        for i, item in enumerate(prepared):
            if isinstance(item, InputError):
                errors[i] = item.message
            else:
                embeddings[i] = rows[good.index(i)].tolist()  # type: ignore[index]
        return {"embeddings": embeddings, "errors": errors}


def decode_threads(settings: ClipSettings) -> int:
    """``CLIP_DECODE_THREADS``, else 2 × this worker's share of the CPUs (at least 4).

    Decoding holds no lock (Pillow releases the GIL), so threads scale over cores; twice the
    cores keeps them busy while some threads wait on the event loop. On a GPU machine the
    cores are free for decoding, which is what bounds end-to-end images/s there. With several
    in-process workers (``CLIP_ENCODER_WORKERS``, each decoding its own requests) the CPUs are
    shared among them, as torch's threads are; in the two-service layout the one public worker
    decodes everything.
    """
    decoding_workers = settings.encoder_workers if settings.encoder_mode == "inprocess" else 1
    return settings.decode_threads or max(4, 2 * cpu_share(decoding_workers))


def parse_list_field(value: Any) -> list[Any]:
    """A form field that may arrive repeated, as one JSON array string, or as a single value."""
    if value is None:
        return []
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                parsed = json.loads(stripped)
            except json.JSONDecodeError:
                raise InvalidInput("a list field holds invalid JSON") from None
            if not isinstance(parsed, list):
                raise InvalidInput("a list field must be a JSON array")
            return parsed
        return [value]
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], str) and value[0].strip().startswith("["):
            return parse_list_field(value[0])
        return list(value)
    return [value]
