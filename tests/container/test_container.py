"""The slim CPU image, built as `make container` builds it, started and checked against the host service.

Run by `make test-container` (tests/container/conftest.py); skipped where no engine exists.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import bentoml
import httpx
import numpy as np
import openai
import pytest

from bench import container, server
from bench.server import Server
from deploy.build_bento import build
from deploy.container import ContainerError, build_image, find_engine
from tests.conftest import clip_env, make_jpeg
from tests.e2e.conftest import in_progress, start_server, stop_server, wait_for
from tests.payloads import held_upload

KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Image(NamedTuple):
    engine: str
    ref: str
    model: str  # the compiled entry pinned in it


class Started(NamedTuple):
    server: Server
    ready_s: float


@pytest.fixture(scope="module")
def image() -> Image:
    """`make container`: the slim bento of the demo model (compiled here), then its image."""
    try:
        engine = find_engine()
    except ContainerError as exc:
        pytest.skip(str(exc))
    with clip_env({}):
        bento_tag = build("cpu")
    baked = Path(bentoml.get(bento_tag).path, "src", "bento_model.json")
    return Image(engine, build_image(engine, bento_tag, "cpu"), json.loads(baked.read_text())["tag"])


def _readyz(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def started(image: Image, tmp_path_factory) -> Iterator[Started]:
    """The image running with an API key, as the manifests run it (read-only root, BENTOML_PORT)."""
    log = tmp_path_factory.mktemp("container") / "container.log"
    begin = time.monotonic()
    srv = container.start(image.engine, image.ref, {"CLIP_API_KEY": KEY}, log=log)
    try:
        server.wait_ready(srv, _readyz, timeout_s=300)
        yield Started(srv, time.monotonic() - begin)
    finally:
        server.stop(srv)


@pytest.fixture(scope="module")
def host(image: Image, tmp_path_factory) -> Iterator[Server]:
    """The same compiled entry served on the host, from the checkout."""
    srv = start_server({"CLIP_MODEL_TAG": image.model}, tmp_path_factory.mktemp("host") / "host.log")
    yield srv
    stop_server(srv)


def test_ready_in_seconds_as_a_non_root_user(image: Image, started: Started) -> None:
    assert started.ready_s < 30, started.server.output()
    assert container.inspect_image(image.engine, image.ref, "{{.Config.User}}") == "bentoml"
    healthcheck = container.inspect_image(image.engine, image.ref, "{{json .Config.Healthcheck}}")
    assert "/readyz" in healthcheck and "BENTOML_PORT" in healthcheck


def test_health_names_the_pinned_compiled_entry(image: Image, started: Started) -> None:
    health = httpx.get(f"{started.server.url}/health", timeout=10).json()
    assert health["model"] == image.model and health["status"] == "healthy"
    assert health["runtime"] == "openvino"


def _cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    x, y = np.asarray(a), np.asarray(b)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def test_vectors_equal_the_host_services(started: Started, host: Server) -> None:
    texts = {"text": ["a red circle", "a blue square on a white background", "ein grünes Dreieck"]}
    ours, theirs = (httpx.Client(base_url=s.url, headers=AUTH, timeout=60) for s in (started.server, host))
    got, want = ours.post("/encode_text", json=texts), theirs.post("/encode_text", json=texts)
    assert got.status_code == want.status_code == 200, got.text
    assert len(got.json()) == 3 and _cosines(got.json(), want.json()).min() >= 0.9999
    for seed in range(3):
        photo = {"image": ("photo.jpg", make_jpeg(seed), "image/jpeg")}
        got, want = ours.post("/encode_image", files=photo), theirs.post("/encode_image", files=photo)
        assert got.status_code == want.status_code == 200, got.text
        assert _cosines([got.json()], [want.json()])[0] >= 0.9999


def test_openai_sdk_with_the_api_key(started: Started) -> None:
    url = started.server.url
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    got = sdk.embeddings.create(model="clip", input=["a red circle"]).data[0].embedding
    want = httpx.post(f"{url}/encode_text", json={"text": "a red circle"}, headers=AUTH, timeout=30).json()
    assert _cosines([got], [want])[0] >= 0.9999
    assert httpx.post(f"{url}/encode_text", json={"text": "x"}, timeout=30).status_code == 401


def test_torch_is_not_in_the_image(image: Image) -> None:
    for module in ("torch", "torchvision", "open_clip"):
        done = container.run_in_image(image.engine, image.ref, "python", "-c", f"import {module}")
        assert done.returncode != 0 and f"No module named '{module}'" in done.stderr, done.stderr


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_sigterm_answers_the_requests_in_flight(started: Started) -> None:  # last: it stops the container
    srv, release, pool = started.server, threading.Event(), ThreadPoolExecutor(1)
    try:
        pending = pool.submit(held_upload, srv.url, make_jpeg(1), release, 120, AUTH)
        wait_for(lambda: in_progress(srv, "/encode_image") == 1, "the request to be in flight")
        os.killpg(srv.proc.pid, signal.SIGTERM)  # the engine's client forwards it into the container
        wait_for(lambda: not _answers(srv.url), "the server to stop taking new requests")
        release.set()
        resp = pending.result(timeout=120)
        assert resp.status_code == 200 and len(resp.json()) > 0, resp.text
        assert srv.proc.wait(60) == 0, srv.output()
    finally:
        release.set()
        pool.shutdown()
