"""Every public route over real HTTP semantics (ASGI), with a tiny real model in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clip_runner.serving.scoring import DEFAULT_CATEGORIES
from clip_runner.settings import CPU_BATCH_SIZE
from tests.conftest import make_jpeg, make_png

DIM = 32  # the tiny test model's embedding size
PARITY = 0.9999  # cosine to open_clip's own encode of the same file, at fp32


def _post_image(client, path: str, data: bytes, field: str = "image", **form):
    return client.post(path, files={field: ("x.jpg", data, "image/jpeg")}, data=form)


def _assert_fp32_on_cpu(client) -> None:
    """Parity bounds are fp32 bounds: a run at bf16 or on another device must not pass them."""
    health = client.get("/health").json()
    assert (health["device"], health["precision"]) == ("cpu", "fp32"), health


def test_encode_image_parity(client, reference) -> None:
    _assert_fp32_on_cpu(client)
    data = make_jpeg(7, size=(200, 150))
    resp = _post_image(client, "/encode_image", data)
    assert resp.status_code == 200, resp.text
    emb = np.array(resp.json(), dtype=np.float32)
    assert emb.shape == (DIM,) and abs(np.linalg.norm(emb) - 1) < 1e-4
    assert float(emb @ reference.images([data])[0]) >= PARITY
    assert int(resp.headers["X-Batch-Size"]) >= 1
    assert "infer;dur=" in resp.headers["Server-Timing"]


def test_encode_text_single_and_list_parity(client, reference) -> None:
    _assert_fp32_on_cpu(client)
    single = client.post("/encode_text", json={"text": "a red square"})
    many = client.post("/encode_text", json={"text": ["a red square", "a green circle"]})
    assert single.status_code == 200 and many.status_code == 200
    one, rows = np.array(single.json()), np.array(many.json())
    assert one.shape == (DIM,) and rows.shape == (2, DIM)
    ref = reference.texts(["a red square", "a green circle"])
    assert float(one @ ref[0]) >= PARITY and np.all(np.sum(rows * ref, axis=1) >= PARITY)


def test_encode_images_isolates_bad_files(client) -> None:
    files = [
        ("images", ("a.jpg", make_jpeg(1), "image/jpeg")),
        ("images", ("b.bin", b"this is not an image", "application/octet-stream")),
        ("images", ("c.png", make_png(2), "image/png")),
    ]
    resp = client.post("/encode_images", files=files)
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["embeddings"][0]) == DIM and len(body["embeddings"][2]) == DIM
    assert body["embeddings"][1] is None and "images[1]" in body["errors"][1]
    assert body["errors"][0] is None and body["errors"][2] is None


def test_similarity_shapes(client) -> None:
    resp = client.post("/similarity", files={"image": ("x.jpg", make_jpeg(3), "image/jpeg")},
                       data={"texts": ["a cat", "a dog", "a car"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [r["text"] for r in body["results"]] == ["a cat", "a dog", "a car"]
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert all(-1 <= s <= 1 for s in body["similarities"])
    assert body["best_match"] in ("a cat", "a dog", "a car")
    # A JSON array in one field is accepted too.
    alt = client.post("/similarity", files={"image": ("x.jpg", make_jpeg(3), "image/jpeg")},
                      data={"texts": '["a cat", "a dog", "a car"]'})
    assert alt.json()["similarities"] == pytest.approx(body["similarities"], abs=1e-5)


@pytest.mark.parametrize(("path", "field"), [("/analyze", "image"), ("/clip/analyze", "file")])
def test_analyze(client, path: str, field: str) -> None:
    resp = _post_image(client, path, make_jpeg(4), field=field, text="red leather handbag")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) >= {"similarity", "is_mismatch", "threshold", "threshold_source"}
    assert body["threshold"] == 0.25 and body["threshold_source"] == "default"
    assert body["is_mismatch"] == (body["similarity"] < 0.25)
    forced = _post_image(client, path, make_jpeg(4), field=field, text="red leather handbag", threshold="-1")
    assert forced.json()["is_mismatch"] is False and forced.json()["threshold_source"] == "request"


def test_analyze_batch_and_compat(client) -> None:
    files = [("images", ("a.jpg", make_jpeg(5), "image/jpeg")),
             ("images", ("b.jpg", b"\xff\xd8\xff broken", "image/jpeg"))]
    resp = client.post("/analyze_batch", files=files, data={"texts": ["one", "two"]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["results"]
    assert "similarity" in first and second["status"] in (400, 415) and second["text"] == "two"
    compat = client.post("/clip/analyze-batch", files=[("file", ("a.jpg", make_jpeg(5), "image/jpeg"))],
                         data={"text": "one"})
    assert compat.status_code == 200
    assert compat.json()["results"][0]["similarity"] == pytest.approx(first["similarity"], abs=1e-5)
    mismatch = client.post("/analyze_batch", files=files, data={"texts": ["only one"]})
    assert mismatch.status_code == 400 and "one text per image" in mismatch.json()["error"]
    paths = client.post("/clip/analyze-batch", json={"items": [{"image_path": "/etc/passwd", "text": "x"}]})
    assert paths.status_code == 400 and "never read" in paths.json()["error"]


@pytest.mark.parametrize(("path", "field"), [("/classify", "image"), ("/clip/classify", "file")])
def test_classify_default_and_custom(client, path: str, field: str) -> None:
    resp = _post_image(client, path, make_jpeg(6), field=field)
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 5 and all(p["category"] in DEFAULT_CATEGORIES for p in preds)
    assert [p["probability"] for p in preds] == sorted((p["probability"] for p in preds), reverse=True)
    custom = _post_image(client, path, make_jpeg(6), field=field, categories="cat, dog, car", top_k="2")
    body = custom.json()
    assert custom.status_code == 200 and len(body["predictions"]) == 2
    assert body["categories_source"] == "request" and body["num_categories"] == 3


def test_categories_and_health(client) -> None:
    for path in ("/categories", "/clip/categories"):
        body = client.get(path).json()
        assert len(body["categories"]) >= 40 and {"shoes", "sneakers", "watch", "sunglasses"} <= set(body["categories"])
    for path in ("/health", "/clip/health"):
        body = client.get(path).json()
        assert body["status"] == "healthy" and body["device"] == "cpu"
        assert body["embedding_size"] == DIM and body["model"].startswith("clip-tiny_clip")
        assert body["reason"] == "CLIP_MODEL_TAG"


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "needle"),
    [
        ("/encode_image", {"files": {"other": ("x.jpg", make_jpeg(0), "image/jpeg")}}, 400, "'image' is required"),
        ("/encode_image", {"files": {"image": ("x.jpg", b"", "image/jpeg")}}, 400, "empty"),
        ("/encode_image", {"files": {"image": ("x.txt", b"hello world, not an image", "text/plain")}}, 415, "image"),
        ("/encode_image", {"files": {"image": ("x.jpg", make_jpeg(0)[:300], "image/jpeg")}}, 400, "image"),
        ("/encode_image", {"data": {"image": "https://example.com/cat.jpg"}}, 400, "image"),
        ("/encode_text", {"json": {"text": ""}}, 400, "empty"),
        ("/encode_text", {"json": {"text": "x" * 501}}, 400, "limit is 500"),
        ("/encode_text", {"json": {"text": 42}}, 400, "must be a string"),
        ("/encode_text", {"json": {"words": "hi"}}, 400, "'text' is required"),
        ("/encode_text", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ("/encode_text", {"json": {"text": "a\x00b"}}, 400, "control"),
        ("/similarity", {"files": {"image": ("x.jpg", make_jpeg(0), "image/jpeg")}}, 400, "'texts'"),
        ("/analyze", {"files": {"image": ("x.jpg", make_jpeg(0), "image/jpeg")}}, 400, "'text' is required"),
        ("/classify", {"files": {"image": ("x.jpg", make_jpeg(0), "image/jpeg")}, "data": {"top_k": "zero"}},
         400, "top_k"),
    ],
)
def test_bad_input_gets_clear_4xx(client, path, kwargs, status, needle) -> None:
    resp = client.post(path, **kwargs)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]


def test_image_over_byte_limit_is_413(client_with) -> None:
    resp = _post_image(client_with(max_image_bytes=1000), "/encode_image", make_jpeg(0, size=(400, 400)))
    assert resp.status_code == 413 and "limit" in resp.json()["error"]


def test_bad_requests_do_not_spoil_concurrent_good_ones(client) -> None:
    good, bad = make_jpeg(11), b"\x89PNG\r\n\x1a\n garbage"

    def call(i: int):
        return _post_image(client, "/encode_image", good if i % 2 == 0 else bad)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, range(16)))
    goods = [np.array(r.json()) for i, r in enumerate(responses) if i % 2 == 0]
    assert all(r.status_code == 200 for i, r in enumerate(responses) if i % 2 == 0)
    assert all(400 <= r.status_code < 500 for i, r in enumerate(responses) if i % 2 == 1)
    assert all(np.allclose(g, goods[0], atol=1e-5) for g in goods)


def test_api_key(client_with) -> None:
    client = client_with(api_key="s3cret")
    assert client.post("/encode_text", json={"text": "hi"}).status_code == 401
    assert client.post("/encode_text", json={"text": "hi"}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/encode_text", json={"text": "hi"}, headers={"X-API-Key": "s3cret"}).status_code == 200
    ok = client.post("/encode_text", json={"text": "hi"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200


def test_a_full_model_queue_is_503_with_retry_after(client, service_module, monkeypatch) -> None:
    batcher = service_module.app.state.api.batcher
    monkeypatch.setattr(batcher, "max_queued", 0)
    resp = _post_image(client, "/encode_image", make_jpeg(3))
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "queue is full" in resp.json()["error"]
    monkeypatch.undo()
    assert _post_image(client, "/encode_image", make_jpeg(3)).status_code == 200


def test_health_is_503_when_the_model_thread_has_stopped(client, service_module, monkeypatch) -> None:
    import threading

    stopped = threading.Thread(target=lambda: None)
    stopped.start()
    stopped.join()
    monkeypatch.setattr(service_module.app.state.api.batcher, "_thread", stopped)
    resp = client.get("/health")
    assert resp.status_code == 503 and "model thread has stopped" in resp.json()["error"]
    monkeypatch.undo()
    assert client.get("/health").status_code == 200


def test_the_app_runs_the_settings_its_fixture_names(client) -> None:
    # Defaults wherever the fixture names nothing: the checks a stray CLIP_* variable would break.
    health = client.get("/health").json()
    assert (health["device"], health["precision"]) == ("cpu", "fp32")
    assert (health["threshold"], health["threshold_source"]) == (0.25, "default")
    assert health["batching"]["max_batch_size"] == CPU_BATCH_SIZE
    assert client.post("/encode_text", json={"text": ["a", "b"]}).status_code == 200  # no key, 2 texts


def test_shell_clip_variables_never_reach_the_app() -> None:
    # The test above, in a fresh session whose shell exports hostile settings.
    hostile = {"CLIP_API_KEY": "from-the-shell", "CLIP_MAX_TEXTS": "1", "CLIP_PRECISION": "bf16",
               "CLIP_SIMILARITY_THRESHOLD": "0.9", "CLIP_BATCH_SIZE": "3", "CLIP_MODEL_TAG": "no-such-model:v1"}
    test = f"{__file__}::test_the_app_runs_the_settings_its_fixture_names"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", test],
                         env={**os.environ, **hostile}, cwd=Path(__file__).parents[2],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
