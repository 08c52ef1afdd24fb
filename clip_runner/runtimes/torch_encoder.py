"""The torch runtime: a store entry served by open_clip on CPU or CUDA, and the device choices it needs.

The serving side's only home of torch: the runtime choice imports it only when torch serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..hardware import cpu_has_native_bf16
from ..settings import ClipSettings
from ..store.entries import StoreEntry
from ..store.weights import LoadedModel, TorchIds, load_entry
from .encoder import Encoder, check_pixels, warn_fp16_on_cpu

logger = logging.getLogger(__name__)


class TorchEncoder(Encoder):
    """Encodes batches with one loaded torch model. Thread-compatible: one batch at a time per worker."""

    def __init__(self, loaded: LoadedModel, precision: Precision | str = "auto") -> None:
        """Wrap ``loaded``, casting its weights to ``precision`` (a no-op when loaded so)."""
        self.loaded = loaded
        self.entry = loaded.entry
        if isinstance(loaded.tokenizer, TorchIds):
            self.padding = loaded.tokenizer.padding
        self.device = loaded.device
        if isinstance(precision, str):
            precision = resolve_precision(self.device, precision)
        self.precision = precision
        # Always cast: a model another encoder cast to bf16 must not be served as fp32.
        loaded.model.to(precision.weights)
        pre = loaded.entry.preprocess_cfg
        self.mean = tuple(pre.get("mean") or loaded.entry.metadata["mean"])
        self.std = tuple(pre.get("std") or loaded.entry.metadata["std"])

    @classmethod
    def serve(cls, entry: StoreEntry, settings: ClipSettings, threads: int) -> TorchEncoder:
        """Load ``entry`` for serving: ``threads`` intra-op threads, the configured device and precision."""
        configure_threads(threads)
        device = pick_device(settings.device)
        precision = resolve_precision(device, settings.precision)
        encoder = cls(load_entry(entry, device, precision.weights), precision)
        if device.type == "cpu":
            page_out_gpu_libraries()
        return encoder

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self.loaded.tokenizer(list(texts)).numpy()

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        check_pixels(pixels)
        with inference(self.device, self.precision.autocast):
            batch = normalize(pixels, self.mean, self.std, self.device, self.precision.weights)
            return self.loaded.model.encode_image(batch).float().cpu().numpy()

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        with inference(self.device, self.precision.autocast):
            return self.loaded.model.encode_text(torch.as_tensor(tokens).to(self.device)).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "device": self.device.type, "device_name": str(self.device),
                "precision": self.precision.name, "load_seconds": round(self.loaded.load_seconds, 3)}


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode()``, plus autocast to ``dtype`` when one is given (CUDA)."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        yield


def normalize(pixels: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
              device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) ``dtype`` (default fp32) on ``device``: torchvision's ToTensor +
    Normalize in fp32, once per batch, on the device (a uint8 copy to a GPU is 4× smaller)."""
    batch = torch.as_tensor(pixels).to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).to(dtype or torch.float32)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when present, else CPU; ``cuda`` without a GPU fails loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"CLIP_DEVICE={requested} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"CLIP_DEVICE={requested} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the encoder computes: the dtype its weights are cast to, and autocast on top."""

    name: str
    weights: torch.dtype = torch.float32
    autocast: torch.dtype | None = None


def resolve_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The precision ``CLIP_PRECISION`` asks for on ``device``: autocast on CUDA; on CPU, weights cast to bf16
    where it is native (``auto``) or asked for (docs/performance.md). CPU autocast re-casts every weight per call."""
    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not {requested!r}")
    if requested == "fp32":
        return Precision("fp32")
    if device.type == "cuda":
        if requested == "bf16":
            return Precision("bf16", autocast=torch.bfloat16)
        return Precision("fp16", autocast=torch.float16)
    if requested == "fp16":
        warn_fp16_on_cpu()
        return Precision("fp32")
    native = cpu_has_native_bf16()
    if requested == "auto" and not native:
        return Precision("fp32")
    if not native:
        logger.warning("CLIP_PRECISION=bf16 on a CPU without native bf16: expect it to be slower than fp32")
    return Precision("bf16", weights=torch.bfloat16)


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads (:attr:`ClipSettings.inference_thread_count` when serving)."""
    torch.set_num_threads(threads)
    return threads


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (clean file pages are simply dropped)


def page_out_gpu_libraries() -> int:
    """On a CPU, drop the ~0.25 GB of resident read-only pages of the CUDA libraries PyPI's torch maps (they
    come back from the file if ever touched); returns the bytes asked to go, 0 for a CPU build of torch."""
    try:
        madvise = ctypes.CDLL("libc.so.6", use_errno=True).madvise
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:  # not Linux with glibc
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or "w" in fields[1] or not _is_gpu_library(fields[5]):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) == 0:
            released += end - start
    if released:
        logger.debug("CPU serving: released the pages of %.0f MB of mapped CUDA libraries", released / 1e6)
    return released


def _is_gpu_library(path: str) -> bool:
    name = os.path.basename(path)
    return "/site-packages/nvidia/" in path or name.startswith(("libtorch_cuda", "libc10_cuda", "libcudart"))
