"""The encoder interface every runtime implements, in the three phases of an encode.

**pre** (:meth:`Encoder.tokenize`, in the decode threads), **core** (:meth:`Encoder.image_features`,
:meth:`Encoder.text_features`: one batch per call, on the model thread) and **post**
(:func:`unit_rows`). Importing this module loads no runtime library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..store.entries import StoreEntry

logger = logging.getLogger(__name__)


class Encoder:
    """A model in one runtime: the torch encoder or the OpenVINO encoder. ``entry`` is the store
    entry served; ``describe()`` feeds ``/health`` and the start-up log."""

    entry: StoreEntry
    padding: tuple[int, bool] = (0, False)  # CLIP BPE pads with 0; a Hugging Face tokenizer says its own

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """pre: N texts → (N, context_length) int64 token ids, zero-padded, cut at the context length."""
        raise NotImplementedError

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """core: (N, H, W, 3) uint8 → (N, D) float32 features (not normalised)."""
        raise NotImplementedError

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        """core: (N, context_length) token ids → (N, D) float32 features (not normalised)."""
        raise NotImplementedError

    def token_counts(self, tokens: np.ndarray) -> list[int]:
        """Tokens the model reads per row of :meth:`tokenize`'s ids."""
        return token_counts(tokens, *self.padding)

    def describe(self) -> dict[str, Any]:
        """Runtime, device, precision and load time, for ``/health`` and logs."""
        raise NotImplementedError

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) unit rows: core and post in one call."""
        return unit_rows(self.image_features(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) unit rows: pre, core and post in one call."""
        return unit_rows(self.text_features(self.tokenize(texts)))

    def warm_up(self) -> None:
        """Run one image and one text: the first call pays for lazy initialisation, not a caller."""
        self.encode_pixels(np.zeros((1, *self.entry.input_size, 3), dtype=np.uint8))
        self.encode_texts(["warm up"])


def warn_fp16_on_cpu() -> None:
    """fp16 has no fast CPU kernels: every CPU runtime serves fp32 instead, and says so."""
    logger.warning("CLIP_PRECISION=fp16 is not supported on CPU; using fp32 (bf16 is the fast CPU choice)")


def check_pixels(pixels: np.ndarray) -> None:
    """Refuse anything but a batch of (H, W, 3) images."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) pixels, got shape {pixels.shape}")


def unit_rows(features: np.ndarray) -> np.ndarray:
    """post: features → float32 rows of unit length (a zero row stays zero)."""
    # Normalise in fp32: fp16 norms lose precision for the cosine scores built on them.
    rows = np.asarray(features, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def token_counts(tokens: np.ndarray, pad_id: int = 0, pad_ends: bool = False) -> list[int]:
    """Tokens the model reads per row of ids, start and end tokens included: up to the last one that is not
    padding (and one more when the pad token is the end token too, as SigLIP's is)."""
    counts = []
    for row in np.asarray(tokens):
        content = np.flatnonzero(row != pad_id)
        counts.append(min((int(content[-1]) + 1 if len(content) else 0) + pad_ends, len(row)))
    return counts


def encode_in_chunks(encode: Callable[[Any], np.ndarray], items: Sequence[Any], size: int = 64) -> np.ndarray:
    """``encode`` applied to ``items`` ``size`` at a time, rows concatenated in order (offline tools:
    whole datasets in bounded memory)."""
    return np.concatenate([encode(items[i : i + size]) for i in range(0, len(items), size)])
