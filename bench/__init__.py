"""Benchmark and load-test tools (``python -m bench.run``, ``bench.soak``, ``bench.overload``).

This module holds what the benchmarks and the locustfile share: synthetic photo-like JPEGs.
It imports no load-test framework, so it is safe to use from asyncio code and from tests.
"""

from __future__ import annotations

import io

from clip_runner.synthetic_images import photo_like

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
    smaller; :func:`clip_runner.synthetic_images.photo_like` lands at roughly 0.2 bytes per pixel at
    quality 90, like a camera JPEG.
    """
    buf = io.BytesIO()
    photo_like(seed, size).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
