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


ZEN2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\n" \
       "flags\t\t: fpu sse2 avx fma avx2 sha_ni\n"
ZEN5 = ZEN2.replace("23", "26").replace("49", "2").replace("avx2", "avx2 avx512f avx512_vnni avx512_bf16")
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"


@pytest.mark.parametrize(("cpuinfo", "name", "native_bf16"), [
    (ZEN2, "AMD EPYC (family 23 model 49; avx2)", False),
    (ZEN5, "AMD EPYC (family 26 model 2; avx2+avx512f+avx512_vnni+avx512_bf16)", True),
    (GRAVITON3, "(part 0xd40; asimddp+i8mm+bf16+sve)", False),
], ids=["zen2", "zen5", "graviton3"])
def test_cpu_name_tells_apart_generations_a_hypervisor_names_alike(monkeypatch, tmp_path, cpuinfo: str, name: str,
                                                                   native_bf16: bool) -> None:
    """The runtime choice remembers its timing per cpu_name(): "AMD EPYC" alone is Zen 2 (int8 slower than fp32)
    as well as Zen 5 (int8 several times faster)."""
    from clip_runner import hardware

    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    hardware._cpuinfo.cache_clear()  # read once per process: read the file given here
    try:
        assert hardware.cpu_name().endswith(name) and hardware.cpu_has_native_bf16() is native_bf16
    finally:
        hardware._cpuinfo.cache_clear()
