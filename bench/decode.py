"""Fast decode benchmark: a 12 MP JPEG through our decode+preprocess vs open_clip's reference.

    python -m bench.decode [--model-tag TAG] [--repeats 9]
    tag=$(python -c 'from clip_runner.store import registration; print(registration.register_demo())')
    python -m bench.decode --model-tag "$tag"

Reference: ``PIL.Image.open`` + full decode + open_clip's own eval transform (resize, crop,
to-tensor, normalise). Ours: :class:`~clip_runner.preprocessing.images.UploadPreparer`, the service's
own decode (at the draft size it uses) and resize, then :func:`~clip_runner.runtimes.torch_encoder.normalize`.
The two run alternately, ``--repeats`` times each. Prints the median time of each (and its
range), the speed-up of the medians, and the cosine between the two embeddings of the same
photo under the served model (goal: ≥ 5× faster at cosine ≥ 0.99). Both paths run
single-threaded here; the service runs many decodes in parallel.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from bench import PHOTO_SIZES, photo_jpeg
from clip_runner.preprocessing.images import UploadPreparer
from clip_runner.runtimes.torch_encoder import normalize
from clip_runner.settings import ClipSettings


def _timed_ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def _alternating_times(first: Callable[[], Any], second: Callable[[], Any],
                    repeats: int) -> tuple[list[float], list[float], Any, Any]:
    """Times of both functions, run alternately so that a change in the machine's state (other
    load, memory pressure) falls on both alike; returns both time lists and the last outputs."""
    times_a, times_b, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        ms, out_a = _timed_ms(first)
        times_a.append(ms)
        ms, out_b = _timed_ms(second)
        times_b.append(ms)
    return times_a, times_b, out_a, out_b


def measure(model_tag: str | None = None, repeats: int = 9) -> dict[str, Any]:
    """Times and cosine per photo size (one torch thread); the model is the given one or a random ViT-B-32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(model_tag, repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(model_tag: str | None, repeats: int) -> dict[str, Any]:
    import open_clip

    from clip_runner.store.registration import register_random
    from clip_runner.store.weights import load_entry

    loaded = load_entry(model_tag or register_random("ViT-B-32"), torch.device("cpu"))
    _, _, reference_tf = open_clip.create_model_and_transforms(loaded.entry.local_dir_name, device="cpu")
    prepare = UploadPreparer.from_settings(loaded.entry.preprocess_cfg, ClipSettings())  # as the service
    pipeline = prepare.pipeline
    results: dict[str, Any] = {"model": loaded.entry.tag, "draft_side": prepare.draft_side, "sizes": {}}
    for name, size in PHOTO_SIZES.items():
        data = photo_jpeg(0, size)
        def reference(data: bytes = data) -> torch.Tensor:
            return reference_tf(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)

        def fast(data: bytes = data) -> torch.Tensor:
            pixels = prepare(data)[None]
            return normalize(pixels, pipeline.mean, pipeline.std, torch.device("cpu"))

        ref_times, ours_times, ref, ours = _alternating_times(reference, fast, repeats)
        ref_ms, ours_ms = statistics.median(ref_times), statistics.median(ours_times)
        with torch.inference_mode():
            a, b, other = (torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1)
                           for x in (ref, ours, reference(photo_jpeg(1, size))))
        results["sizes"][name] = {"bytes": len(data), "reference_ms": round(ref_ms, 1), "ours_ms": round(ours_ms, 1),
                                  "reference_range_ms": [round(min(ref_times), 1), round(max(ref_times), 1)],
                                  "ours_range_ms": [round(min(ours_times), 1), round(max(ours_times), 1)],
                                  "speedup": round(ref_ms / ours_ms, 2), "cosine": round(float((a * b).sum()), 5),
                                  # the scale: how far apart the model puts two different photos
                                  "cosine_other_photo": round(float((a * other).sum()), 5)}
    return results


def format_table(results: dict[str, Any]) -> str:
    """The decode comparison as a small text table."""
    lines = [f"decode+preprocess, one thread, model {results['model']} (draft side {results['draft_side']} px)",
             f"{'photo':>6} {'KB':>7} {'reference ms':>13} {'(range)':>13} {'ours ms':>8} {'(range)':>11} "
             f"{'speed-up':>9} {'cosine':>8} {'(another photo)':>16}"]
    for name, row in results["sizes"].items():
        ref_lo, ref_hi = row["reference_range_ms"]
        ours_lo, ours_hi = row["ours_range_ms"]
        lines.append(f"{name:>6} {row['bytes'] / 1024:7.0f} {row['reference_ms']:13.1f} {ref_lo:6.1f}-{ref_hi:<6.1f} "
                     f"{row['ours_ms']:8.1f} {ours_lo:5.1f}-{ours_hi:<5.1f} "
                     f"{row['speedup']:8.1f}x {row['cosine']:8.4f} {row['cosine_other_photo']:16.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-tag", help="store tag (default: a random-init ViT-B-32)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(args.model_tag, args.repeats)
    print(format_table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
