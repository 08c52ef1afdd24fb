"""Overload against a real server: the excess is refused at once with Retry-After; no 5xx; no restart."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import start_server, stop_server

pytestmark = pytest.mark.slow


def _photo(seed: int) -> bytes:
    small = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((1600, 1200), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def _storm(url: str, n: int) -> list[httpx.Response]:
    blobs = [_photo(i) for i in range(8)]
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=n)) as client:
        calls = [client.post("/encode_image", files={"image": ("a.jpg", blobs[i % 8])}) for i in range(n)]
        return await asyncio.gather(*calls)


def test_excess_load_is_refused_fast_and_admitted_requests_succeed(tiny_tag, tmp_path) -> None:
    env = {"CLIP_MODEL_TAG": tiny_tag, "CLIP_MAX_CONCURRENCY": "4", "CLIP_DECODE_THREADS": "1"}
    server = start_server(env, tmp_path / "overload.log")
    try:
        responses = asyncio.run(_storm(server.url, 12))  # 3x the admitted concurrency
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 4 and statuses.count(429) >= 1, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1" and "capacity" in refused.json()["error"]
        health = httpx.get(f"{server.url}/health", timeout=10)  # health is never refused
        assert health.status_code == 200
        assert httpx.post(f"{server.url}/encode_text", json={"text": ["a", "b"]}, timeout=60).status_code == 200
        # Metrics are read on this server because it is the newest: BentoML keeps them in files
        # under BENTOML_HOME, which every `bentoml serve` of the shared test store resets.
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert f'clip_refused_total{{reason="overload"}} {float(statuses.count(429))}' in metrics
        # What Server-Timing reports per request, as Prometheus histograms.
        assert f"clip_decode_ms_count {float(statuses.count(200))}" in metrics
        for name in ("clip_queue_wait_ms_count", "clip_inference_ms_count"):
            assert name in metrics, name
        assert f'clip_request_batch_size_count{{kind="image"}} {float(statuses.count(200))}' in metrics
        assert 'clip_request_batch_size_count{kind="text"} 1.0' in metrics
        assert server.proc.poll() is None and "Traceback" not in server.output()
    finally:
        stop_server(server)
