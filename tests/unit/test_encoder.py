"""The batched encoder against a direct open_clip encode of the same tiny model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clip_runner.preprocessing.images import PixelPipeline
from clip_runner.runtimes.torch_encoder import TorchEncoder
from clip_runner.store.weights import load_entry
from tests.conftest import make_jpeg, unit_rows


@pytest.fixture(scope="module")
def loaded(tiny_tag: str):
    return load_entry(tiny_tag, torch.device("cpu"))


def test_image_embedding_matches_open_clip(loaded, reference) -> None:
    model, preprocess, _ = reference
    encoder = TorchEncoder(loaded, "fp32")
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    for seed in range(3):
        data = make_jpeg(seed, size=(120 + seed * 17, 90))
        image = Image.open(io.BytesIO(data)).convert("RGB")
        ours = encoder.encode_pixels(pipeline(image)[None])[0]
        with torch.no_grad():
            theirs = unit_rows(model.encode_image(preprocess(image)[None]))[0]
        assert float(ours @ theirs) >= 0.9999


def test_text_embedding_matches_open_clip(loaded, reference) -> None:
    model, _, tokenizer = reference
    texts = ["a red circle", "a blue square on a white background", "ünïcødé 🙂 text"]
    ours = TorchEncoder(loaded, "fp32").encode_texts(texts)
    with torch.no_grad():
        theirs = unit_rows(model.encode_text(tokenizer(texts)))
    assert ours.shape == (3, loaded.entry.embedding_size)
    assert np.all(np.sum(ours * theirs, axis=1) >= 0.9999)


def test_rows_are_unit_float32_and_batch_equals_singles(loaded) -> None:
    encoder = TorchEncoder(loaded)
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    pixels = np.stack([pipeline(Image.open(io.BytesIO(make_jpeg(s))).convert("RGB")) for s in range(4)])
    batch = encoder.encode_pixels(pixels)
    assert batch.dtype == np.float32 and batch.shape == (4, loaded.entry.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([encoder.encode_pixels(pixels[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    # Different images give different embeddings (the model is not degenerate).
    assert float(batch[0] @ batch[1]) < 0.9999


def test_bad_pixel_shape_is_refused(loaded) -> None:
    with pytest.raises(ValueError, match="expected"):
        TorchEncoder(loaded).encode_pixels(np.zeros((2, 64, 64), dtype=np.uint8))


def test_weights_load_straight_into_the_serving_dtype(tiny_tag: str, loaded) -> None:
    """bf16 serving builds the model in bf16 and casts the stored weights one tensor at a time."""
    bf16 = load_entry(tiny_tag, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored for the rest of the process
    for name, value in bf16.model.state_dict().items():  # the stored weights, rounded to bf16
        expected = loaded.model.state_dict()[name]
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=0)


def _pixels(loaded, n: int) -> np.ndarray:
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    return np.stack([pipeline(Image.open(io.BytesIO(make_jpeg(s))).convert("RGB")) for s in range(n)])


def test_bf16_weights_stay_close_to_fp32(loaded) -> None:
    pixels, texts = _pixels(loaded, 4), ["a red circle", "a blue square on a white background"]
    fp32 = TorchEncoder(loaded, "fp32")
    images32, texts32 = fp32.encode_pixels(pixels), fp32.encode_texts(texts)
    bf16 = TorchEncoder(loaded, "bf16")
    assert bf16.precision.name == "bf16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    images16, texts16 = bf16.encode_pixels(pixels), bf16.encode_texts(texts)
    assert images16.dtype == np.float32  # rows leave the encoder as fp32 whatever it computed in
    np.testing.assert_allclose(np.linalg.norm(images16, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(images16 * images32, axis=1) >= 0.999)
    assert np.all(np.sum(texts16 * texts32, axis=1) >= 0.999)
    # and back: an fp32 encoder over the same (now bf16) model casts it back to fp32 weights
    again = TorchEncoder(loaded, "fp32").encode_pixels(pixels)
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert np.all(np.sum(again * images32, axis=1) >= 0.999)  # the bf16 rounding stays in the weights
