"""Overload against a real server: the excess is refused at once with Retry-After; no 5xx; no restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import make_jpeg
from tests.e2e.conftest import in_progress, start_server, stop_server, wait_for
from tests.payloads import held_upload

pytestmark = pytest.mark.slow

LIMIT = 4


def test_excess_load_is_refused_fast_and_admitted_requests_succeed(tiny_tag, tmp_path) -> None:
    server = start_server({"CLIP_MODEL_TAG": tiny_tag, "CLIP_MAX_CONCURRENCY": str(LIMIT)}, tmp_path / "overload.log")
    release, pool = threading.Event(), ThreadPoolExecutor(LIMIT)
    try:
        # Exactly LIMIT requests in flight, their bodies held back: the server is at capacity.
        held = [pool.submit(held_upload, server.url, make_jpeg(i), release) for i in range(LIMIT)]
        wait_for(lambda: in_progress(server, "/encode_image") == LIMIT, f"{LIMIT} requests in flight")
        image = httpx.post(f"{server.url}/encode_image", files={"image": ("a.jpg", make_jpeg(9))}, timeout=30)
        text = httpx.post(f"{server.url}/encode_text", json={"text": ["a", "b"]}, timeout=30)
        for refused in (image, text):  # whatever the route, the one over capacity is refused at once
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert f"at capacity ({LIMIT} requests in flight)" in refused.json()["error"]
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # health is never refused
        release.set()
        assert [f.result(timeout=120).status_code for f in held] == [200] * LIMIT  # the admitted all succeed
        # Capacity is back once they are done.
        assert httpx.post(f"{server.url}/encode_text", json={"text": ["a", "b"]}, timeout=60).status_code == 200
        # Metrics are read on this server because it is the newest: BentoML keeps them in files
        # under BENTOML_HOME, which every `bentoml serve` of the shared test store resets.
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert 'clip_refused_total{reason="overload"} 2.0' in metrics
        # What Server-Timing reports per request, as Prometheus histograms.
        assert f"clip_decode_ms_count {float(LIMIT)}" in metrics
        for name in ("clip_queue_wait_ms_count", "clip_inference_ms_count"):
            assert name in metrics, name
        assert f'clip_request_batch_size_count{{kind="image"}} {float(LIMIT)}' in metrics
        assert 'clip_request_batch_size_count{kind="text"} 1.0' in metrics
        assert server.proc.poll() is None and "Traceback" not in server.output()
    finally:
        release.set()
        pool.shutdown()
        stop_server(server)
