"""Fast JPEG decode: reduced-size decode of large photos stays faithful to the full decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench import photo_jpeg
from clip_runner.preprocessing.images import PixelPipeline, decode_image
from tests.conftest import unit_rows

LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 100_000_000}
OPENAI_224 = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
              "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"}


def rotated_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    """A photo-like JPEG whose EXIF says to rotate it for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo_jpeg(3, size))).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    return photo_jpeg(0, (4000, 3000))  # 12 MP


def test_draft_decodes_a_12mp_jpeg_at_a_fraction_of_its_size(big_photo: bytes) -> None:
    full = decode_image(big_photo, **LIMITS)
    fast = decode_image(big_photo, **LIMITS, draft_side=448)
    assert full.size == (4000, 3000)
    assert fast.mode == "RGB"
    assert min(fast.size) >= 448  # never below what the resize needs
    assert fast.size == (1000, 750)  # libjpeg DCT scaling by 1/4


def test_draft_keeps_the_preprocessed_pixels_close(big_photo: bytes) -> None:
    pipeline = PixelPipeline(OPENAI_224)
    full = pipeline(decode_image(big_photo, **LIMITS)).astype(np.float32)
    fast = pipeline(decode_image(big_photo, **LIMITS, draft_side=pipeline.draft_side())).astype(np.float32)
    assert full.shape == fast.shape == (224, 224, 3)
    assert np.abs(full - fast).mean() < 3.0  # of 255: visually the same picture


def test_draft_embedding_matches_the_reference_transform(big_photo: bytes, reference) -> None:
    """Cosine >= 0.99 to open_clip's own preprocess of the full-size photo (tiny real model)."""
    model, preprocess, _ = reference
    image = Image.open(io.BytesIO(big_photo)).convert("RGB")
    pipeline = PixelPipeline({"size": model.visual.image_size, "mean": preprocess.transforms[-1].mean,
                              "std": preprocess.transforms[-1].std})
    fast = pipeline(decode_image(big_photo, **LIMITS, draft_side=pipeline.draft_side()))
    batch = (torch.from_numpy(fast).permute(2, 0, 1).float() / 255).unsqueeze(0)
    batch = (batch - torch.tensor(pipeline.mean).view(1, 3, 1, 1)) / torch.tensor(pipeline.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = unit_rows(model.encode_image(batch))[0]
        expected = unit_rows(model.encode_image(preprocess(image).unsqueeze(0)))[0]
    assert float(ours @ expected) >= 0.99


def test_draft_respects_exif_orientation() -> None:
    data = rotated_jpeg((2400, 1600), 6)  # rotate 90° on display
    full = decode_image(data, **LIMITS)
    fast = decode_image(data, **LIMITS, draft_side=448)
    assert full.size == (1600, 2400)
    assert fast.size[0] < fast.size[1] and min(fast.size) >= 448


def test_small_jpegs_and_other_formats_decode_at_full_size() -> None:
    small = photo_jpeg(1, (640, 480))
    assert decode_image(small, **LIMITS, draft_side=448).size == (640, 480)  # 1/2 would drop below 448
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), **LIMITS, draft_side=448).size == (3000, 2000)


def test_uploads_use_fast_decode_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_runner.preprocessing.images import UploadPreparer
    from clip_runner.settings import ClipSettings

    assert UploadPreparer.from_settings(OPENAI_224, ClipSettings()).draft_side == 224
    monkeypatch.setenv("CLIP_FAST_DECODE", "false")
    assert UploadPreparer.from_settings(OPENAI_224, ClipSettings()).draft_side is None
