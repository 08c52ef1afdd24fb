"""Hardware-aware default model: pick the largest CLIP the accelerator comfortably holds.

Used only when no model is configured. The decision, its inputs and the chosen model are
logged and written beside the model store (``$BENTOML_HOME/clip_hardware.json``) so that
operators can see why a model was chosen; ``/health`` shows it too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import torch

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


def detect_hardware(device: str = "auto") -> HardwareFacts:
    """Free/total memory of the CUDA device that would serve (none when CPU is forced or absent)."""
    if device == "cpu" or not torch.cuda.is_available():
        return HardwareFacts(cuda_available=False)
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
