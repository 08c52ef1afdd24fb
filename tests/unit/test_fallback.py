"""The bundled demo model: registration from the bundle, explicit selection, offline fallback, strict mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clip_runner.errors import ModelNotAvailable
from clip_runner.settings import ClipSettings
from clip_runner.store import registration, selection
from clip_runner.store.entries import CONFIG_FILE, WEIGHTS_FILE, open_entry, read_beside_store
from clip_runner.store.registration import register_random
from tests.conftest import TINY_CONFIG


def _bundle(folder: Path, seed: int) -> Path:
    """A demo bundle laid out as the shipped one (models/demo/), made from a tiny random model."""
    entry = open_entry(register_random(str(TINY_CONFIG), seed=seed, name=f"bundle-src-{seed}"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(entry.path / name, folder / name)
    card = {"metadata": {"categories": ["red circle", "blue star"], "prompt_templates": ["a {}"],
                         "calibrated_threshold": 0.31}}
    (folder / registration.CARD_FILE).write_text(json.dumps(card))
    return folder


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = _bundle(tmp_path / "demo", seed=21)
    monkeypatch.setattr(registration, "DEMO_DIR", folder)
    return folder


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No default model in the store and the hub unreachable."""
    monkeypatch.setattr(selection, "hub_unreachable_reason", lambda *a, **k: "connection refused (test)")
    monkeypatch.setattr(selection.entries, "latest_tag", lambda name: None if not name.startswith("clip-demo")
                        else registration.latest_tag(name))


def test_register_demo_is_idempotent_and_carries_the_card(bundle: Path) -> None:
    first = registration.register_demo()
    assert registration.register_demo() == first  # same weights: no new version
    entry = open_entry(first)
    assert entry.tag.startswith(f"{registration.DEMO_STORE_NAME}:") and entry.labels["source"] == "demo"
    assert entry.metadata["categories"] == ["red circle", "blue star"]
    assert entry.metadata["calibrated_threshold"] == 0.31
    assert entry.metadata["bundle_sha256"] == registration.sha256_file(bundle / WEIGHTS_FILE)


def test_new_bundled_weights_register_a_new_version(bundle: Path, tmp_path: Path) -> None:
    first = registration.register_demo()
    other = _bundle(tmp_path / "other", seed=22)
    assert registration.register_demo(other) != first


def test_a_missing_bundle_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="make demo"):
        registration.register_demo(tmp_path / "nothing-here")


def test_model_name_demo_selects_it(bundle: Path) -> None:
    resolution = selection.select_model(ClipSettings(model_name="demo"))
    assert resolution.tag == registration.register_demo() and "demo" in resolution.reason


def test_offline_default_falls_back_to_the_demo_loudly(bundle: Path, offline, caplog) -> None:
    resolution = selection.select_model(ClipSettings())
    assert resolution.fallback and resolution.tag == registration.register_demo()
    assert "fallback to the demo model" in resolution.reason and "unreachable" in resolution.reason
    assert "FALLING BACK TO THE BUNDLED DEMO MODEL" in caplog.text and "docs/troubleshooting.md" in caplog.text
    decision = read_beside_store(selection.DECISION_FILE)  # why the default was what it was, beside the store
    assert decision["arch"] == "ViT-B-32" and decision["served_tag"] == resolution.tag and decision["rule"]


def test_strict_mode_refuses_the_fallback(bundle: Path, offline) -> None:
    with pytest.raises(ModelNotAvailable, match="CLIP_STRICT_MODEL forbids the demo fallback"):
        selection.select_model(ClipSettings(strict_model=True))


def test_explicit_settings_never_fall_back(bundle: Path, offline) -> None:
    with pytest.raises(ModelNotAvailable, match="not in the model store"):
        selection.select_model(ClipSettings(model_name="ViT-B-16", allow_download=False))
