"""The hardware-aware default model decision, with faked device facts."""

from __future__ import annotations

import pytest

from clip_runner.hardware import HardwareFacts, detect_hardware
from clip_runner.store.selection import choose_default_model


@pytest.mark.parametrize(
    ("facts", "arch"),
    [
        (HardwareFacts(cuda_available=False), "ViT-B-32"),
        (HardwareFacts(True, "big", free_vram_gib=70.0, total_vram_gib=80.0), "ViT-L-14"),
        (HardwareFacts(True, "edge", free_vram_gib=8.0, total_vram_gib=10.0), "ViT-L-14"),
        (HardwareFacts(True, "mid", free_vram_gib=7.9, total_vram_gib=8.0), "ViT-B-16"),
        (HardwareFacts(True, "mid", free_vram_gib=4.0, total_vram_gib=6.0), "ViT-B-16"),
        (HardwareFacts(True, "small", free_vram_gib=3.9, total_vram_gib=4.0), "ViT-B-32"),
        (HardwareFacts(True, "unknown", free_vram_gib=None), "ViT-B-32"),
    ],
)
def test_tiers(facts: HardwareFacts, arch: str) -> None:
    choice = choose_default_model(facts)
    assert choice.arch == arch and choice.pretrained == "openai"
    assert choice.rule  # the reason is always stated


def test_cpu_forced_ignores_cuda() -> None:
    assert detect_hardware("cpu") == HardwareFacts(cuda_available=False)


def test_serves_on_cpu_reads_the_device_nodes_before_torch(monkeypatch, tmp_path) -> None:
    import sys

    from clip_runner import hardware

    monkeypatch.setattr(hardware, "NVIDIA_DEVICE_NODE", tmp_path / "nvidiactl")  # no driver loaded
    monkeypatch.setitem(sys.modules, "torch", None)  # so torch cannot be what answers
    assert hardware.serves_on_cpu("auto") and hardware.serves_on_cpu("cpu")
    assert not hardware.serves_on_cpu("cuda") and not hardware.serves_on_cpu("cuda:1")
