"""The clients against a real `bentoml serve`, compared with the same client over the app in this process."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clip_client import AsyncClipClient, ClipClient, ClipServiceError
from PIL import Image

from clip_runner.settings import ClipSettings
from tests.conftest import make_jpeg, make_png
from tests.e2e.conftest import Server

pytestmark = pytest.mark.slow

CORRUPT = make_jpeg(9)[:300]
LABELS = ["a cat", "a dog", "a red car"]


def _settings(tag: str) -> ClipSettings:
    # Built outside the per-test environment cleanup (module scope): ignore the shell's CLIP_*.
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("CLIP_")]:
            mp.delenv(name)
        return ClipSettings(model_tag=tag, device="cpu", precision="fp32", runtime="torch")  # as the `server` fixture


@pytest.fixture(scope="module")
def local(tiny_tag: str) -> Iterator[ClipClient]:
    with ClipClient.in_process(_settings(tiny_tag)) as client:
        yield client


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    """The same three images as bytes, a path and a PIL image."""
    path = tmp_path / "b.png"
    path.write_bytes(make_png(2))
    return {"bytes": make_jpeg(1, size=(160, 120)), "path": path, "pil": Image.open(io.BytesIO(make_jpeg(3)))}


def _same_vectors(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.all(np.sum(a * b, axis=1) >= 0.9999)


def _same_json(a: Any, b: Any) -> None:
    """Equal structure and values; floats within batching noise."""
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _same_json(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same_json(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-4)
    else:
        assert a == b


def _by_category(result: dict[str, Any]) -> dict[str, Any]:
    # Near-equal probabilities may rank in either order; compare per category.
    return {**result, "predictions": {p["category"]: p for p in result["predictions"]}, "top_category": None}


def _compare(remote: dict[str, Any], local: ClipClient, inputs: dict[str, Any]) -> None:
    """Results of one client (already computed) against the in-process client."""
    for kind, image in inputs.items():
        _same_vectors(remote[f"image:{kind}"], local.encode_image(image))
    batch = local.encode_images([inputs["bytes"], CORRUPT, inputs["path"]])
    got = remote["images"]
    assert got.embeddings[1] is None and got.errors == batch.errors and "images[1]" in got.errors[1]
    _same_vectors(got.embeddings[0], batch.embeddings[0])
    _same_vectors(got.embeddings[2], batch.embeddings[2])
    _same_vectors(remote["text"], local.encode_text("a red shoe"))
    _same_vectors(remote["texts"], local.encode_text(["a red shoe", "a blue bag"]))
    _same_json(remote["similarity"], local.similarity(inputs["bytes"], LABELS))
    _same_json(remote["analyze"], local.analyze(inputs["bytes"], "a red shoe"))
    _same_json(remote["analyze_batch"], local.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], 0.1))
    _same_json(_by_category(remote["classify"]), _by_category(local.classify(inputs["bytes"], LABELS, 3)))
    assert remote["categories"] == local.categories()
    assert remote["health"]["embedding_size"] == local.health()["embedding_size"] == 32
    assert remote["health"]["model"] == local.health()["model"]


def test_sync_client_matches_in_process(server: Server, local: ClipClient, inputs: dict[str, Any]) -> None:
    with ClipClient(server.url) as c:
        remote: dict[str, Any] = {f"image:{kind}": c.encode_image(image) for kind, image in inputs.items()}
        remote.update(
            images=c.encode_images([inputs["bytes"], CORRUPT, inputs["path"]]),
            text=c.encode_text("a red shoe"), texts=c.encode_text(["a red shoe", "a blue bag"]),
            similarity=c.similarity(inputs["bytes"], LABELS), analyze=c.analyze(inputs["bytes"], "a red shoe"),
            analyze_batch=c.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], threshold=0.1),
            classify=c.classify(inputs["bytes"], LABELS, top_k=3), categories=c.categories(), health=c.health(),
        )
    assert remote["text"].shape == (32,) and remote["texts"].shape == (2, 32)
    _compare(remote, local, inputs)


async def test_async_client_matches_in_process(server: Server, local: ClipClient, tiny_tag: str,
                                               inputs: dict[str, Any]) -> None:
    async with AsyncClipClient(server.url) as c, AsyncClipClient.in_process(_settings(tiny_tag)) as mine:
        remote: dict[str, Any] = {f"image:{kind}": await c.encode_image(image) for kind, image in inputs.items()}
        remote.update(
            images=await c.encode_images([inputs["bytes"], CORRUPT, inputs["path"]]),
            text=await c.encode_text("a red shoe"), texts=await c.encode_text(["a red shoe", "a blue bag"]),
            similarity=await c.similarity(inputs["bytes"], LABELS),
            analyze=await c.analyze(inputs["bytes"], "a red shoe"),
            analyze_batch=await c.analyze_batch([inputs["bytes"], CORRUPT], ["one", "two"], threshold=0.1),
            classify=await c.classify(inputs["bytes"], LABELS, top_k=3), categories=await c.categories(),
            health=await c.health(),
        )
        _same_vectors(await mine.encode_image(inputs["bytes"]), remote["image:bytes"])
        _same_json(await mine.analyze(inputs["bytes"], "a red shoe"), remote["analyze"])
    _compare(remote, local, inputs)


@pytest.mark.parametrize(
    ("call", "status", "field", "needle"),
    [
        (lambda b: b.encode_image(CORRUPT), 400, "image", "image"),
        (lambda b: b.encode_text("x" * 501), 400, "text", "limit is 500"),
        (lambda b: b.classify(make_jpeg(1), top_k=0), 400, "top_k", "top_k"),
    ],
)
def test_errors_carry_the_server_message(server: Server, local: ClipClient, call, status, field, needle) -> None:
    with ClipClient(server.url) as c, pytest.raises(ClipServiceError) as remote:
        call(c)
    with pytest.raises(ClipServiceError) as mine:
        call(local)
    for err in (remote.value, mine.value):
        assert (err.status, err.field) == (status, field) and needle in err.message
    assert remote.value.message == mine.value.message
    assert str(remote.value) == f"{status}: {remote.value.message}"


async def test_async_errors_carry_the_server_message(server: Server) -> None:
    async with AsyncClipClient(server.url) as c:
        with pytest.raises(ClipServiceError, match="limit is 500") as err:
            await c.encode_text("x" * 501)
    assert err.value.status == 400 and err.value.field == "text"
