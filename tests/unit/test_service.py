"""service.py: what the supervisor process loads, and the BentoML config it declares."""

from __future__ import annotations

import json
import subprocess
import sys

from clip_runner.settings import ClipSettings
from tests.conftest import server_env
from tests.e2e.conftest import ROOT


def test_the_supervisor_loads_neither_torch_nor_the_model_code() -> None:
    """`bentoml serve` imports service.py in its supervisor too: it must stay light."""
    probe = ("import sys, service; heavy = ['torch', 'open_clip', 'torchvision', 'PIL', 'clip_runner.encoder', "
             "'clip_runner.images', 'clip_runner.loading']; print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=server_env({}),
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_service_config_follows_the_settings() -> None:
    import service

    assert service.service_config(ClipSettings()) == {"workers": 1, "traffic": {"timeout": 600}}
    assert service.service_config(ClipSettings(workers=3, gpus=1)) == {
        "workers": 3, "traffic": {"timeout": 600}, "resources": {"gpu": 1}}


def test_a_bento_serves_its_baked_model_unless_told_otherwise(tmp_path, monkeypatch) -> None:
    import service

    baked = tmp_path / "bento_model.json"
    monkeypatch.setattr(service, "BAKED_MODEL_FILE", baked)
    assert service.served_settings(ClipSettings()).model_tag is None  # a source checkout
    baked.write_text(json.dumps({"tag": "clip-x:v1"}))
    assert service.served_settings(ClipSettings()).model_tag == "clip-x:v1"
    assert service.served_settings(ClipSettings(model_tag="clip-y:v2")).model_tag == "clip-y:v2"
