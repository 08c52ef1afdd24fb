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
    probe = ("import sys, service; heavy = ['torch', 'open_clip', 'torchvision', 'openvino', 'huggingface_hub', "
             "'clip_runner.startup', 'clip_runner.runtimes.choice', 'clip_runner.store.selection']; "
             "print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=server_env({}),
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr


def test_service_config_follows_the_settings() -> None:
    import service

    untraced = {"tracing": {"excluded_urls": [".*"]}}
    assert service.service_config(ClipSettings()) == {"workers": 1, "traffic": {"timeout": 600}, **untraced}
    assert service.service_config(ClipSettings(workers=3, gpus=1, tracing=True)) == {
        "workers": 3, "traffic": {"timeout": 600}, "resources": {"gpu": 1}}


def test_requests_are_traced_only_when_asked() -> None:
    """BentoML itself reads the service's config: untraced by default, its own tracing config with
    CLIP_TRACING=true."""
    probe = ("import service; from bentoml._internal.configuration.containers import BentoMLContainer; "
             "service.ClipService.inject_config(); "
             "print(BentoMLContainer.tracing_excluded_urls.get().url_disabled('http://h/encode_image'))")
    for env, untraced in (({}, "True"), ({"CLIP_TRACING": "true"}, "False")):
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=server_env(env),
                              capture_output=True, text=True, timeout=120, check=True)
        assert done.stdout.strip().splitlines()[-1] == untraced, done.stderr


def test_a_bento_serves_its_baked_model_unless_told_otherwise(tmp_path, monkeypatch) -> None:
    import service

    baked = tmp_path / "bento_model.json"
    monkeypatch.setattr(service, "BAKED_MODEL_FILE", baked)
    assert service.served_settings(ClipSettings()).model_tag is None  # a source checkout
    baked.write_text(json.dumps({"tag": "clip-x:v1"}))
    assert service.served_settings(ClipSettings()).model_tag == "clip-x:v1"
    assert service.served_settings(ClipSettings(model_tag="clip-y:v2")).model_tag == "clip-y:v2"


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=server_env({}),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_cpu_worker_leaves_triton_unloaded() -> None:
    """torchvision's import would load triton (100 MB) only to probe it; torch still works without."""
    probe = ("import service; service._skip_triton_on_cpu('{device}'); import open_clip, torch; "
             "print('libtriton' in open('/proc/self/maps').read(), float(torch.ones(2) @ torch.ones(2)))")
    assert _run(probe.format(device="cpu")) == "False 2.0"
    triton_installed = _run("import importlib.util; print(importlib.util.find_spec('triton') is not None)")
    if triton_installed == "True":  # where it exists, a GPU worker keeps it
        assert _run(probe.format(device="cuda")) == "True 2.0"


def test_a_cpu_worker_releases_the_pages_of_cuda_libraries() -> None:
    """The CUDA build of torch maps its CUDA libraries on a CPU too: their pages are handed back."""
    probe = ("import torch; from clip_runner.runtimes.torch_encoder import page_out_gpu_libraries, _is_gpu_library; "
             "mapped = any(_is_gpu_library(l.split()[-1]) for l in open('/proc/self/maps') if len(l.split()) > 5); "
             "released = page_out_gpu_libraries(); print(mapped, released > 0, float(torch.ones(2) @ torch.ones(2)))")
    mapped, released, works = _run(probe).split()
    assert released == mapped and works == "2.0"  # something to release exactly when CUDA libraries are mapped
