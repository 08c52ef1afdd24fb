"""One interface for backends that use CLIP, served remotely or computed in-process.

:class:`ClipBackend` (blocking) and :class:`AsyncClipBackend` are the interfaces. They are met by
the HTTP clients in :mod:`clip_runner.client` and by :class:`LocalClip` / :class:`AsyncLocalClip`,
which run the service's own request pipeline (validation, decoding, scoring) on a model loaded
in this process, so both give the same embeddings and scores for the same model.

:func:`from_env` picks one from the environment::

    USE_LOCAL_CLIP=true   → HTTP client to LOCAL_CLIP_URL (default http://localhost:3000),
                            i.e. "use the locally deployed CLIP *service*"
    otherwise             → in-process model, configured by the server's CLIP_* variables
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .client import (
    DEFAULT_URL,
    AnalyzeItemError,
    AnalyzeResult,
    AsyncClipClient,
    ClassifyResult,
    ClipClient,
    ClipServiceError,
    EncodedImages,
    Health,
    ImageInput,
    RetryPolicy,
    SimilarityResult,
    image_bytes,
    text_list,
)
from .errors import InputError, InvalidInput, Overloaded, PayloadTooLarge
from .pipeline import ClipPipeline, Timings
from .settings import ClipSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@runtime_checkable
class ClipBackend(Protocol):
    """The blocking CLIP interface: :class:`~clip_runner.client.ClipClient` or :class:`LocalClip`."""

    def encode_image(self, image: ImageInput) -> np.ndarray: ...

    def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages: ...

    def encode_text(self, text: str | Sequence[str]) -> np.ndarray: ...

    def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult: ...

    def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult: ...

    def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                      threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]: ...

    def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                 top_k: int | None = None) -> ClassifyResult: ...

    def categories(self) -> list[str]: ...

    def health(self) -> Health: ...

    def close(self) -> None: ...

    def __enter__(self) -> ClipBackend: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class AsyncClipBackend(Protocol):
    """The asyncio CLIP interface: :class:`~clip_runner.client.AsyncClipClient` or :class:`AsyncLocalClip`."""

    async def encode_image(self, image: ImageInput) -> np.ndarray: ...

    async def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages: ...

    async def encode_text(self, text: str | Sequence[str]) -> np.ndarray: ...

    async def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult: ...

    async def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult: ...

    async def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                            threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]: ...

    async def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                       top_k: int | None = None) -> ClassifyResult: ...

    async def categories(self) -> list[str]: ...

    async def health(self) -> Health: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> AsyncClipBackend: ...

    async def __aexit__(self, *exc: object) -> None: ...


class ClientSettings(BaseSettings):
    """Caller-side settings: which backend :func:`from_env` builds, and how the HTTP one connects."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_ignore_empty=True)

    use_local_clip: bool = Field(
        False, description="true: call the CLIP service at LOCAL_CLIP_URL; false: load the model in-process.")
    local_clip_url: str = Field(DEFAULT_URL, description="Base URL of the CLIP service.")
    local_clip_api_key: str | None = Field(None, description="Sent as 'Authorization: Bearer <key>'.")
    local_clip_timeout: float = Field(60.0, gt=0, description="Seconds to wait for an answer.")
    local_clip_retries: int = Field(3, ge=0, description="Retries on connection errors and 429/503.")

    def retry_policy(self) -> RetryPolicy:
        """The HTTP retry policy these settings describe."""
        return RetryPolicy(attempts=self.local_clip_retries + 1)

    def timeout(self) -> httpx.Timeout:
        """The answer timeout; connecting gets at most 5 s, so a dead host is retried soon."""
        return httpx.Timeout(self.local_clip_timeout, connect=min(5.0, self.local_clip_timeout))


def _service_settings(client: ClientSettings | None) -> ClientSettings | None:
    """The caller-side settings when ``USE_LOCAL_CLIP`` points at a service, else None (in-process)."""
    cfg = client or ClientSettings()
    if cfg.use_local_clip:
        logger.info("CLIP: using the service at %s (USE_LOCAL_CLIP=true)", cfg.local_clip_url)
        return cfg
    logger.info("CLIP: loading the model in-process (USE_LOCAL_CLIP is not true)")
    return None


def from_env(settings: ClipSettings | None = None, *, client: ClientSettings | None = None) -> ClipBackend:
    """A blocking backend chosen by ``USE_LOCAL_CLIP`` (see the module docstring).

    ``settings`` configures the in-process model (default: ``CLIP_*`` variables); ``client``
    overrides the caller-side variables.
    """
    if cfg := _service_settings(client):
        return ClipClient(cfg.local_clip_url, api_key=cfg.local_clip_api_key,
                          timeout=cfg.timeout(), retry=cfg.retry_policy())
    return LocalClip(settings)


def async_from_env(settings: ClipSettings | None = None, *,
                   client: ClientSettings | None = None) -> AsyncClipBackend:
    """The asyncio counterpart of :func:`from_env`, chosen the same way."""
    if cfg := _service_settings(client):
        return AsyncClipClient(cfg.local_clip_url, api_key=cfg.local_clip_api_key,
                               timeout=cfg.timeout(), retry=cfg.retry_policy())
    return AsyncLocalClip(settings)


# ---- in-process -----------------------------------------------------------------------------


class _LoopThread:
    """A private event loop in a daemon thread.

    The pipeline is asyncio code with loop-bound state (locks, executors); running it on one
    loop of its own lets blocking callers, and callers inside any other event loop, share it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="clip-local", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def _as_client_error(coro: Coroutine[Any, Any, T]) -> T:
    """Raise input errors as the clients do: a :class:`ClipServiceError` with status and field."""
    try:
        return await coro
    except InputError as exc:
        raise ClipServiceError(exc.message, status=exc.status, field=exc.field) from exc
    except Overloaded as exc:
        raise ClipServiceError(str(exc), status=exc.status) from exc


class _LocalRoutes:
    """The service's routes over a :class:`ClipPipeline`: the same checks, fields and results."""

    def __init__(self, pipeline: ClipPipeline) -> None:
        self.pipe = pipeline
        self.settings = pipeline.settings

    def _blobs(self, images: Sequence[ImageInput], field: str) -> list[bytes]:
        if not images:
            raise InvalidInput(f"field '{field}' is required: send one or more multipart files", field=field)
        if len(images) > self.settings.max_images:
            raise InvalidInput(f"field '{field}' has {len(images)} files; the limit is "
                               f"{self.settings.max_images}", field=field)
        blobs = [image_bytes(image) for image in images]
        for i, blob in enumerate(blobs):  # as over HTTP, an oversized file fails the whole call
            if len(blob) > self.settings.max_image_bytes:
                raise PayloadTooLarge(f"field '{field}[{i}]': upload is larger than the limit of "
                                      f"{self.settings.max_image_bytes / 1e6:.1f} MB (CLIP_MAX_IMAGE_BYTES)",
                                      field=f"{field}[{i}]")
        return blobs

    async def encode_image(self, data: bytes) -> np.ndarray:
        return await self.pipe.image_embedding(data, "image", Timings())

    async def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        body = await self.pipe.encode_images(self._blobs(images, "images"), Timings())
        rows = [None if row is None else np.asarray(row, dtype=np.float32) for row in body["embeddings"]]
        return EncodedImages(rows, body["errors"])

    async def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        if isinstance(text, str):
            return (await self.pipe.embed_texts([self.pipe.check_text(text, "text")]))[0]
        return await self.pipe.embed_texts(self.pipe.check_texts(list(text), "text"))

    async def similarity(self, data: bytes, texts: Sequence[str]) -> SimilarityResult:
        checked = self.pipe.check_texts(text_list(texts, "texts"), "texts")
        return await self.pipe.similarity(data, checked, Timings())  # type: ignore[return-value]

    async def analyze(self, data: bytes, text: str, threshold: float | None) -> AnalyzeResult:
        if not text:
            raise InvalidInput("field 'text' is required", field="text")
        checked = self.pipe.check_text(text, "text")
        result = await self.pipe.analyze(data, checked, self.pipe.threshold_for(threshold), Timings())
        return result  # type: ignore[return-value]

    async def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                            threshold: float | None) -> list[AnalyzeResult | AnalyzeItemError]:
        blobs = self._blobs(images, "images")
        checked = self.pipe.check_texts(text_list(texts, "texts"), "texts", limit=self.settings.max_images)
        if len(checked) != len(blobs):
            raise InvalidInput(f"got {len(blobs)} images and {len(checked)} texts; "
                               "send one text per image, in the same order", field="texts")
        limit = self.pipe.threshold_for(threshold)
        return await self.pipe.analyze_batch(blobs, checked, limit, Timings())  # type: ignore[return-value]

    async def classify(self, data: bytes, categories: Sequence[str] | None, top_k: int | None) -> ClassifyResult:
        labels = None
        if categories is not None:
            labels = self.pipe.check_texts(text_list(categories, "categories"), "categories",
                                           limit=self.settings.max_categories)
        k = self.pipe.check_top_k(self.settings.default_top_k if top_k is None else top_k)
        return await self.pipe.classify(data, labels, k, Timings())  # type: ignore[return-value]

    async def health(self) -> Health:
        info = await self.pipe.backend.info()
        body = {k: v for k, v in info.items() if k not in ("preprocess_cfg", "metadata")}
        body.update(status="healthy", threshold=self.pipe.threshold.value,
                    threshold_source=self.pipe.threshold.source,
                    image_size=info["metadata"].get("image_size"))
        return body  # type: ignore[return-value]


class _LocalBase:
    """Model, pipeline and private loop shared by :class:`LocalClip` and :class:`AsyncLocalClip`."""

    def __init__(self, settings: ClipSettings | None = None, *, pipeline: ClipPipeline | None = None) -> None:
        if pipeline is None:
            from .local import local_pipeline  # loads torch and open_clip: only when used

            pipeline = local_pipeline(settings)
            self._owns_pipeline = True
        else:
            self._owns_pipeline = False
        self.pipeline = pipeline
        self._routes = _LocalRoutes(pipeline)
        self._loop = _LoopThread()
        # Stops the loop thread if the object is dropped without close(); runs at most once.
        self._stop_loop = weakref.finalize(self, self._loop.close)

    def _shutdown(self) -> None:
        self._stop_loop()
        if self._owns_pipeline:
            self.pipeline.close()


class LocalClip(_LocalBase):
    """:class:`ClipBackend` over a model in this process (the service's pipeline, no HTTP).

    Blocking methods that also work when called from inside a running event loop. Pass
    ``settings`` (default: ``CLIP_*`` variables) to pick the model, or a ready ``pipeline``.
    """

    def __enter__(self) -> LocalClip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the private loop (and release the model when this object loaded it)."""
        self._shutdown()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(_as_client_error(coro))

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """See :meth:`ClipClient.encode_image`."""
        return self._run(self._routes.encode_image(image_bytes(image)))

    def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        """See :meth:`ClipClient.encode_images`."""
        return self._run(self._routes.encode_images(images))

    def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """See :meth:`ClipClient.encode_text`."""
        return self._run(self._routes.encode_text(text))

    def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult:
        """See :meth:`ClipClient.similarity`."""
        return self._run(self._routes.similarity(image_bytes(image), texts))

    def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult:
        """See :meth:`ClipClient.analyze`."""
        return self._run(self._routes.analyze(image_bytes(image), text, threshold))

    def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                      threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]:
        """See :meth:`ClipClient.analyze_batch`."""
        return self._run(self._routes.analyze_batch(images, texts, threshold))

    def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                 top_k: int | None = None) -> ClassifyResult:
        """See :meth:`ClipClient.classify`."""
        return self._run(self._routes.classify(image_bytes(image), categories, top_k))

    def categories(self) -> list[str]:
        """See :meth:`ClipClient.categories`."""
        return list(self.pipeline.categories)

    def health(self) -> Health:
        """See :meth:`ClipClient.health`."""
        return self._run(self._routes.health())


class AsyncLocalClip(_LocalBase):
    """:class:`AsyncClipBackend` over a model in this process; usable from any event loop."""

    async def __aenter__(self) -> AsyncLocalClip:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the private loop (and release the model when this object loaded it)."""
        await asyncio.to_thread(self._shutdown)

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._loop.run_async(_as_client_error(coro))

    async def encode_image(self, image: ImageInput) -> np.ndarray:
        """See :meth:`ClipClient.encode_image`."""
        return await self._run(self._routes.encode_image(image_bytes(image)))

    async def encode_images(self, images: Sequence[ImageInput]) -> EncodedImages:
        """See :meth:`ClipClient.encode_images`."""
        return await self._run(self._routes.encode_images(images))

    async def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """See :meth:`ClipClient.encode_text`."""
        return await self._run(self._routes.encode_text(text))

    async def similarity(self, image: ImageInput, texts: Sequence[str]) -> SimilarityResult:
        """See :meth:`ClipClient.similarity`."""
        return await self._run(self._routes.similarity(image_bytes(image), texts))

    async def analyze(self, image: ImageInput, text: str, threshold: float | None = None) -> AnalyzeResult:
        """See :meth:`ClipClient.analyze`."""
        return await self._run(self._routes.analyze(image_bytes(image), text, threshold))

    async def analyze_batch(self, images: Sequence[ImageInput], texts: Sequence[str],
                            threshold: float | None = None) -> list[AnalyzeResult | AnalyzeItemError]:
        """See :meth:`ClipClient.analyze_batch`."""
        return await self._run(self._routes.analyze_batch(images, texts, threshold))

    async def classify(self, image: ImageInput, categories: Sequence[str] | None = None,
                       top_k: int | None = None) -> ClassifyResult:
        """See :meth:`ClipClient.classify`."""
        return await self._run(self._routes.classify(image_bytes(image), categories, top_k))

    async def categories(self) -> list[str]:
        """See :meth:`ClipClient.categories`."""
        return list(self.pipeline.categories)

    async def health(self) -> Health:
        """See :meth:`ClipClient.health`."""
        return await self._run(self._routes.health())
