"""Device and thread choices for inference."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from .hardware import cpu_has_native_bf16
from .settings import cpu_share

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


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the encoder computes: the dtype its weights are cast to, and autocast on top.

    ``name`` is what logs, ``/health`` and the benchmark report ("fp32", "bf16", "fp16").
    """

    name: str
    weights: torch.dtype = torch.float32
    autocast: torch.dtype | None = None


def resolve_precision(device: torch.device, requested: str = "auto") -> Precision:
    """The precision ``CLIP_PRECISION`` asks for on ``device``.

    * CUDA: fp32 weights under fp16 autocast (``auto``/``fp16``), bf16 autocast, or plain fp32.
    * CPU: ``auto`` casts the weights to bf16 when the CPU has native bf16 (ViT-B-32 encodes
      3.5x faster than fp32 at cosine 0.9999 to the fp32 embedding, docs/performance.md), else
      fp32; ``bf16`` casts them whatever the CPU; ``fp16`` has no fast CPU kernels and falls
      back to fp32 with a warning. CPU autocast is never used: it re-casts every weight on
      every call, which is slower than fp32.
    """
    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not {requested!r}")
    if requested == "fp32":
        return Precision("fp32")
    if device.type == "cuda":
        if requested == "bf16":
            return Precision("bf16", autocast=torch.bfloat16)
        return Precision("fp16", autocast=torch.float16)
    if requested == "fp16":
        logger.warning("CLIP_PRECISION=fp16 is not supported on CPU; using fp32 (bf16 is the fast CPU choice)")
        return Precision("fp32")
    native = cpu_has_native_bf16()
    if requested == "auto" and not native:
        return Precision("fp32")
    if not native:
        logger.warning("CLIP_PRECISION=bf16 on a CPU without native bf16: expect it to be slower than fp32")
    return Precision("bf16", weights=torch.bfloat16)


def configure_threads(num_threads: int | None, workers: int = 1) -> int:
    """Set torch intra-op threads: the given number, else the CPUs shared among workers.

    Over-subscribing cores (torch's default of one thread per core in every worker) makes
    batched CPU inference slower, so each worker gets its share.
    """
    threads = num_threads or cpu_share(workers)
    torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", threads)
    return threads


MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now (clean file pages are simply dropped)


def page_out_gpu_libraries() -> int:
    """On a CPU, drop the resident pages of the CUDA libraries that torch's CUDA build maps.

    PyPI's torch for Linux is the CUDA build, on CPU machines too: importing it maps cuBLAS,
    NVRTC, nvJitLink and its own CUDA half, and leaves about 0.25 GB of their pages resident
    though a CPU worker never calls them. They are read-only file pages, so the kernel only
    drops them from this process (they would come back from the file if ever touched). Returns
    how many bytes were asked to go; 0 where there is nothing to drop (a CPU build of torch).
    """
    import ctypes

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
        logger.info("CPU serving: released the pages of %.0f MB of mapped CUDA libraries", released / 1e6)
    return released


def _is_gpu_library(path: str) -> bool:
    name = os.path.basename(path)
    return "/site-packages/nvidia/" in path or name.startswith(("libtorch_cuda", "libc10_cuda", "libcudart"))
