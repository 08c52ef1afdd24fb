"""Typed clients for the clip service: :class:`AsyncClipClient` and its blocking twin :class:`ClipClient`, which
runs the same coroutines on a private event loop (docs/client.md)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import functools
import importlib
import io
import json
import logging
import os
import random
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, NotRequired, ParamSpec, Protocol, TypeAlias, TypedDict, TypeVar

import httpx
import numpy as np

if TYPE_CHECKING:
    from clip_runner.settings import ClipSettings

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
IN_PROCESS_URL = "http://clip-in-process"
FULL_INSTALL = ("the in-process CLIP model needs the full clip-service install (its serving code, "
                "torch and open_clip); with only clip-service-client installed, set USE_LOCAL_CLIP=true "
                "to call a running service at LOCAL_CLIP_URL")

T = TypeVar("T")
P = ParamSpec("P")


class PILImage(Protocol):
    """What the client uses of a PIL image (PIL itself is never imported here)."""

    mode: str

    def convert(self, mode: str) -> PILImage: ...

    def save(self, fp: Any, format: str | None = None) -> None: ...


ImageInput: TypeAlias = "bytes | bytearray | memoryview | str | os.PathLike[str] | PILImage"
"""An image to send: encoded bytes, a file path, a PIL image (sent losslessly as PNG), or an
``http(s)://`` URL string, which the service fetches (``CLIP_ALLOW_IMAGE_URLS``)."""

# Failures after which the request certainly or very probably never reached the model. Every
# route is a pure computation, so repeating one is safe; read timeouts are not retried because
# a slow model would only be given more work.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (httpx.NetworkError, httpx.ConnectTimeout, httpx.PoolTimeout,
                                                  httpx.RemoteProtocolError)


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
    probability: NotRequired[float]  # sigmoid (SigLIP) models: what the threshold is compared with
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
    scores: NotRequired[dict[str, Any]]  # {"family": "softmax" | "sigmoid", "logit_scale", "logit_bias"}


@dataclasses.dataclass(frozen=True)
class EncodedImages:
    """``/encode_images``: one entry per input, in order; a bad image gives ``None`` and its error."""

    embeddings: list[np.ndarray | None]
    errors: list[str | None]


class ClipServiceError(Exception):
    """The service refused or could not serve a call: ``status`` (None without an answer), the server's
    ``message``, the ``field`` it names, and how many ``attempts`` were made."""

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None,
                 attempts: int = 1) -> None:
        super().__init__(message)
        self.message, self.status, self.field, self.attempts = message, status, field, attempts

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.status}: {self.message}"


class ClipConnectionError(ClipServiceError):
    """No usable answer: the service could not be reached, or the connection failed, after retries."""


# Modes PNG can store as they are; others (CMYK, YCbCr, ...) are converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


def image_bytes(image: ImageInput) -> bytes:
    """The bytes to upload for an image given as bytes, a path or a PIL image (losslessly, as PNG)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(getattr(image, "mode", None), str) and callable(getattr(image, "save", None)):
        source = image if image.mode in _PNG_MODES else image.convert("RGB")
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"an image must be bytes, a path or a PIL image, not {type(image).__name__}")


def is_url(image: object) -> bool:
    """Whether ``image`` is an image URL for the service to fetch (a string starting http:// or https://)."""
    return isinstance(image, str) and image[:8].lower().startswith(("http://", "https://"))


def image_text(image: ImageInput) -> str:
    """An image as a JSON body carries it: a URL as given, anything else as base64 of its bytes."""
    return image if is_url(image) else base64.b64encode(image_bytes(image)).decode("ascii")  # type: ignore[return-value]


def text_list(texts: Sequence[str], field: str) -> list[str]:
    """``texts`` as a list; a bare string is refused (it would be read character by character)."""
    if isinstance(texts, str):
        raise TypeError(f"'{field}' must be a list of strings, not a single string")
    return list(texts)


def image_request(images: Mapping[str, ImageInput | list[ImageInput]], *, as_json: bool,
                  **fields: Any) -> dict[str, Any]:
    """httpx arguments for a route's image fields and other fields (None ones left out): a multipart
    form, or (``as_json``, or any image a URL) a JSON object with base64 images."""
    fields = {k: v for k, v in fields.items() if v is not None}
    flat = [(name, i, image) for name, value in images.items()
            for i, image in enumerate(value if isinstance(value, list) else [value])]
    if as_json or any(is_url(image) for _, _, image in flat):
        texts = {name: [image_text(i) for i in value] if isinstance(value, list) else image_text(value)
                 for name, value in images.items()}
        return {"json": {**texts, **fields}}
    files = [(name, (Path(image).name if isinstance(image, (str, os.PathLike)) else f"image{i}", image_bytes(image),
                     "application/octet-stream")) for name, i, image in flat]
    # List fields go as one JSON array: a single text that starts with "[" or holds a comma
    # would otherwise be read as an array or split into several categories.
    form = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}
    return {"files": files, "data": form}


_vector = functools.partial(np.asarray, dtype=np.float32)


def _encoded_images(body: Any) -> EncodedImages:
    return EncodedImages([None if row is None else _vector(row) for row in body["embeddings"]], list(body["errors"]))


def _as_is(body: Any) -> Any:
    return body


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often (``attempts`` counts the first try) and how patiently to retry connection errors and 429/503:
    jittered waits doubling from ``backoff_s``, or the server's ``Retry-After`` (capped)."""

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
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)


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
    return max(0.0, (when.replace(tzinfo=when.tzinfo or UTC) - datetime.now(UTC)).total_seconds())


def _result(path: str, parse: Callable[[Any], T], response: httpx.Response, attempts: int) -> T:
    """``parse`` of a success's JSON body; else a :class:`ClipServiceError` carrying the server's ``error`` text."""
    message, field = None, None
    try:
        body = response.json()
    except ValueError:
        if response.is_success:
            raise ClipServiceError(f"{path} answered {response.status_code} with a body that is not JSON",
                                   status=response.status_code, attempts=attempts) from None
        body = None
    if response.is_success:
        return parse(body)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message, field = body["error"], body.get("field")
    if not message:  # not the service's error format (a proxy, or a crash page)
        message = response.text.strip()[:500] or response.reason_phrase or "request failed"
    raise ClipServiceError(message, status=response.status_code, field=field, attempts=attempts)


def import_full(module: str) -> ModuleType:
    """A module of the full clip-service install, or an ``ImportError`` that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{FULL_INSTALL} ({exc})") from exc


class AsyncClipClient:
    """Asyncio client for the clip service, for one event loop (httpx pools belong to it); an async context
    manager. ``json_images`` sends images as base64 JSON instead of multipart (for JSON-only gateways)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, retry: RetryPolicy | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, json_images: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.json_images = json_images
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers={**(headers or {}), **auth},
                                       transport=transport)
        self._release: Callable[[], None] | None = None  # what close() also frees (an in-process app)

    @classmethod
    def in_process(cls, settings: ClipSettings | None = None, *, retry: RetryPolicy | None = None) -> AsyncClipClient:
        """The service's own app in this process, configured by ``settings`` (default: ``CLIP_*``); full install."""
        local = import_full("clip_http.local").local_app(settings)
        transport = httpx.ASGITransport(app=local.app, raise_app_exceptions=False)  # a crash is a 500
        client = cls(IN_PROCESS_URL, retry=retry, transport=transport)
        client._release = local.close
        return client

    async def __aenter__(self) -> AsyncClipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (and stop an in-process model)."""
        await self._http.aclose()
        if self._release is not None:
            release, self._release = self._release, None
            await asyncio.to_thread(release)

    async def _send(self, method: str, path: str, parse: Callable[[Any], T], **request: Any) -> T:
        """One call of the contract, retried per :attr:`retry`, its JSON answer read by ``parse``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, **request)
            except RETRYABLE_ERRORS as exc:
                if attempt >= self.retry.attempts:
                    raise ClipConnectionError(
                        f"could not reach the clip service at {self.base_url} after {attempt} attempt(s): "
                        f"{type(exc).__name__}: {str(exc) or 'connection failed'}", attempts=attempt) from exc
                wait, why = self.retry.delay(attempt), type(exc).__name__
            except httpx.HTTPError as exc:
                raise ClipConnectionError(f"request to the clip service at {self.base_url} failed: "
                                          f"{type(exc).__name__}: {exc}", attempts=attempt) from exc
            else:
                if response.status_code not in self.retry.statuses or attempt >= self.retry.attempts:
                    return _result(path, parse, response, attempt)
                wait, why = self.retry.delay(attempt, response), f"answered {response.status_code}"
            logger.warning("clip service at %s: %s; retrying in %.2fs (attempt %d of %d)",
                           self.base_url, why, wait, attempt + 1, self.retry.attempts)
            await asyncio.sleep(wait)

    def _images(self, images: Mapping[str, ImageInput | list[ImageInput]], **fields: Any) -> dict[str, Any]:
        return image_request(images, as_json=self.json_images, **fields)

    async def encode_image(self, image: ImageInput) -> np.ndarray:
        """One image → its unit embedding, shape (D,)."""
        return await self._send("POST", "/encode_image", _vector, **self._images({"image": image}))

    async def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        """Several images in one request; a bad image fails only its own entry."""
        return await self._send("POST", "/encode_images", _encoded_images, **self._images({"images": list(images)}))

    async def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """A text → (D,); a list of texts → (N, D). Unit rows."""
        payload = text if isinstance(text, str) else list(text)
        return await self._send("POST", "/encode_text", _vector, json={"text": payload})

    async def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult:
        """Cosine similarity of one image with each text, plus the model's probabilities (softmax or sigmoid)."""
        return await self._send("POST", "/similarity", _as_is,
                                **self._images({"image": image}, texts=text_list(texts, "texts")))

    async def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult:
        """Image–text similarity and the mismatch verdict (server threshold unless given)."""
        return await self._send("POST", "/analyze", _as_is,
                                **self._images({"image": image}, text=text, threshold=threshold))

    async def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                            threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]:
        """``analyze`` for each (image, text) pair, in order; a bad image fails only its pair."""
        return await self._send("POST", "/analyze_batch", lambda body: body["results"], **self._images(
            {"images": list(images)}, texts=text_list(texts, "texts"), threshold=threshold))

    async def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                       top_k: int | None = None) -> ClassifyResult:
        """Zero-shot classification over the given categories (default: the service's label set)."""
        labels = None if categories is None else text_list(categories, "categories")
        return await self._send("POST", "/classify", _as_is,
                                **self._images({"image": image}, categories=labels, top_k=top_k))

    async def categories(self) -> list[str]:
        """The default label set ``classify`` uses."""
        return await self._send("GET", "/categories", lambda body: list(body["categories"]))

    async def health(self) -> Health:
        """What is served: model, device, embedding size, threshold."""
        return await self._send("GET", "/health", _as_is)


def _close_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def _blocking(method: Callable[Concatenate[AsyncClipClient, P], Coroutine[Any, Any, T]],
              ) -> Callable[Concatenate[ClipClient, P], T]:
    """The blocking form of an :class:`AsyncClipClient` method: run on the client's private loop."""

    @functools.wraps(method)
    def call(self: ClipClient, *args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run_coroutine_threadsafe(method(self._async, *args, **kwargs), self._loop).result()

    return call


class ClipClient:
    """Blocking client: :class:`AsyncClipClient`'s methods, run on a private event loop thread (so they work
    inside a running loop, and threads may share one client). Its arguments are :class:`AsyncClipClient`'s."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, retry: RetryPolicy | None = None,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, headers: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, json_images: bool = False) -> None:
        self._wrap(AsyncClipClient(base_url, api_key=api_key, timeout=timeout, retry=retry, headers=headers,
                                   transport=transport, json_images=json_images))

    def _wrap(self, client: AsyncClipClient) -> None:
        self._async = client
        # A private event loop in a daemon thread, so blocking callers (even inside a loop) can share it.
        self._loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._loop.run_forever, name="clip-client", daemon=True)
        thread.start()
        # Stops the loop thread if the client is dropped without close(); runs at most once.
        self._stop_loop = weakref.finalize(self, _close_loop, self._loop, thread)

    @classmethod
    def in_process(cls, settings: ClipSettings | None = None, *, retry: RetryPolicy | None = None) -> ClipClient:
        """See :meth:`AsyncClipClient.in_process`."""
        client = cls.__new__(cls)
        client._wrap(AsyncClipClient.in_process(settings, retry=retry))
        return client

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def retry(self) -> RetryPolicy:
        return self._async.retry

    def __enter__(self) -> ClipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (and stop an in-process model), then the private loop."""
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result()
        self._stop_loop()

    encode_image = _blocking(AsyncClipClient.encode_image)
    encode_images = _blocking(AsyncClipClient.encode_images)
    encode_text = _blocking(AsyncClipClient.encode_text)
    similarity = _blocking(AsyncClipClient.similarity)
    analyze = _blocking(AsyncClipClient.analyze)
    analyze_batch = _blocking(AsyncClipClient.analyze_batch)
    classify = _blocking(AsyncClipClient.classify)
    categories = _blocking(AsyncClipClient.categories)
    health = _blocking(AsyncClipClient.health)
