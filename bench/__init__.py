"""Benchmark and load-test tools (``python -m bench.run``, ``bench.soak``, ``bench.overload``).

This module holds what the benchmarks and the locustfile share: synthetic photo-like JPEGs.
It imports no load-test framework, so it is safe to use from asyncio code and from tests.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Upload sizes the load tests use, as (width, height): a thumbnail, a typical web photo and a
#: phone camera photo.
PHOTO_SIZES: dict[str, tuple[int, int]] = {
    "0.3MP": (640, 480),
    "2MP": (1600, 1200),
    "12MP": (4000, 3000),
}


def photo_jpeg(seed: int, size: tuple[int, int], quality: int = 90) -> bytes:
    """A JPEG of ``size`` (width, height) that compresses and decodes like a photo.

    Pure noise would be far larger and slower to decode than a real photo, and a flat image far
    smaller; a blend of a smooth colour field, mid-frequency detail and a little sensor grain
    lands at roughly 0.2 bytes per pixel at quality 90, like a camera JPEG.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    base = _upsampled(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), size)
    detail = _upsampled(rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8), size)
    pixels = np.asarray(Image.blend(base, detail, 0.25), dtype=np.int16)
    pixels += rng.integers(-5, 6, (height, width, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _upsampled(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
