"""A real `bentoml serve` of compiled (OpenVINO) entries: a pinned int8 entry, and the auto choice."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from clip_runner.preprocessing.images import PixelPipeline
from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
from clip_runner.store.entries import open_entry
from tests.conftest import make_jpeg
from tests.e2e.conftest import start_server, stop_server

pytestmark = pytest.mark.slow


def test_a_compiled_int8_entry_serves_every_route(compiled_tiny: dict[str, str], tiny_tag: str, reference,
                                                  tmp_path) -> None:
    tag = compiled_tiny["int8"]
    srv = start_server({"CLIP_MODEL_TAG": tag, "CLIP_DEVICE": "cpu", "CLIP_BATCH_SIZE": "8"}, tmp_path / "serve.log")
    try:
        health = httpx.get(f"{srv.url}/health", timeout=10).json()
        assert (health["model"], health["runtime"], health["precision"], health["parent"]) == \
            (tag, "openvino", "int8", tiny_tag)
        blobs = [make_jpeg(seed, size=(150, 110)) for seed in range(6)]
        with ThreadPoolExecutor(6) as pool:  # together, so they share batches
            rows = list(pool.map(lambda b: httpx.post(f"{srv.url}/encode_image", files={"image": ("a.jpg", b)},
                                                      timeout=60), blobs))
        served = np.array([r.json() for r in rows], dtype=np.float32)
        local = OpenVINOEncoder(open_entry(tag), threads=1)
        pipeline = PixelPipeline(local.entry.preprocess_cfg)
        pixels = np.stack([pipeline(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        assert np.sum(served * local.encode_pixels(pixels), axis=1).min() >= 0.9999  # the same compiled graph
        assert np.sum(served * reference.images(blobs), axis=1).min() >= 0.95  # and near open_clip's fp32
        text = httpx.post(f"{srv.url}/encode_text", json={"text": ["a red circle", "a blue square"]}, timeout=60)
        assert np.sum(np.array(text.json()) * local.encode_texts(["a red circle", "a blue square"]), axis=1).min() \
            >= 0.9999
        classify = httpx.post(f"{srv.url}/classify", files={"image": ("a.jpg", blobs[0])},
                              data={"categories": ["cat", "dog", "car"]}, timeout=60)
        assert classify.status_code == 200 and len(classify.json()["predictions"]) == 3
    finally:
        stop_server(srv)


def test_auto_compiles_at_first_start_and_serves_the_fastest(tmp_path) -> None:
    from clip_runner.store.registration import register_random
    from tests.conftest import TINY_CONFIG

    parent = register_random(str(TINY_CONFIG), seed=11, name="clip-tiny-first-start")  # nothing compiled yet
    srv = start_server({"CLIP_MODEL_TAG": parent, "CLIP_RUNTIME": "auto", "CLIP_DEVICE": "cpu"},
                       tmp_path / "serve.log", timeout=300)
    try:
        health = httpx.get(f"{srv.url}/health", timeout=10).json()
        measured = health["runtime_choice"]["measured"]
        fastest = max(measured, key=lambda p: measured[p]["images_per_s"])
        assert health["runtime"] == "openvino" and health["precision"] == fastest and health["parent"] == parent
        assert "measured now" in health["runtime_choice"]["reason"]
        log = (tmp_path / "serve.log").read_text()
        assert "compiling it now" in log and "serving" in log
        # The compiles ran in child processes: the worker that serves holds no torch.
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        assert workers and not any("libtorch_cpu" in m.path for w in workers for m in w.memory_maps())
        resp = httpx.post(f"{srv.url}/encode_image", files={"image": ("a.jpg", make_jpeg(3))}, timeout=60)
        assert resp.status_code == 200 and len(resp.json()) == 32
    finally:
        stop_server(srv)
