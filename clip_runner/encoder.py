"""Batched encoding: preprocessed pixels or texts in, L2-normalised float32 rows out.

The encoder runs one whole batch per call. It never sees undecoded bytes (those are
validated per request before batching), so one bad upload cannot fail a batch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import inference, resolve_precision
from .loading import LoadedModel
from .preprocess import normalize

logger = logging.getLogger(__name__)

# Rows leaving the batched encoder carry two trailing columns so that each caller learns how
# its item was served: the size of the batch it ran in and the batch's inference time (ms).
TRAILER_COLUMNS = 2


class BatchEncoder:
    """Encodes batches with one loaded model. Thread-compatible: one batch at a time per worker."""

    def __init__(self, loaded: LoadedModel, precision: str = "auto") -> None:
        """Wrap ``loaded``; a precision with non-fp32 weights (bf16 on CPU) casts the model in place."""
        self.loaded = loaded
        self.device = loaded.device
        self.precision = resolve_precision(self.device, precision)
        self._autocast = self.precision.autocast
        # Always cast (a no-op when it already matches): a model another encoder cast to
        # bf16 must not be served as fp32, nor the reverse.
        loaded.model.to(self.precision.weights)
        logger.info("encoder precision: %s", self.precision.name)
        pre = loaded.entry.preprocess_cfg
        self.mean = tuple(pre.get("mean") or loaded.entry.metadata["mean"])
        self.std = tuple(pre.get("std") or loaded.entry.metadata["std"])

    def warm_up(self) -> None:
        """Run one image and one text: the first call pays for lazy initialisation."""
        size = self.loaded.entry.preprocess_cfg.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        self.encode_pixels(np.zeros((1, h, w, 3), dtype=np.uint8))
        self.encode_texts(["warm up"])

    def _inference(self) -> contextlib.AbstractContextManager[None]:
        return inference(self.device, self._autocast)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) float32, unit rows."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) pixels, got shape {pixels.shape}")
        with self._inference():
            batch = normalize(pixels, self.mean, self.std, self.device, self.precision.weights)
            features = self.loaded.model.encode_image(batch)
        return self._finish(features, len(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) float32, unit rows."""
        tokens = self.loaded.tokenizer(list(texts)).to(self.device)
        with self._inference():
            features = self.loaded.model.encode_text(tokens)
        return self._finish(features, len(texts))

    @staticmethod
    def _finish(features: torch.Tensor, expected_rows: int) -> np.ndarray:
        # Normalise in fp32: fp16 norms lose precision for the cosine scores built on them.
        rows = F.normalize(features.float(), dim=-1).cpu().numpy()
        if rows.shape[0] != expected_rows:
            raise RuntimeError(f"encoder returned {rows.shape[0]} rows for {expected_rows} inputs")
        return rows.astype(np.float32, copy=False)


def encode_in_chunks(encode: Callable[[Any], np.ndarray], items: Sequence[Any], size: int = 64) -> np.ndarray:
    """``encode`` applied to ``items`` ``size`` at a time, rows concatenated in order.

    For offline tools (calibration, evaluation) that encode whole datasets with bounded memory;
    the service batches through BentoML instead.
    """
    return np.concatenate([encode(items[i : i + size]) for i in range(0, len(items), size)])


def with_trailer(rows: np.ndarray, batch_size: int, seconds: float) -> np.ndarray:
    """Append the batch size and inference milliseconds to every row."""
    trailer = np.empty((rows.shape[0], TRAILER_COLUMNS), dtype=np.float32)
    trailer[:, 0] = batch_size
    trailer[:, 1] = seconds * 1000.0
    return np.concatenate([rows, trailer], axis=1)


def split_trailer(rows: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Inverse of :func:`with_trailer`: (embeddings, batch size, inference ms)."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] <= TRAILER_COLUMNS:
        raise ValueError(f"encoder output has unexpected shape {rows.shape}")
    batch_size = int(rows[:, -2].max())
    infer_ms = float(rows[:, -1].max())
    return rows[:, :-TRAILER_COLUMNS], batch_size, infer_ms


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """Measure wall time: ``with timed() as t: ...; t[0]`` is seconds."""
    holder = [0.0]
    start = time.perf_counter()
    try:
        yield holder
    finally:
        holder[0] = time.perf_counter() - start
