"""Facts about this machine: does the model serve on the CPU, which CPU is it, how much VRAM is free.
Read without torch, except where a GPU is present and only CUDA can answer."""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GIB = 1024**3
NVIDIA_DEVICE_NODE = Path("/dev/nvidiactl")  # present wherever an NVIDIA driver is loaded
CPUINFO = Path("/proc/cpuinfo")
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",  # x86, then
                "asimddp", "i8mm", "bf16", "sve")  # ARM: the extensions OpenVINO's and oneDNN's kernels choose by


@dataclasses.dataclass(frozen=True)
class HardwareFacts:
    """The accelerator the model would serve on (none: the CPU)."""

    cuda_available: bool
    device_name: str | None = None
    free_vram_gib: float | None = None
    total_vram_gib: float | None = None


def _cuda() -> Any:
    """``torch.cuda``, asked only where an NVIDIA driver is present."""
    import torch  # torch boundary: only CUDA itself can say whether a GPU is usable

    return torch.cuda


def serves_on_cpu(device: str = "auto") -> bool:
    """Whether ``CLIP_DEVICE`` puts the model on the CPU: ``cpu``, or ``auto`` with no usable GPU."""
    if device != "auto":
        return device == "cpu"
    return not NVIDIA_DEVICE_NODE.exists() or not _cuda().is_available()


def detect_hardware(device: str = "auto") -> HardwareFacts:
    """Free/total memory of the CUDA device that would serve (none when CPU is forced or absent)."""
    if serves_on_cpu(device):
        return HardwareFacts(cuda_available=False)
    cuda = _cuda()
    index = int(device.partition(":")[2] or 0)
    try:
        free, total = cuda.mem_get_info(index)
        name = cuda.get_device_name(index)
    except RuntimeError as exc:  # a broken driver should not stop a CPU-capable server
        logger.warning("could not query CUDA memory (%s); treating as CPU", exc)
        return HardwareFacts(cuda_available=False)
    return HardwareFacts(True, name, round(free / GIB, 2), round(total / GIB, 2))


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """Each ``/proc/cpuinfo`` key's first value (the first CPU's), read once; empty where there is no such file."""
    try:
        pairs = [line.partition(":")[::2] for line in CPUINFO.read_text().splitlines()]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, value in reversed(pairs)}  # reversed: the first value wins


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where the system does not say."""
    return frozenset((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_name() -> str:
    """The CPU as its kernels' speed depends on it: model name, family and model (a hypervisor may show one
    generic name for several generations) and vector extensions, e.g. ``AMD EPYC (family 23 model 49; avx2)``."""
    info = _cpuinfo()
    ids = " ".join(f"{label} {value}" for label, key in (("family", "cpu family"), ("model", "model"),
                                                         ("part", "CPU part")) if (value := info.get(key)))
    facts = "; ".join(filter(None, (ids, "+".join(filter(cpu_flags().__contains__, VECTOR_FLAGS)))))
    return (info.get("model name") or platform.processor() or platform.machine()) + (f" ({facts})" if facts else "")
