"""Fast decode benchmark: a 12 MP JPEG through our decode+preprocess vs open_clip's reference.

    python -m bench.decode [--model-tag TAG] [--repeats 7]

Reference: ``PIL.Image.open`` + full decode + open_clip's own eval transform (resize, crop,
to-tensor, normalise). Ours: :func:`clip_runner.images.decode_image` with the draft size the
service uses, then :class:`~clip_runner.preprocess.PixelPipeline` and
:func:`~clip_runner.preprocess.normalize`. Prints the median time of each, the speed-up, and
the cosine between the two embeddings of the same photo under the served model (goal:
≥ 5× faster at cosine ≥ 0.99). Both paths run single-threaded here; the service runs many
decodes in parallel.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from clip_runner.images import decode_image
from clip_runner.preprocess import PixelPipeline, normalize

LIMITS = {"max_bytes": 64 * 1024 * 1024, "max_pixels": 100_000_000}
SIZES = {"0.3MP": (640, 480), "2MP": (1600, 1200), "12MP": (4000, 3000)}


def photo_jpeg(size: tuple[int, int], seed: int = 0, quality: int = 90, exif_orientation: int | None = None) -> bytes:
    """A photo-like JPEG: smooth shading, hard-edged objects and sensor-like noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(12):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(w // 40, w // 8))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(base, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def _median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def measure(model_tag: str | None = None, repeats: int = 7) -> dict[str, Any]:
    """Times and cosine per photo size; the model is the served one (or a random ViT-B-32)."""
    import open_clip

    from clip_runner.loading import load_entry
    from models.register import register_random

    torch.set_num_threads(1)
    loaded = load_entry(model_tag or register_random("ViT-B-32"), torch.device("cpu"))
    _, _, reference_tf = open_clip.create_model_and_transforms(loaded.entry.local_dir_name, device="cpu")
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    draft = pipeline.draft_side()
    results: dict[str, Any] = {"model": loaded.entry.tag, "draft_side": draft, "sizes": {}}
    for name, size in SIZES.items():
        data = photo_jpeg(size)
        def reference(data: bytes = data) -> torch.Tensor:
            return reference_tf(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)

        def fast(data: bytes = data) -> torch.Tensor:
            pixels = pipeline(decode_image(data, **LIMITS, draft_side=draft))[None]
            return normalize(pixels, pipeline.mean, pipeline.std, torch.device("cpu"))

        ref_ms, ref = _median_ms(reference, repeats)
        ours_ms, ours = _median_ms(fast, repeats)
        with torch.inference_mode():
            a = torch.nn.functional.normalize(loaded.model.encode_image(ref), dim=-1)
            b = torch.nn.functional.normalize(loaded.model.encode_image(ours), dim=-1)
        results["sizes"][name] = {"bytes": len(data), "reference_ms": round(ref_ms, 1), "ours_ms": round(ours_ms, 1),
                                  "speedup": round(ref_ms / ours_ms, 2), "cosine": round(float((a * b).sum()), 5)}
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-tag", help="store tag (default: a random-init ViT-B-32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.model_tag, args.repeats)
    print(f"decode+preprocess, one thread, model {results['model']} (draft side {results['draft_side']} px)")
    print(f"{'photo':>6} {'KB':>7} {'reference ms':>13} {'ours ms':>8} {'speed-up':>9} {'cosine':>8}")
    for name, row in results["sizes"].items():
        print(f"{name:>6} {row['bytes'] / 1024:7.0f} {row['reference_ms']:13.1f} {row['ours_ms']:8.1f} "
              f"{row['speedup']:8.1f}x {row['cosine']:8.4f}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
