"""Facts about this machine, and the hardware-aware default model they lead to.

:func:`serves_on_cpu` and the CPU facts (:func:`cpu_name`, :func:`cpu_has_native_bf16`) are
read without importing torch, so a worker serving a compiled entry never loads it. The default
model (the largest CLIP the accelerator comfortably holds) applies only when no model is
configured. The decision, its inputs and the chosen model are
logged and written beside the model store (``$BENTOML_HOME/clip_hardware.json``) so that
operators can see why a model was chosen; ``/health`` shows it too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import platform
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DECISION_FILE = "clip_hardware.json"
GIB = 1024**3

# (minimum free VRAM in GiB, architecture, pretrained tag), largest first.
TIERS: tuple[tuple[float, str, str], ...] = (
    (8.0, "ViT-L-14", "openai"),
    (4.0, "ViT-B-16", "openai"),
    (0.0, "ViT-B-32", "openai"),
)


@dataclasses.dataclass(frozen=True)
class HardwareFacts:
    """What the decision is based on."""

    cuda_available: bool
    device_name: str | None = None
    free_vram_gib: float | None = None
    total_vram_gib: float | None = None


@dataclasses.dataclass(frozen=True)
class DefaultChoice:
    """The chosen default and the rule that chose it."""

    arch: str
    pretrained: str
    rule: str
    facts: HardwareFacts

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "pretrained": self.pretrained, "rule": self.rule,
                "facts": dataclasses.asdict(self.facts)}


NVIDIA_DEVICE_NODE = Path("/dev/nvidiactl")  # present wherever an NVIDIA driver is loaded


def serves_on_cpu(device: str = "auto") -> bool:
    """Whether ``CLIP_DEVICE`` puts the model on the CPU: ``cpu``, or ``auto`` with no usable GPU.

    ``auto`` imports torch only where an NVIDIA driver is present (to ask CUDA); on a machine
    without one the answer needs no torch.
    """
    if device != "auto":
        return device == "cpu"
    if not NVIDIA_DEVICE_NODE.exists():
        return True
    import torch

    return not torch.cuda.is_available()


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line whose key is one of ``keys`` (None: none, or no file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where the system does not say)."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())  # x86, ARM


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16).

    Without it bf16 is emulated and slower than fp32, so no ``auto`` choice picks it.
    """
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def detect_hardware(device: str = "auto") -> HardwareFacts:
    """Free/total memory of the CUDA device that would serve (none when CPU is forced or absent)."""
    if serves_on_cpu(device):
        return HardwareFacts(cuda_available=False)
    import torch

    index = torch.device(device).index if device.startswith("cuda:") else 0
    try:
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
    except RuntimeError as exc:  # a broken driver should not stop a CPU-capable server
        logger.warning("could not query CUDA memory (%s); treating as CPU", exc)
        return HardwareFacts(cuda_available=False)
    return HardwareFacts(True, name, round(free / GIB, 2), round(total / GIB, 2))


def choose_default_model(facts: HardwareFacts) -> DefaultChoice:
    """≥ 8 GiB free VRAM → ViT-L-14, 4–8 GiB → ViT-B-16, otherwise (or CPU) → ViT-B-32."""
    if not facts.cuda_available or facts.free_vram_gib is None:
        return DefaultChoice("ViT-B-32", "openai", "no CUDA device: ViT-B-32", facts)
    for minimum, arch, pretrained in TIERS:
        if facts.free_vram_gib >= minimum:
            rule = f"{facts.free_vram_gib:.1f} GiB free VRAM >= {minimum:g} GiB: {arch}"
            return DefaultChoice(arch, pretrained, rule, facts)
    raise AssertionError("the last tier has no minimum")  # pragma: no cover


def record_decision(choice: DefaultChoice, home: str | Path, served_tag: str | None = None) -> Path:
    """Write the decision as JSON beside the model store and log it; returns the file path."""
    path = Path(home) / DECISION_FILE
    body = {**choice.to_dict(), "served_tag": served_tag,
            "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2))
    except OSError as exc:  # a read-only store must not stop serving
        logger.warning("could not write %s: %s", path, exc)
    logger.info("default model decision: %s (%s)", choice.arch, choice.rule)
    return path
