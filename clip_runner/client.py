"""Typed HTTP clients for the clip service: :class:`ClipClient` (sync) and :class:`AsyncClipClient`.

Every route of the HTTP contract is a method; embeddings come back as float32 numpy arrays and
JSON results as typed dicts. Images may be given as bytes, a path or a PIL image. Connection
errors and 429/503 answers are retried with exponential backoff (``Retry-After`` is honoured);
every failure is raised as :class:`ClipServiceError` carrying the server's own error text.

Both clients build their requests with the same functions below, so they cannot drift apart.
The in-process equivalent (same methods, no HTTP) is :class:`clip_runner.backends.LocalClip`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, NotRequired, TypeAlias, TypedDict, TypeVar

import httpx
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)

ImageInput: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | Image.Image
"""An image to send: encoded bytes, a file path, or a PIL image (sent losslessly as PNG)."""

T = TypeVar("T")

# Failures after which the request certainly or very probably never reached the model. Every
# route is a pure computation, so repeating one is safe; read timeouts are not retried because
# a slow model would only be given more work.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    httpx.NetworkError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
)

# ---- results --------------------------------------------------------------------------------


class SimilarityItem(TypedDict):
    text: str
    similarity: float
    probability: float


class SimilarityResult(TypedDict):
    results: list[SimilarityItem]
    similarities: list[float]
    probabilities: list[float]
    best_match: str


class AnalyzeResult(TypedDict):
    text: str
    similarity: float
    is_mismatch: bool
    threshold: float
    threshold_source: str
    margin: float


class AnalyzeItemError(TypedDict):
    """An ``analyze_batch`` pair whose image could not be used (the other pairs still ran)."""

    text: str
    error: str
    status: int


class Prediction(TypedDict):
    category: str
    probability: float
    similarity: float


class ClassifyResult(TypedDict):
    predictions: list[Prediction]
    top_category: str
    categories_source: str
    num_categories: int


class Health(TypedDict):
    status: str
    model: str
    device: str
    embedding_size: int
    threshold: float
    threshold_source: str
    arch: NotRequired[str | None]
    source: NotRequired[str | None]
    reason: NotRequired[str]


@dataclasses.dataclass(frozen=True)
class EncodedImages:
    """``/encode_images``: one entry per input, in order; a bad image gives ``None`` and its error."""

    embeddings: list[np.ndarray | None]
    errors: list[str | None]


# ---- errors ---------------------------------------------------------------------------------


class ClipServiceError(Exception):
    """The service (or the in-process backend) refused or could not serve a call.

    ``status`` is the HTTP status (``None`` when no answer came back), ``message`` the server's
    error text, ``field`` the input field it names (when it names one), ``attempts`` how many
    times the call was tried.
    """

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None,
                 attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.status}: {self.message}"


class ClipConnectionError(ClipServiceError):
    """No usable answer: the service could not be reached, or the connection failed, after retries."""


# ---- inputs ---------------------------------------------------------------------------------

# Modes PNG can store as they are; others (CMYK, YCbCr, ...) are converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


def image_bytes(image: ImageInput) -> bytes:
    """The bytes to upload for an image given as bytes, a path or a PIL image.

    A missing path raises ``FileNotFoundError``. A PIL image is encoded losslessly as PNG, so the
    server sees exactly its pixels (an EXIF orientation it may carry is not applied).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, Image.Image):
        source = image if image.mode in _PNG_MODES else image.convert("RGB")
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    raise TypeError(f"an image must be bytes, a path or a PIL image, not {type(image).__name__}")


def _upload(field: str, image: ImageInput, index: int = 0) -> tuple[str, tuple[str, bytes, str]]:
    name = Path(image).name if isinstance(image, (str, os.PathLike)) else f"image{index}"
    return field, (name, image_bytes(image), "application/octet-stream")


def text_list(texts: Sequence[str], field: str) -> list[str]:
    """``texts`` as a list; a bare string is refused (it would be read character by character)."""
    if isinstance(texts, str):
        raise TypeError(f"'{field}' must be a list of strings, not a single string")
    return list(texts)


# ---- requests -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Call(Generic[T]):
    """One request of the contract and how to read its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


def _vector(body: Any) -> np.ndarray:
    return np.asarray(body, dtype=np.float32)


def _encoded_images(body: Any) -> EncodedImages:
    rows = [None if row is None else np.asarray(row, dtype=np.float32) for row in body["embeddings"]]
    return EncodedImages(rows, list(body["errors"]))


def _form(threshold: float | None, **fields: Any) -> dict[str, Any]:
    # List fields go as one JSON array: a single text that starts with "[" or holds a comma
    # would otherwise be read as an array or split into several categories.
    form = {k: json.dumps(v) if isinstance(v, list) else v for k, v in fields.items()}
    if threshold is not None:
        form["threshold"] = str(threshold)
    return form


def _identity(body: Any) -> Any:
    return body


class _Routes:
    """Request builders for every route, shared by the sync and async clients."""

    @staticmethod
    def encode_image(image: ImageInput) -> _Call[np.ndarray]:
        return _Call("POST", "/encode_image", _vector, files=[_upload("image", image)])

    @staticmethod
    def encode_images(images: Sequence[ImageInput]) -> _Call[EncodedImages]:
        files = [_upload("images", image, i) for i, image in enumerate(images)]
        return _Call("POST", "/encode_images", _encoded_images, files=files)

    @staticmethod
    def encode_text(text: str | Sequence[str]) -> _Call[np.ndarray]:
        payload = text if isinstance(text, str) else list(text)
        return _Call("POST", "/encode_text", _vector, json={"text": payload})

    @staticmethod
    def similarity(image: ImageInput, texts: Sequence[str]) -> _Call[SimilarityResult]:
        form = _form(None, texts=text_list(texts, "texts"))
        return _Call("POST", "/similarity", _identity, data=form, files=[_upload("image", image)])

    @staticmethod
    def analyze(image: ImageInput, text: str, threshold: float | None) -> _Call[AnalyzeResult]:
        form = _form(threshold, text=text)
        return _Call("POST", "/analyze", _identity, data=form, files=[_upload("image", image)])

    @staticmethod
    def analyze_batch(images: Sequence[ImageInput], texts: Sequence[str],
                      threshold: float | None) -> _Call[list[AnalyzeResult | AnalyzeItemError]]:
        form = _form(threshold, texts=text_list(texts, "texts"))
        files = [_upload("images", image, i) for i, image in enumerate(images)]
        return _Call("POST", "/analyze_batch", lambda body: body["results"], data=form, files=files)

    @staticmethod
    def classify(image: ImageInput, categories: Sequence[str] | None,
                 top_k: int | None) -> _Call[ClassifyResult]:
        fields: dict[str, Any] = {}
        if categories is not None:
            fields["categories"] = text_list(categories, "categories")
        if top_k is not None:
            fields["top_k"] = str(top_k)
        return _Call("POST", "/classify", _identity, data=_form(None, **fields),
                     files=[_upload("image", image)])

    @staticmethod
    def categories() -> _Call[list[str]]:
        return _Call("GET", "/categories", lambda body: list(body["categories"]))

    @staticmethod
    def health() -> _Call[Health]:
        return _Call("GET", "/health", _identity)


# ---- retries --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry connection errors and 429/503 answers.

    ``attempts`` counts the first try (1 = never retry). Waits double from ``backoff_s`` up to
    ``max_backoff_s``, with jitter so that many callers do not retry in lockstep; a server's
    ``Retry-After`` replaces the computed wait (capped at ``max_retry_after_s``).
    """

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    statuses: frozenset[int] = frozenset({429, 503})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        hint = retry_after(response) if response is not None else None
        if hint is not None:
            return min(hint, self.max_retry_after_s)
        base = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return base * random.uniform(0.5, 1.0)


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if present and valid."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Attempts:
    """Retry bookkeeping for one call: decides whether to try again and how long to wait."""

    def __init__(self, policy: RetryPolicy, url: str) -> None:
        self.policy = policy
        self.url = url
        self.count = 0

    def start(self) -> None:
        self.count += 1

    def after_error(self, exc: Exception) -> float:
        """Wait before the next try, or raise a :class:`ClipConnectionError` when out of tries."""
        if self.count >= self.policy.attempts:
            raise ClipConnectionError(
                f"could not reach the clip service at {self.url} after {self.count} attempt(s): "
                f"{type(exc).__name__}: {str(exc) or 'connection failed'}", attempts=self.count) from exc
        wait = self.policy.delay(self.count)
        logger.warning("clip service at %s: %s; retrying in %.2fs (attempt %d of %d)",
                       self.url, type(exc).__name__, wait, self.count + 1, self.policy.attempts)
        return wait

    def after_response(self, response: httpx.Response) -> float | None:
        """Wait before the next try, or ``None`` when this answer is final."""
        if response.status_code not in self.policy.statuses or self.count >= self.policy.attempts:
            return None
        wait = self.policy.delay(self.count, response)
        logger.warning("clip service at %s answered %d; retrying in %.2fs (attempt %d of %d)",
                       self.url, response.status_code, wait, self.count + 1, self.policy.attempts)
        return wait

    def failed(self, exc: httpx.HTTPError) -> ClipConnectionError:
        """A transport failure that is not retried (e.g. a read timeout)."""
        return ClipConnectionError(f"request to the clip service at {self.url} failed: "
                                   f"{type(exc).__name__}: {exc}", attempts=self.count)


def _result(call: _Call[T], response: httpx.Response, attempts: int) -> T:
    if not response.is_success:
        raise error_from_response(response, attempts)
    try:
        body = response.json()
    except ValueError:
        raise ClipServiceError(f"{call.path} answered {response.status_code} with a body that is not JSON",
                               status=response.status_code, attempts=attempts) from None
    return call.parse(body)


def error_from_response(response: httpx.Response, attempts: int = 1) -> ClipServiceError:
    """The :class:`ClipServiceError` for an error answer, carrying the server's ``error`` text."""
    message, field = None, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message, field = body["error"], body.get("field")
    if not message:  # not the service's error format (a proxy, or a crash page)
        message = response.text.strip()[:500] or response.reason_phrase or "request failed"
    return ClipServiceError(message, status=response.status_code, field=field, attempts=attempts)


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = dict(extra or {})
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# ---- clients --------------------------------------------------------------------------------


class ClipClient:
    """Blocking client for the clip service. Thread-safe; use as a context manager or ``close()``.

    ``transport`` is passed to httpx (e.g. to route through a custom transport).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers=_headers(api_key, headers), transport=transport)

    def __enter__(self) -> ClipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        attempts = _Attempts(self.retry, self.base_url)
        while True:
            attempts.start()
            try:
                response = self._http.request(call.method, call.path, json=call.json, data=call.data,
                                              files=call.files)
            except RETRYABLE_ERRORS as exc:
                wait = attempts.after_error(exc)
            except httpx.HTTPError as exc:
                raise attempts.failed(exc) from exc
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    return _result(call, response, attempts.count)
            time.sleep(wait)

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """One image → its unit embedding, shape (D,)."""
        return self._send(_Routes.encode_image(image))

    def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        """Several images in one request; a bad image fails only its own entry."""
        return self._send(_Routes.encode_images(images))

    def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """A text → (D,); a list of texts → (N, D). Unit rows."""
        return self._send(_Routes.encode_text(text))

    def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult:
        """Cosine similarity of one image with each text, plus softmax probabilities."""
        return self._send(_Routes.similarity(image, texts))

    def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult:
        """Image–text similarity and the mismatch verdict (server threshold unless given)."""
        return self._send(_Routes.analyze(image, text, threshold))

    def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                      threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]:
        """``analyze`` for each (image, text) pair, in order; a bad image fails only its pair."""
        return self._send(_Routes.analyze_batch(images, texts, threshold))

    def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                 top_k: int | None = None) -> ClassifyResult:
        """Zero-shot classification over the given categories (default: the service's label set)."""
        return self._send(_Routes.classify(image, categories, top_k))

    def categories(self) -> list[str]:
        """The default label set ``classify`` uses."""
        return self._send(_Routes.categories())

    def health(self) -> Health:
        """What is served: model, device, embedding size, threshold."""
        return self._send(_Routes.health())


class AsyncClipClient:
    """Asyncio client for the clip service; the same methods as :class:`ClipClient`, awaitable.

    Use it from one event loop (httpx connection pools belong to the loop that opened them).
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers=_headers(api_key, headers), transport=transport)

    async def __aenter__(self) -> AsyncClipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempts = _Attempts(self.retry, self.base_url)
        while True:
            attempts.start()
            try:
                response = await self._http.request(call.method, call.path, json=call.json,
                                                    data=call.data, files=call.files)
            except RETRYABLE_ERRORS as exc:
                wait = attempts.after_error(exc)
            except httpx.HTTPError as exc:
                raise attempts.failed(exc) from exc
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    return _result(call, response, attempts.count)
            await asyncio.sleep(wait)

    async def encode_image(self, image: ImageInput) -> np.ndarray:
        """See :meth:`ClipClient.encode_image`."""
        return await self._send(_Routes.encode_image(image))

    async def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        """See :meth:`ClipClient.encode_images`."""
        return await self._send(_Routes.encode_images(images))

    async def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """See :meth:`ClipClient.encode_text`."""
        return await self._send(_Routes.encode_text(text))

    async def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult:
        """See :meth:`ClipClient.similarity`."""
        return await self._send(_Routes.similarity(image, texts))

    async def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult:
        """See :meth:`ClipClient.analyze`."""
        return await self._send(_Routes.analyze(image, text, threshold))

    async def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                            threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]:
        """See :meth:`ClipClient.analyze_batch`."""
        return await self._send(_Routes.analyze_batch(images, texts, threshold))

    async def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                       top_k: int | None = None) -> ClassifyResult:
        """See :meth:`ClipClient.classify`."""
        return await self._send(_Routes.classify(image, categories, top_k))

    async def categories(self) -> list[str]:
        """See :meth:`ClipClient.categories`."""
        return await self._send(_Routes.categories())

    async def health(self) -> Health:
        """See :meth:`ClipClient.health`."""
        return await self._send(_Routes.health())
