"""Server settings: read once from CLIP_* variables."""

from __future__ import annotations

import pytest

from clip_runner.settings import ClipSettings


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`CLIP_MODEL_NAME=` (as .env and compose files leave it) is the default, for every setting."""
    from clip_runner.settings import ClipSettings

    for name in ClipSettings.model_fields:
        monkeypatch.setenv(f"CLIP_{name.upper()}", "")
    monkeypatch.setenv("CLIP_WORKERS", "")
    assert ClipSettings() == ClipSettings.model_construct()
    assert not ClipSettings().model_configured  # so the hardware-aware default applies


def test_workers_keep_their_older_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_ENCODER_WORKERS", "3")
    assert ClipSettings().workers == 3
    monkeypatch.setenv("CLIP_WORKERS", "2")
    assert ClipSettings().workers == 2
