"""CLIP_PRECISION → what the encoder computes in, per device."""

from __future__ import annotations

import pytest
import torch

from clip_runner.runtimes import torch_encoder as device_mod
from clip_runner.runtimes.torch_encoder import Precision, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_auto_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    expected = Precision("bf16", weights=torch.bfloat16) if native else Precision("fp32")
    assert resolve_precision(CPU, "auto") == expected


def test_cpu_explicit_choices(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision(CPU, "fp32") == Precision("fp32")
    with caplog.at_level("WARNING"):
        assert resolve_precision(CPU, "bf16") == Precision("bf16", weights=torch.bfloat16)
        assert resolve_precision(CPU, "fp16") == Precision("fp32")
    assert "slower than fp32" in caplog.text and "not supported on CPU" in caplog.text


def test_cuda_uses_autocast_over_fp32_weights() -> None:
    assert resolve_precision(CUDA, "auto") == Precision("fp16", autocast=torch.float16)
    assert resolve_precision(CUDA, "fp16") == Precision("fp16", autocast=torch.float16)
    assert resolve_precision(CUDA, "bf16") == Precision("bf16", autocast=torch.bfloat16)
    assert resolve_precision(CUDA, "fp32") == Precision("fp32")


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, fp32, fp16 or bf16"):
        resolve_precision(CPU, "int4")


def test_cpu_probe_answers_a_bool() -> None:
    assert isinstance(device_mod.cpu_has_native_bf16(), bool)
