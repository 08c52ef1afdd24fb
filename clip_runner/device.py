"""Device and thread choices for inference."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when present, else CPU; ``cuda`` without a GPU fails loudly."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"CLIP_DEVICE={requested} but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"CLIP_DEVICE={requested} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Autocast dtype for inference: fp16 (or bf16) on CUDA, none (fp32) on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks and container cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None, workers: int = 1) -> int:
    """Set torch intra-op threads: the given number, else the CPUs shared among workers.

    Over-subscribing cores (torch's default of one thread per core in every worker) makes
    batched CPU inference slower, so each worker gets its share.
    """
    threads = num_threads or max(1, available_cpus() // max(1, workers))
    torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", threads)
    return threads


@contextlib.contextmanager
def inference(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.inference_mode()``, plus autocast to ``dtype`` when one is given (CUDA)."""
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=dtype):
                yield
