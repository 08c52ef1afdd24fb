"""``CLIPEmbedder``: the embedding API existing backend code calls, over the clip service.

Files (or image URLs) in, unit float32 vectors out; images go through ``/encode_images``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .env import ClientSettings, from_env
from .http import ClipClient, ClipServiceError, ImageInput, import_full, is_url

if TYPE_CHECKING:
    from clip_runner.settings import ClipSettings

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Statuses that mean "this file is not an image the model can read"; anything else (auth,
# overload, a server fault, no connection) is not the file's fault and is raised.
_BAD_IMAGE_STATUSES = frozenset({400, 413, 415})
# Texts per call: within the service's default per-request limit (CLIP_MAX_TEXTS=64).
_TEXT_CHUNK = 32


class CLIPEmbedder:
    """Image and text embeddings over HTTP or in-process (``backend=None``: :func:`~clip_client.env.from_env`).
    ``model_name``, ``device`` and ``settings`` configure an in-process model; a service serves its own."""

    def __init__(self, model_name: str | None = None, device: str = "auto", backend: ClipClient | None = None,
                 *, settings: ClipSettings | None = None) -> None:
        configured = model_name is not None or device != "auto" or settings is not None
        if backend is None:
            client = ClientSettings.from_env()
            # The in-process settings are built only when used: they need the full install.
            local = None if client.use_local_clip else _local_settings(model_name, device, settings)
            if configured and client.use_local_clip:
                logger.debug("model_name=%r, device=%r ignored: the CLIP service at %s serves its own model",
                             model_name, device, client.local_clip_url)
            backend = from_env(local, client=client)
        elif configured:
            logger.debug("model_name=%r, device=%r ignored: a backend was given", model_name, device)
        self.backend = backend
        self._dimension: int | None = None

    def __enter__(self) -> CLIPEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client (HTTP connections, or the in-process model)."""
        self.backend.close()

    async def generate_embedding(self, image_path: PathLike) -> np.ndarray | None:
        """The (D,) unit embedding of one image file or URL; ``None`` (logged) when it is not a usable image."""
        return await asyncio.to_thread(self._embed_file, _source(image_path))

    async def generate_embeddings_batch(self, image_paths: Sequence[PathLike], batch_size: int = 32,
                                        show_progress: bool = True) -> list[np.ndarray | None]:
        """One (D,) embedding per path or URL, in order, ``batch_size`` per request; ``None`` where unusable."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        paths = [_source(p) for p in image_paths]
        results: list[np.ndarray | None] = []
        with tqdm(total=len(paths), desc="embedding images", unit="img", disable=not show_progress) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                results += await asyncio.to_thread(self._embed_chunk, chunk)
                bar.update(len(chunk))
        return results

    def encode_image(self, image: ImageInput) -> np.ndarray:
        """The (D,) unit embedding of an image given as bytes, a path or a PIL image. Blocking."""
        return self.backend.encode_image(image)

    def _embed_file(self, path: Path | str) -> np.ndarray | None:
        if isinstance(path, Path) and not path.exists():
            raise FileNotFoundError(errno.ENOENT, "image file not found", str(path))
        data = _read(path)
        if data is None:
            return None
        try:
            return self.backend.encode_image(data)
        except ClipServiceError as exc:
            if exc.status not in _BAD_IMAGE_STATUSES:
                raise
            logger.warning("%s: not a usable image: %s", path, exc.message)
            return None

    def _embed_chunk(self, paths: list[Path | str]) -> list[np.ndarray | None]:
        read = [(i, blob) for i, path in enumerate(paths) if (blob := _read(path)) is not None]
        out: list[np.ndarray | None] = [None] * len(paths)
        if not read:
            return out
        encoded = self.backend.encode_images([blob for _, blob in read])
        for (i, _), row, error in zip(read, encoded.embeddings, encoded.errors, strict=True):
            if row is None:
                logger.warning("%s: not a usable image: %s", paths[i], error)
            out[i] = row
        return out

    def encode_text(self, text: str | Sequence[str]) -> np.ndarray:
        """A text → (D,); a list of texts → (N, D). Unit float32 rows. Blocking."""
        if isinstance(text, str):
            return self.backend.encode_text(text)
        texts = list(text)
        if not texts:
            return np.zeros((0, self.get_embedding_dimension()), dtype=np.float32)
        return np.concatenate([self.backend.encode_text(texts[i : i + _TEXT_CHUNK])
                               for i in range(0, len(texts), _TEXT_CHUNK)])

    @staticmethod
    def compute_similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity of two vectors (normalised or not); 0.0 when either is all zeros."""
        x = np.asarray(a, dtype=np.float64).ravel()
        y = np.asarray(b, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"vectors differ in size: {x.size} and {y.size}")
        norms = float(np.linalg.norm(x) * np.linalg.norm(y))
        return 0.0 if norms == 0.0 else float(x @ y / norms)

    def get_embedding_dimension(self) -> int:
        """D, the size of every embedding (asked of the service once)."""
        if self._dimension is None:
            self._dimension = int(self.backend.health()["embedding_size"])
        return self._dimension


def _local_settings(model_name: str | None, device: str, settings: ClipSettings | None) -> ClipSettings | None:
    """``settings`` (default: from ``CLIP_*``) with the constructor's model name and device applied."""
    updates = {**({"model_name": model_name} if model_name is not None else {}),
               **({"device": device} if device != "auto" else {})}
    if not updates:
        return settings
    base = settings or import_full("clip_runner.settings").ClipSettings()
    # Rebuilt rather than copied so that the fields are validated and count as explicitly set.
    return type(base)(**{**base.model_dump(exclude_unset=True), **updates})


def _source(image: PathLike) -> Path | str:
    """A path as a ``Path``; an image URL stays a string (the service fetches it)."""
    return image if is_url(image) else Path(image)  # type: ignore[return-value]


def _read(path: Path | str) -> bytes | str | None:
    """The file's bytes (a URL as is), or ``None`` (with a warning) when it is missing or cannot be read."""
    if isinstance(path, str):
        return path
    try:
        return path.read_bytes()
    except OSError as exc:
        logger.warning("%s: cannot read: %s", path, exc.strerror or exc)
        return None
