"""Which BentoML service holds the model, with how many workers and GPUs, per CLIP_ENCODER_MODE."""

from __future__ import annotations

import pytest

from clip_http.backend import service_configs
from clip_runner.settings import ClipSettings


def test_in_process_layout_gives_the_public_service_the_model_workers_and_gpus() -> None:
    encoder, entry = service_configs(ClipSettings(encoder_workers=2, gpus=1))
    assert entry == {"workers": 2, "resources": {"gpu": 1}, "traffic": {"timeout": 600}}
    assert encoder == entry  # declared but unused: no service depends on it in this layout


def test_service_layout_keeps_one_entry_worker_and_puts_gpus_on_the_encoder() -> None:
    encoder, entry = service_configs(ClipSettings(encoder_mode="service", encoder_workers=3, gpus=2))
    runner_connection = encoder.pop("runner_connection")
    assert encoder == {"workers": 3, "resources": {"gpu": 2}, "traffic": {"timeout": 600}}
    assert entry == {"workers": 1, "traffic": {"timeout": 600}}
    # The entry's client never recycles its session to the encoder (which fails calls in flight).
    assert runner_connection["max_requests"] >= 2**31 - 1 and runner_connection["max_age"] >= 1e9


def test_no_gpus_declared_by_default() -> None:
    encoder, entry = service_configs(ClipSettings())
    assert "resources" not in encoder and "resources" not in entry
    assert ClipSettings().encoder_mode == "inprocess"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="encoder_mode"):
        ClipSettings(encoder_mode="sidecar")


def test_decode_threads_default_to_twice_the_cpus_at_least_four(monkeypatch) -> None:
    from clip_runner import device, pipeline

    monkeypatch.setattr(device, "available_cpus", lambda: 16)
    assert pipeline.decode_threads(ClipSettings()) == 32  # a GPU box: cores free for decoding
    assert pipeline.decode_threads(ClipSettings(encoder_workers=8)) == 4  # 8 workers share them
    assert pipeline.decode_threads(ClipSettings(encoder_workers=3)) == 10
    # Two-service layout: the encoder's workers hold the model; the one public worker decodes.
    assert pipeline.decode_threads(ClipSettings(encoder_mode="service", encoder_workers=8)) == 32
    monkeypatch.setattr(device, "available_cpus", lambda: 1)
    assert pipeline.decode_threads(ClipSettings()) == 4
    assert pipeline.decode_threads(ClipSettings(decode_threads=3)) == 3  # CLIP_DECODE_THREADS wins
