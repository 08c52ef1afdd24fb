"""The built bento serves; its Dockerfiles are sound; SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import pytest

from bench import server
from clip_runner.store.entries import find_compiled, open_entry
from deploy.container import BASE_IMAGE
from tests.conftest import make_jpeg, server_env
from tests.e2e.conftest import ROOT, in_progress, start_server, stop_server, wait_for
from tests.payloads import held_upload

pytestmark = pytest.mark.slow


def _build(tag: str, variant: str = "cpu", **settings: str) -> str:
    args = [sys.executable, "-m", "deploy.build_bento", "--variant", variant]
    out = subprocess.run(args, cwd=ROOT, env=server_env({"CLIP_MODEL_TAG": tag, **settings}),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (ROOT / "bento_model.json").exists()  # the checkout is not left pinned
    return out.stdout.strip().splitlines()[-1]


def _pinned(bento_tag: str) -> str:
    return json.loads((Path(bentoml.get(bento_tag).path) / "src" / "bento_model.json").read_text())["tag"]


@pytest.fixture(scope="module")
def bento_tag(tiny_tag: str, compiled_tiny: dict[str, str]) -> str:
    """The slim CPU bento of the tiny torch entry, int8 asked for: it pins that compiled entry."""
    return _build(tiny_tag, CLIP_PRECISION="int8")


def test_the_slim_bento_pins_the_compiled_entry(bento_tag: str, tiny_tag: str) -> None:
    pinned = open_entry(_pinned(bento_tag))  # the store's int8 compile of the tiny model, as the runtime choice picks
    assert pinned.tag == find_compiled(tiny_tag, "int8").tag
    assert (pinned.labels["parent"], pinned.labels["precision"]) == (tiny_tag, "int8")


def _dockerfile(bento_tag: str) -> tuple[str, list[str]]:
    from bentoml._internal.container import construct_containerfile

    bento = bentoml.get(bento_tag)
    with construct_containerfile(bento) as (context, dockerfile):
        text = Path(context, dockerfile).read_text()
        files = [str(p.relative_to(context)) for p in Path(context).rglob("*") if p.is_file()]
    return text, files


def test_built_bento_serves_the_pinned_model(bento_tag: str, tmp_path) -> None:
    # From an empty folder, so what serves is the built bento, not the repo's service.py.
    srv = server.start(bento_tag, env=server_env({}), log=tmp_path / "bento.log", cwd=tmp_path)
    try:
        server.wait_ready(srv, timeout_s=120)
        url = srv.url
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["model"] == _pinned(bento_tag) and health["status"] == "healthy"
        assert (health["runtime"], health["precision"]) == ("openvino", "int8")
        resp = httpx.post(f"{url}/encode_image", files={"image": ("a.jpg", make_jpeg(1))}, timeout=60)
        assert resp.status_code == 200 and len(resp.json()) == 32
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        server.stop(srv)


def test_cpu_dockerfile(bento_tag: str) -> None:
    text, files = _dockerfile(bento_tag)
    assert "USER bentoml" in text and "EXPOSE 3000" in text
    assert "ENV CLIP_STRICT_MODEL" in text and "ENV CLIP_DEVICE" in text
    name, version = _pinned(bento_tag).split(":")
    assert {f"models/{name}/{version}/{part}" for part in ("image.xml", "image.bin", "text.bin")} <= set(files)
    assert f"FROM {BASE_IMAGE}" in text
    requirements = (Path(bentoml.get(bento_tag).path) / "env" / "python" / "requirements.txt").read_text()
    assert "openvino==" in requirements  # the runtime's wheel is installed in the image
    locked = {line.split("==")[0] for line in requirements.splitlines() if "==" in line}
    assert not locked & {"torch", "torchvision", "open-clip-torch", "triton", "nncf"}, locked
    assert not [name for name in locked if name.startswith("nvidia-") and name != "nvidia-ml-py"], locked  # CUDA
    assert "src/bento_model.json" in files and "src/service.py" in files
    assert not any(f.startswith("src/tests/") for f in files)


def test_cuda_variant(tiny_tag: str) -> None:
    tag = _build(tiny_tag, "cuda")
    text, _ = _dockerfile(tag)
    assert "FROM nvidia/cuda:12.8.1-cudnn-runtime" in text and "USER bentoml" in text
    assert "ENV CLIP_GPUS" in text
    info = bentoml.get(tag).info
    # The default layout runs the model in the public service: it is the one that needs the GPU.
    assert [s.name for s in info.services] == ["clip_service"]
    assert info.services[0].config.get("resources", {}).get("gpu") == 1
    assert {e.name: e.value for e in info.envs}["CLIP_DEVICE"] == "cuda"


def _answers(url: str) -> bool:
    """Whether the server takes a new request now (a shutting-down worker accepts no more)."""
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_lets_in_flight_requests_finish(tiny_tag: str, tmp_path) -> None:
    srv = start_server({"CLIP_MODEL_TAG": tiny_tag}, tmp_path / "s.log")
    release, pool = threading.Event(), ThreadPoolExecutor(1)
    try:
        # The request is in flight, its body held back, when SIGTERM arrives; the rest of the
        # body is sent only once the server has stopped taking new requests (shutting down).
        pending = pool.submit(held_upload, srv.url, make_jpeg(1), release)
        wait_for(lambda: in_progress(srv, "/encode_image") == 1, "the request to be in flight")
        os.kill(srv.proc.pid, signal.SIGTERM)
        wait_for(lambda: not _answers(srv.url), "the server to stop taking new requests")
        release.set()
        resp = pending.result(timeout=120)
        assert resp.status_code == 200 and len(resp.json()) == 32, resp.text
        assert srv.proc.wait(60) == 0, srv.output()
    finally:
        release.set()
        pool.shutdown()
        stop_server(srv)
