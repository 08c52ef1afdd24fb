"""CLIPEmbedder over the in-process client (tiny real model), and the switch between HTTP and in-process."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clip_client import ClientSettings, ClipClient, CLIPEmbedder, from_env
from clip_client.http import IN_PROCESS_URL
from PIL import Image

from clip_runner.settings import ClipSettings
from tests.conftest import make_jpeg, make_png

DIM = 32  # the tiny test model's embedding size
CALLER_VARS = ("CLIP_", "USE_LOCAL_CLIP", "LOCAL_CLIP_")


@pytest.fixture(scope="module")
def embedder(tiny_tag: str) -> Iterator[CLIPEmbedder]:
    # Module-scoped, so built before the per-test environment cleanup: clear the variables here.
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(CALLER_VARS)]:
            mp.delenv(name)
        emb = CLIPEmbedder(settings=ClipSettings(model_tag=tiny_tag, runtime="torch"))
    yield emb
    emb.close()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    files = {
        "a.jpg": make_jpeg(1),
        "b.png": make_png(2),
        "c.jpg": make_jpeg(3, size=(120, 90)),
        "text.jpg": b"this is not an image at all",
        "truncated.jpg": make_jpeg(4)[:200],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def _unit(row: np.ndarray) -> bool:
    return row.shape == (DIM,) and row.dtype == np.float32 and abs(float(np.linalg.norm(row)) - 1) < 1e-4


def test_default_backend_is_in_process(embedder: CLIPEmbedder) -> None:
    assert isinstance(embedder.backend, ClipClient) and embedder.backend.base_url == IN_PROCESS_URL


async def test_single_file(embedder: CLIPEmbedder, images: dict[str, Path]) -> None:
    row = await embedder.generate_embedding(images["a.jpg"])
    assert row is not None and _unit(row)
    assert embedder.compute_similarity(row, embedder.backend.encode_image(images["a.jpg"])) >= 0.9999


async def test_missing_file_raises(embedder: CLIPEmbedder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await embedder.generate_embedding(tmp_path / "nope.jpg")


@pytest.mark.parametrize("name", ["text.jpg", "truncated.jpg"])
async def test_corrupt_file_gives_none(embedder: CLIPEmbedder, images: dict[str, Path], name: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="clip_client.embedder"):
        assert await embedder.generate_embedding(images[name]) is None
    assert name in caplog.text


async def test_batch_empty(embedder: CLIPEmbedder) -> None:
    assert await embedder.generate_embeddings_batch([]) == []


async def test_batch_aligned_with_none_for_bad_files(embedder: CLIPEmbedder, images: dict[str, Path],
                                                     tmp_path: Path) -> None:
    paths = [images["a.jpg"], tmp_path / "missing.png", images["text.jpg"], images["b.png"],
             images["truncated.jpg"], str(images["c.jpg"])]
    rows = await embedder.generate_embeddings_batch(paths, batch_size=2, show_progress=False)
    assert [row is None for row in rows] == [False, True, True, False, True, False]
    for path, row in zip(paths, rows, strict=True):
        if row is not None:
            assert _unit(row)
            single = await embedder.generate_embedding(path)
            assert embedder.compute_similarity(row, single) >= 0.9999
    assert embedder.compute_similarity(rows[0], rows[3]) < 0.9999  # different images, different vectors


def test_encode_text_shapes(embedder: CLIPEmbedder) -> None:
    one = embedder.encode_text("a red shoe")
    many = embedder.encode_text(["a red shoe", "a blue bag", "a green hat"])
    assert _unit(one) and many.shape == (3, DIM)
    assert embedder.compute_similarity(one, many[0]) >= 0.9999
    assert embedder.encode_text([]).shape == (0, DIM)
    assert embedder.encode_text([f"text {i}" for i in range(70)]).shape == (70, DIM)  # over one request's limit


async def test_sync_methods_work_inside_a_running_loop(embedder: CLIPEmbedder) -> None:
    assert embedder.encode_text(["inside", "a loop"]).shape == (2, DIM)
    assert embedder.get_embedding_dimension() == DIM


def test_compute_similarity() -> None:
    a, b = np.array([3.0, 4.0]), np.array([6.0, 8.0])
    assert CLIPEmbedder.compute_similarity(a, b) == pytest.approx(1.0)
    assert CLIPEmbedder.compute_similarity(a, -b) == pytest.approx(-1.0)
    assert CLIPEmbedder.compute_similarity(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(0.0)
    assert CLIPEmbedder.compute_similarity(np.zeros(2), b) == 0.0
    with pytest.raises(ValueError, match="differ"):
        CLIPEmbedder.compute_similarity(np.ones(2), np.ones(3))


def test_embedding_dimension(embedder: CLIPEmbedder) -> None:
    assert embedder.get_embedding_dimension() == DIM


def test_encode_image_takes_a_pil_image(embedder: CLIPEmbedder, images: dict[str, Path]) -> None:
    image = Image.open(io.BytesIO(make_jpeg(5))).convert("RGB")
    row = embedder.encode_image(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert _unit(row) and embedder.compute_similarity(row, embedder.encode_image(buf.getvalue())) >= 0.9999
    assert embedder.compute_similarity(embedder.encode_image(images["a.jpg"]), row) < 0.9999


def test_from_env_http_when_use_local_clip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_LOCAL_CLIP", "true")
    monkeypatch.setenv("LOCAL_CLIP_URL", "http://clip.internal:3000/")
    monkeypatch.setenv("LOCAL_CLIP_RETRIES", "2")
    backend = from_env()
    try:
        assert isinstance(backend, ClipClient)
        assert backend.base_url == "http://clip.internal:3000" and backend.retry.attempts == 3
    finally:
        backend.close()
    monkeypatch.delenv("LOCAL_CLIP_URL")
    with CLIPEmbedder(model_name="ViT-B-32", device="cpu") as emb:  # model settings ignored, nothing loaded
        assert isinstance(emb.backend, ClipClient) and emb.backend.base_url == "http://localhost:3000"


@pytest.mark.parametrize("value", [None, "false", "0", ""])
def test_from_env_in_process_otherwise(monkeypatch: pytest.MonkeyPatch, tiny_tag: str, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("USE_LOCAL_CLIP", raising=False)
    else:
        monkeypatch.setenv("USE_LOCAL_CLIP", value)
    with from_env(ClipSettings(model_tag=tiny_tag)) as backend:
        assert backend.base_url == IN_PROCESS_URL and backend.health()["embedding_size"] == DIM


def test_client_settings_read_once_empty_means_unset() -> None:
    env = {"USE_LOCAL_CLIP": "yes", "LOCAL_CLIP_URL": "", "LOCAL_CLIP_TIMEOUT": "2.5", "LOCAL_CLIP_API_KEY": " "}
    cfg = ClientSettings.from_env(env)
    assert cfg == ClientSettings(use_local_clip=True, local_clip_timeout=2.5)
    assert cfg.timeout().connect == 2.5 and cfg.retry_policy().attempts == 4
    assert ClientSettings.from_env({}) == ClientSettings()


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("USE_LOCAL_CLIP", "maybe", "not a boolean"),
    ("LOCAL_CLIP_RETRIES", "two", "not an integer"),
    ("LOCAL_CLIP_RETRIES", "-1", "0 or more"),
    ("LOCAL_CLIP_TIMEOUT", "0", "more than 0"),
])
def test_client_settings_refuse_bad_values(name: str, value: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as err:
        ClientSettings.from_env({name: value})
    assert name in str(err.value)
