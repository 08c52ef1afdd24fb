"""Batched encoding: preprocessed pixels or texts in, L2-normalised float32 rows out.

The encoder runs one whole batch per call. It never sees undecoded bytes (those are
validated per request before batching), so one bad upload cannot fail a batch. torch is
imported by :class:`BatchEncoder` when one is made, not by this module: a worker serving a
compiled entry (:class:`~clip_runner.compiled.CompiledEncoder`) never loads it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import StoreEntry

if TYPE_CHECKING:
    import torch

    from .device import Precision
    from .loading import LoadedModel

logger = logging.getLogger(__name__)


class Encoder:
    """What the batcher calls: batches of pixels or texts in, unit rows out, one batch at a time.

    :class:`BatchEncoder` runs a torch model; :class:`~clip_runner.compiled.CompiledEncoder` a
    compiled entry. ``entry`` is the store entry served; ``describe()`` feeds ``/health``.
    """

    entry: StoreEntry
    tokenizer: Callable[[list[str]], Any]  # texts → (N, context_length) token ids, zero-padded

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) float32, unit rows."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) float32, unit rows."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Runtime, device, precision and load time, for ``/health`` and logs."""
        raise NotImplementedError

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads per text: start and end tokens included, cut at the context length."""
        ids = np.asarray(self.tokenizer(list(texts)))
        return [int(np.flatnonzero(row)[-1]) + 1 if row.any() else 0 for row in ids]

    def warm_up(self) -> None:
        """Run one image and one text: the first call pays for lazy initialisation."""
        size = self.entry.preprocess_cfg.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        self.encode_pixels(np.zeros((1, h, w, 3), dtype=np.uint8))
        self.encode_texts(["warm up"])


class BatchEncoder(Encoder):
    """Encodes batches with one loaded torch model. Thread-compatible: one batch at a time per worker."""

    def __init__(self, loaded: LoadedModel, precision: Precision | str = "auto") -> None:
        """Wrap ``loaded``, casting its weights to ``precision`` (a no-op when loaded so)."""
        from .device import resolve_precision

        self.loaded = loaded
        self.entry = loaded.entry
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        if isinstance(precision, str):
            precision = resolve_precision(self.device, precision)
        self.precision = precision
        # Always cast: a model another encoder cast to bf16 must not be served as fp32.
        loaded.model.to(precision.weights)
        pre = loaded.entry.preprocess_cfg
        self.mean = tuple(pre.get("mean") or loaded.entry.metadata["mean"])
        self.std = tuple(pre.get("std") or loaded.entry.metadata["std"])

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) float32, unit rows."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) pixels, got shape {pixels.shape}")
        with inference(self.device, self.precision.autocast):
            batch = normalize(pixels, self.mean, self.std, self.device, self.precision.weights)
            features = self.loaded.model.encode_image(batch)
        return unit_rows(features.float().cpu().numpy(), len(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) float32, unit rows."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with inference(self.device, self.precision.autocast):
            features = self.loaded.model.encode_text(tokens)
        return unit_rows(features.float().cpu().numpy(), len(texts))

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "device": self.device.type, "device_name": str(self.device),
                "precision": self.precision.name, "load_seconds": round(self.loaded.load_seconds, 3)}


def unit_rows(features: np.ndarray, expected_rows: int) -> np.ndarray:
    """Model output → float32 rows of unit length (a zero row stays zero)."""
    # Normalise in fp32: fp16 norms lose precision for the cosine scores built on them.
    rows = np.asarray(features, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] != expected_rows:
        raise RuntimeError(f"encoder returned {rows.shape[0] if rows.ndim else 0} rows for {expected_rows} inputs")
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode()``, plus autocast to ``dtype`` when one is given (CUDA)."""
    import torch

    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=dtype):
                yield


def normalize(pixels: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
              device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) normalised ``dtype`` (arithmetic in fp32), on ``device``.

    Same arithmetic as torchvision's ToTensor + Normalize, but once per batch and on the
    target device (the uint8 copy to a GPU is 4× smaller than a float one). ``dtype``: fp32 when None.
    """
    import torch

    batch = torch.as_tensor(pixels).to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).to(dtype or torch.float32)


def encode_in_chunks(encode: Callable[[Any], np.ndarray], items: Sequence[Any], size: int = 64) -> np.ndarray:
    """``encode`` applied to ``items`` ``size`` at a time, rows concatenated in order.

    For offline tools (calibration, evaluation) that encode whole datasets with bounded memory.
    """
    return np.concatenate([encode(items[i : i + size]) for i in range(0, len(items), size)])
