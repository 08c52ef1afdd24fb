"""Offline out of the box: with no model configured and no hub, `bentoml serve` serves the bundled
demo model, which names generated shapes and colours and flags swapped captions over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest

from clip_runner import synthetic_images
from clip_runner.store.entries import WEIGHTS_FILE
from clip_runner.store.registration import DEMO_DIR, DEMO_STORE_NAME
from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEMO_DIR / WEIGHTS_FILE).is_file(), reason="demo model not built (make demo)"),
]
SEED = 424_242  # images none of the demo's training, calibration or evaluation sets hold


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("demo") / "serve.log"
    # Nothing configured, hub unreachable: the default must fall back to the demo model.
    srv = start_server({"HF_HUB_OFFLINE": "1"}, log)
    yield srv
    stop_server(srv)


def _jpeg(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_health_says_the_demo_serves_and_why(demo_server: Server) -> None:
    health = httpx.get(f"{demo_server.url}/health", timeout=30).json()
    assert health["model"].startswith(DEMO_STORE_NAME)
    assert health["fallback"] is True and "fallback to the demo model" in health["reason"]
    assert "HF_HUB_OFFLINE" in health["reason"]
    assert "FALLING BACK TO THE BUNDLED DEMO MODEL" in demo_server.output()


def test_classify_names_shape_and_colour(demo_server: Server) -> None:
    scenes = list(synthetic_images.generate(16, SEED))
    with httpx.Client(base_url=demo_server.url, timeout=60) as client:
        assert client.get("/categories").json()["categories"] == list(synthetic_images.CATEGORIES)
        right = 0
        for scene, image in scenes:
            result = client.post("/classify", files={"image": ("s.jpg", _jpeg(image))}, data={"top_k": "3"})
            assert result.status_code == 200, result.text
            right += result.json()["predictions"][0]["category"] == scene.category
    assert right >= 14, f"{right}/16 classified right"


def test_analyze_accepts_the_caption_and_flags_a_swapped_one(demo_server: Server) -> None:
    scenes = list(synthetic_images.generate(12, SEED + 1))
    accepted = flagged = 0
    with httpx.Client(base_url=demo_server.url, timeout=60) as client:
        for i, (scene, image) in enumerate(scenes):
            other = next(s for s, _ in scenes[i + 1:] + scenes[:i] if s.category != scene.category)
            data = _jpeg(image)
            ok = client.post("/analyze", files={"image": ("s.jpg", data)}, data={"text": scene.caption}).json()
            bad = client.post("/analyze", files={"image": ("s.jpg", data)}, data={"text": other.caption}).json()
            assert ok["threshold_source"] == "model"  # the calibrated threshold shipped with the demo
            accepted += not ok["is_mismatch"]
            flagged += bad["is_mismatch"]
            assert ok["similarity"] > bad["similarity"]
    assert accepted >= 11 and flagged >= 11, (accepted, flagged)
