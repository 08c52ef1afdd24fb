"""One request is a straight line through a few files: the docs list them, this test holds it."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import make_jpeg

ROOT = Path(__file__).resolve().parents[2]
# README "How it works" lists these, in this order.
ENCODE_IMAGE_FILES = ["clip_http/middleware.py", "clip_http/native_routes.py", "clip_http/common.py",
                      "clip_runner/serving/api.py", "clip_runner/preprocessing/images.py",
                      "clip_runner/serving/batcher.py", "clip_runner/runtimes/torch_encoder.py",
                      "clip_runner/runtimes/encoder.py"]


def _project_file(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_absolute() or ROOT not in path.parents or ".venv" in path.parts or "tests" in path.parts:
        return None
    return path.relative_to(ROOT).as_posix()


def test_encode_image_runs_through_the_files_the_readme_lists(tiny_tag: str) -> None:
    from clip_http.local import local_app
    from clip_runner.settings import ClipSettings

    seen: set[str] = set()
    recording = threading.Event()

    def profile(frame, event, arg) -> None:
        if recording.is_set() and event == "call" and (name := _project_file(frame.f_code.co_filename)):
            seen.add(name)

    threading.setprofile(profile)  # the model and decode threads start after this
    local = local_app(ClipSettings(model_tag=tiny_tag, device="cpu", precision="fp32"))
    try:
        async def request() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=local.app), base_url="http://t") as c:
                await c.post("/encode_image", files={"image": ("a.jpg", make_jpeg(1))})  # warm (label cache etc.)
                recording.set()
                sys.setprofile(profile)
                try:
                    return await c.post("/encode_image", files={"image": ("a.jpg", make_jpeg(2))})
                finally:
                    sys.setprofile(None)
                    recording.clear()

        assert asyncio.run(request()).status_code == 200
    finally:
        threading.setprofile(None)
        local.close()
    assert sorted(seen) == sorted(ENCODE_IMAGE_FILES)


def test_texts_are_tokenized_once_before_the_batcher(client, service_module, monkeypatch) -> None:
    """pre → core → post: one tokenization per request; the model thread gets ids; usage counts them."""
    api = service_module.app.state.api
    encoder, tokenized, fed = api.model.encoder, [], []
    tokenize, text_features = encoder.tokenize, api.batcher._encode["text"]
    monkeypatch.setattr(encoder, "tokenize", lambda texts: tokenized.append(list(texts)) or tokenize(texts))
    monkeypatch.setitem(api.batcher._encode, "text", lambda ids: fed.append(ids) or text_features(ids))
    texts = ["a red circle", "a blue square on a white background"]
    body = client.post("/v1/embeddings", json={"input": texts}).json()
    assert tokenized == [texts] and len(fed) == 1 and fed[0].dtype.kind == "i"  # ids reach the model thread
    assert body["usage"]["prompt_tokens"] == int((fed[0] != 0).sum())  # from that one tokenization
    tokenized.clear()
    assert client.post("/similarity", files={"image": ("a.jpg", make_jpeg(3))},
                       data={"texts": texts}).status_code == 200
    assert tokenized == [texts]


def test_requests_that_wait_together_share_one_batch(client, service_module, monkeypatch) -> None:
    """Batching over HTTP: while the model runs one image, the three sent meanwhile queue and run as one batch."""
    api = service_module.app.state.api
    encode, running, release = api.batcher._encode["image"], threading.Event(), threading.Event()
    monkeypatch.setitem(api.batcher._encode, "image",
                        lambda pixels: (running.set(), release.wait(60), encode(pixels))[-1])

    def post(seed: int) -> httpx.Response:
        return client.post("/encode_image", files={"image": ("a.jpg", make_jpeg(seed))})

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, 0)
        assert running.wait(60)
        rest = [pool.submit(post, seed) for seed in (1, 2, 3)]
        deadline = time.monotonic() + 60
        while api.batcher.queued < 3 and time.monotonic() < deadline:  # the signal: all three wait for the model
            time.sleep(0.005)
        release.set()
        answers = [future.result(timeout=60) for future in (first, *rest)]
    assert [answer.status_code for answer in answers] == [200] * 4
    assert [int(answer.headers["X-Batch-Size"]) for answer in answers] == [1, 3, 3, 3]
