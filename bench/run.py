"""One benchmark run: what the model can do, what the service delivers, and what it beats.

    make bench                                        # ViT-B-32 (random init) on CPU, full run
    python -m bench.run --device cuda                 # on a GPU (autocast as CLIP_PRECISION says)
    python -m bench.run --quick --model-tag TAG       # smoke test: seconds, two levels
    python -m bench.run --series b --levels 1,16,64   # one series, for an A/B of two checkouts

It measures, in this order, each alone on the machine (``--series`` picks some by letter):

(a) limit      — in-process batched encode through ``clip_runner`` (no HTTP, no decoding):
                 images/s per batch size, and the median single-image latency; then
    (a') + decode — the same encoder fed by the service's decode threads with (b)'s JPEG mix,
                 at the service's batch size (no HTTP): (a) minus what decoding costs; and the
                 fast-decode table (``bench.decode``);
(b) ours       — ``bentoml serve service:ClipService`` over HTTP, batching on;
(c) baseline   — ``bench.baseline_service`` (transformers CLIP as in BentoML's example);
(d) unbatched  — our service with ``CLIP_BATCH_SIZE=1``;
(e) ours fp32  — our service with ``CLIP_PRECISION=fp32``, when (b) computes in another precision
                 (bf16 on CPUs with native bf16): the like-for-like comparison with (c), which
                 runs fp32 on CPU as BentoML's example does.

(b)–(e) are driven by closed-loop clients (one request in flight each) at every concurrency
level, posting one JPEG per request: a 50/50 mix of 640×480 (0.3 MP) and 1600×1200 (1.9 MP)
photos. Each level runs ``--warmup`` seconds unmeasured, then ``--duration`` seconds (or
``--requests`` completions); requests still in flight at the end are awaited but not counted.
Servers share every setting that matters (model architecture, dtype, torch threads, batch
limits) and take the ``CLIP_*`` variables of this shell. The RSS of each server's supervisor
(the ``bentoml serve`` process) and of its workers (its children) is read every 0.1 s from
start to stop: idle after start-up, peak under load, and the peak of the whole tree.

Prints a table, the ratios and the goals, and writes ``--out`` (bench_results/bench.json) and
PNG plots beside it. Server logs go to ``bench_logs/`` beside ``--out``. The docs quote the
committed ``docs/bench/bench.json``; ``python -m bench.report`` regenerates their tables.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp
import httpx

from bench import PHOTO_SIZES, photo_jpeg, server
from bench.memory import RssSampler, summarise_rss
from bench.server import ROOT, ServerFailed

if TYPE_CHECKING:
    from clip_runner.settings import ClipSettings

DEFAULT_ARCH = "ViT-B-32"
DEFAULT_LEVELS = (1, 4, 16, 64)
QUICK_LEVELS = (1, 16)
LIMIT_BATCH_SIZES = (1, 8, 16, 32)
QUICK_LIMIT_BATCH_SIZES = (1, 8)
PAYLOAD_SIZES = ("0.3MP", "2MP")  # alternated: a 50/50 mix
BASELINE_CONCURRENCY = 16  # where (b)/(c) is compared
SERVER_START_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0  # the services' own traffic timeout
IDLE_S = 1.0  # how long a ready server is watched, unloaded, for its idle RSS
#: Each series by letter (``--series``) and the report section it writes; (a) also writes
#: "decode" and "runtimes". (b) is the service as configured by default (on a CPU with OpenVINO:
#: the fastest compiled precision); (e) and (f) serve through torch, at fp32 and at torch's own
#: default (bf16 where the CPU has it; (e) is left out when that is fp32); (g)-(i) a compiled
#: entry at each precision ((h) only where bf16 is native; the one at (b)'s precision shows (b)'s figures).
SERIES = {"a": "limit", "b": "ours", "c": "baseline", "d": "unbatched", "e": "ours_fp32", "f": "ours_torch",
          "g": "ours_openvino_fp32", "h": "ours_openvino_bf16", "i": "ours_openvino_int8"}
COMPILED_SERIES = {"g": "fp32", "h": "bf16", "i": "int8"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One server under test and how to ask it for an image embedding."""

    key: str
    title: str
    app: str
    route: str
    field: str
    ready_path: str
    env: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run and for how long."""

    levels: tuple[int, ...]
    duration_s: float
    warmup_s: float
    requests: int | None
    limit_batch_sizes: tuple[int, ...]
    limit_s: float
    device: str
    series: tuple[str, ...]  # letters of SERIES
    photos_per_size: int


@dataclasses.dataclass
class Sample:
    """One finished request."""

    end: float
    latency_s: float
    status: int
    batch_size: int | None


@dataclasses.dataclass
class Window:
    """The measured part of a level: from the end of warm-up to ``stop``.

    With a request budget, ``stop`` moves to the moment the budget's last request finished.
    """

    start: float
    stop: float
    budget: int | None = None
    counted: int = 0

    def record(self, sample: Sample) -> None:
        if not self.start <= sample.end <= self.stop:
            return
        self.counted += 1
        if self.budget is not None and self.counted >= self.budget:
            self.stop = sample.end

    def contains(self, sample: Sample) -> bool:
        return self.start <= sample.end <= self.stop


# ---- statistics (pure) --------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(round(q * len(ordered), 9))  # round: 0.95 * 100 is 95.00000000000001
    return ordered[min(len(ordered), max(1, rank)) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarise(samples: Sequence[Sample], window_s: float, concurrency: int) -> dict[str, Any]:
    """Throughput, latency percentiles, errors and batch sizes of one level's measured requests."""
    ok = [s for s in samples if s.status == 200]
    latencies = [s.latency_s for s in ok]
    batches = Counter(s.batch_size for s in ok if s.batch_size is not None)
    return {
        "concurrency": concurrency,
        "window_s": round(window_s, 3),
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "by_status": {str(k): v for k, v in sorted(Counter(s.status for s in samples).items())},
        "images_per_s": round(len(ok) / window_s, 3) if window_s > 0 else 0.0,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p95_ms": _ms(percentile(latencies, 0.95)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "mean_ms": _ms(statistics.fmean(latencies)) if latencies else None,
        "batch_sizes": {str(k): v for k, v in sorted(batches.items())},
        "mean_batch_size": round(sum(k * v for k, v in batches.items()) / sum(batches.values()), 2)
        if batches else None,
    }


def _best_level(series: dict[str, Any]) -> dict[str, Any] | None:
    levels = series.get("levels") or []
    return max(levels, key=lambda lv: lv["images_per_s"]) if levels else None


def _level(series: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((lv for lv in series.get("levels") or [] if lv["concurrency"] == concurrency), None)


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


def compare_level(ours: dict[str, Any], other: dict[str, Any], preferred: int) -> int | None:
    """The concurrency to compare two series at: ``preferred`` if both ran it, else the
    common level closest to it on a log scale (the larger one on a tie)."""
    common = {lv["concurrency"] for lv in ours.get("levels") or []} & {
        lv["concurrency"] for lv in other.get("levels") or []}
    return min(common, key=lambda c: (abs(math.log2(c / preferred)), -c)) if common else None


def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or None where a level is missing (a series that did not run)."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """The headline comparisons between the sections the report has."""
    ours = report.get("ours") or {}
    out: dict[str, Any] = {}
    if report.get("limit") and "ours" in report:
        out.update(_limit_ratios(report["limit"], ours))
    for key in ("baseline", "unbatched"):
        if "ours" in report and key in report:
            out[f"ours_vs_{key}"] = _compare(ours, report[key] or {})
    for key in ("ours_fp32", "ours_openvino_fp32"):
        if report.get(key) and "baseline" in report:
            out[f"{key}_vs_baseline"] = _compare(report[key], report["baseline"] or {})
    return out


def _limit_ratios(limit: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    best, c1 = _best_level(ours), _level(ours, 1)
    return {
        "ours_vs_limit": {
            "ratio": _ratio(best and best["images_per_s"], limit["best_images_per_s"]),
            "ours_images_per_s": best and best["images_per_s"],
            "ours_concurrency": best and best["concurrency"],
            "limit_images_per_s": limit["best_images_per_s"],
            "limit_batch_size": limit["best_batch_size"],
        },
        "ours_vs_decode_limit": {
            "ratio": _ratio(best and best["images_per_s"], dig(limit, "with_decode", "images_per_s")),
            "decode_limit_images_per_s": dig(limit, "with_decode", "images_per_s"),
        },
        "ours_64_vs_16": _ratio(dig(_level(ours, 64), "images_per_s"), dig(_level(ours, 16), "images_per_s")),
        "overhead_at_c1": {
            "p50_ms": c1 and c1["p50_ms"],
            "model_ms": limit["single_image_ms"],
            "overhead_ms": round(c1["p50_ms"] - limit["single_image_ms"], 1)
            if c1 and c1["p50_ms"] is not None else None,
        },
    }


def _best_images_per_s(report: dict[str, Any]) -> float | None:
    best = _best_level(report.get("ours") or {})
    return best and best["images_per_s"]


def _peak_tree_gb(report: dict[str, Any]) -> float | None:
    peak = dig(report, "ours", "rss", "peak_tree_mb")
    return None if peak is None else round(peak / 1000, 3)


@dataclasses.dataclass(frozen=True)
class Goal:
    """A performance goal the benchmark reports against (printed, never asserted in tests)."""

    name: str
    target: float
    at_least: bool  # met when the value is >= target (else <=)
    devices: tuple[str, ...]  # where it applies
    value: Callable[[dict[str, Any]], float | None]  # from a report that has its ratios


GOALS = (
    # (a′), not (a): once decoding costs as much as the model, (b) is held to what decoding + encoding allow.
    Goal("(b)/(a′) at saturation", 0.9, True, ("cpu",), lambda r: dig(r, "ratios", "ours_vs_decode_limit", "ratio")),
    Goal("(b) images/s at c=64 / at c=16", 1.0, True, ("cpu", "cuda"), lambda r: dig(r, "ratios", "ours_64_vs_16")),
    Goal("(b)/(c) at c=16", 1.3, True, ("cpu",), lambda r: dig(r, "ratios", "ours_vs_baseline", "ratio")),
    Goal("p50 at c=1 minus model latency (ms)", 10.0, False, ("cpu",),
         lambda r: dig(r, "ratios", "overhead_at_c1", "overhead_ms")),
    Goal("12 MP decode+preprocess speed-up", 5.0, True, ("cpu", "cuda"),
         lambda r: dig(r, "decode", "sizes", "12MP", "speedup")),
    Goal("12 MP embedding cosine vs reference", 0.99, True, ("cpu", "cuda"),
         lambda r: dig(r, "decode", "sizes", "12MP", "cosine")),
    Goal("(b) peak RSS of the process tree (GB)", 1.5, False, ("cpu",), _peak_tree_gb),
    Goal("(b) JPEG images/s end to end", 2000.0, True, ("cuda",), _best_images_per_s),
    Goal("compiled fp32 / torch fp32, in process", 1.5, True, ("cpu",),
         lambda r: dig(r, "runtimes", "ratios", "openvino_fp32_vs_torch_fp32")),
    Goal("(g)/(c) at c=16, both fp32", 1.3, True, ("cpu",),
         lambda r: dig(r, "ratios", "ours_openvino_fp32_vs_baseline", "ratio")),
    Goal("best compiled / torch best, in process", 1.5, True, ("cpu",),
         lambda r: dig(r, "runtimes", "ratios", "best_compiled_vs_torch_best")),
    Goal("int8 / torch fp32, in process", 2.5, True, ("cpu",),
         lambda r: dig(r, "runtimes", "ratios", "int8_vs_torch_fp32")),
    Goal("int8 cosine to fp32, worst tower (mean)", 0.99, True, ("cpu",),
         lambda r: _parity(r, "openvino int8", "worst_mean")),
    Goal("SigLIP int8 cosine to fp32, worst tower (mean)", 0.99, True, ("cpu",),
         lambda r: _parity(r, "openvino int8", "worst_mean", "siglip")),
    Goal("demo int8 zero-shot top-1 drop (points)", 1.0, False, ("cpu",),
         lambda r: dig(r, "runtimes", "demo", "top1_drop_points")),
    Goal("demo int8 mismatch F1 drop (points)", 1.0, False, ("cpu",),
         lambda r: dig(r, "runtimes", "demo", "f1_drop_points")),
    Goal("compiled fp32 cosine to torch, worst row", 0.9999, True, ("cpu",),
         lambda r: _parity(r, "openvino fp32", "worst_min")),
    Goal("(b) peak RSS, compiled model (GB)", 1.2, False, ("cpu",),
         lambda r: _peak_tree_gb(r) if dig(r, "ours", "runtime") == "openvino" else None),
)


def _parity(report: dict[str, Any], row: str, figure: str, *model: str) -> float | None:
    """``figure`` (a :class:`~clip_runner.store.entries.Parity` property) of a runtimes row's parity: the
    bench's model's, or ``model``'s (``"siglip"``)."""
    from clip_runner.store.entries import Parity

    parity = dig(report, "runtimes", *model, "rows", row, "parity")
    return None if not parity else getattr(Parity(**parity), figure)


def runtime_models(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(model, its runtimes section: ``rows`` and, when timed, ``fp32_ceiling``) for each model the runtimes were
    measured with: the bench's, then SigLIP."""
    runtimes = report.get("runtimes") or {"rows": {}}
    models = [(report.get("environment", {}).get("arch") or "model", runtimes)]
    return models + ([(runtimes["siglip"]["arch"], runtimes["siglip"])] if runtimes.get("siglip") else [])


def fp32_gain_ceiling(section: dict[str, Any]) -> float | None:
    """The most compiling could make fp32 run against torch fp32 on this CPU: its fp32 matmul peak over the image
    FLOP/s torch fp32 reaches (a runtimes section's ``fp32_ceiling``); None where it was not timed."""
    ceiling, torch_fp32 = section.get("fp32_ceiling"), dig(section, "rows", "torch fp32", "images_per_s")
    return round(ceiling["gflop_per_s"] / (torch_fp32 * ceiling["image_gflop"]), 3) if ceiling and torch_fp32 else None


def fp32_ceiling(section: dict[str, Any]) -> str | None:
    """A runtimes section's fp32 ceiling in a sentence: the CPU's fp32 matmul peak, how much of it torch and
    OpenVINO fp32 use, and so the most compiling can gain at fp32 here; None where it was not timed."""
    gain = fp32_gain_ceiling(section)
    if gain is None:
        return None
    rows, ceiling = section["rows"], section["fp32_ceiling"]
    gflop, peak = ceiling["image_gflop"], ceiling["gflop_per_s"]
    used = " and ".join(f"{name} {rows[name]['images_per_s'] * gflop / peak:.0%}"
                        for name in ("torch fp32", "openvino fp32") if name in rows)
    verdict = (f"so compiling can make fp32 at most {gain:.2f}× torch fp32 here" if gain >= 1 else
               "so the peak was not reached: it says nothing of what compiling can gain here")
    return (f"fp32 ceiling: {gflop:.2f} GFLOP an image; this CPU's fp32 matrix product peaks at {peak:.0f} GFLOP/s, "
            f"of which {used} use; {verdict}")


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals for the report's device, each with its measured value and whether it is met."""
    device = report.get("environment", {}).get("device", "cpu").split(":")[0]
    out = []
    for goal in (g for g in GOALS if device in g.devices):
        value = goal.value(report)
        met = None if value is None else (value >= goal.target if goal.at_least else value <= goal.target)
        out.append({"goal": goal.name, "target": f"{'>=' if goal.at_least else '<='} {goal.target:g}",
                    "value": value, "met": met})
    return out


def _compare(ours: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    at = compare_level(ours, other, BASELINE_CONCURRENCY)
    if at is None:
        return None
    mine, theirs = _level(ours, at), _level(other, at)
    per_level = {str(lv["concurrency"]): _ratio(lv["images_per_s"], (_level(other, lv["concurrency"]) or {}).get(
        "images_per_s")) for lv in ours["levels"] if _level(other, lv["concurrency"])}
    best_mine, best_theirs = _best_level(ours), _best_level(other)
    return {
        "concurrency": at,
        "ratio": _ratio(mine and mine["images_per_s"], theirs and theirs["images_per_s"]),
        "per_concurrency": per_level,
        "best_vs_best": _ratio(best_mine and best_mine["images_per_s"], best_theirs and best_theirs["images_per_s"]),
    }


# ---- (a) the in-process limit ---------------------------------------------------------------------

def time_calls(call: Callable[[], Any], seconds: float, min_calls: int = 3) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure_limit(tag: str, device: str, batch_sizes: Sequence[int], seconds: float,
                  photos: Sequence[bytes] = ()) -> dict[str, Any]:
    """Batched encode throughput of the encoder the service serves (runtime and precision as its
    settings pick them) on preprocessed uint8 pixels; with ``photos``, also decode + encode of
    those JPEGs in process (see :func:`_pipeline_throughput`)."""
    from clip_runner.runtimes.choice import choose_runtime
    from clip_runner.settings import get_settings

    settings = get_settings().model_copy(update={"device": device, "model_tag": tag})
    threads = _threads()  # what the process holding the model uses
    encoder, _ = choose_runtime(tag, settings, threads)
    precision = _served_as(encoder)
    # The service runs each batch on the micro-batcher's model thread; do the same: the main
    # thread's OpenMP team can be much slower on a busy machine.
    with ThreadPoolExecutor(1) as pool:
        per_batch = pool.submit(_encode_throughput, encoder, sorted(set(batch_sizes) | {1}), seconds).result()
        with_decode = (pool.submit(_pipeline_throughput, encoder, photos, settings, seconds).result()
                       if photos else None)
    del encoder
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the servers get the whole GPU
    best = max(per_batch, key=lambda b: per_batch[b]["images_per_s"])
    return {"per_batch_size": per_batch, "best_batch_size": int(best),
            "best_images_per_s": per_batch[best]["images_per_s"],
            "single_image_ms": per_batch["1"]["median_ms"], "torch_threads": threads,
            "precision": precision, "with_decode": with_decode}


def _pipeline_throughput(encoder: Any, photos: Sequence[bytes], settings: ClipSettings,
                         seconds: float) -> dict[str, Any]:
    """(a') decode + encode in process, no HTTP: the service's decode threads and batch size.

    The photos of the next batch decode while the model encodes this one, as in the service
    under load. What separates (b) from this is the HTTP layer and the queueing; what separates
    this from (a) is the decoding, which shares the CPU with the model.
    """
    import numpy as np

    from clip_runner.preprocessing.images import UploadPreparer

    prepare = UploadPreparer.from_settings(encoder.entry.preprocess_cfg, settings)
    batch, threads = settings.max_batch, settings.decode_thread_count
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as decoders:
        def submit(first: int) -> list[Any]:
            return [decoders.submit(prepare, photos[(first + i) % len(photos)]) for i in range(batch)]

        pending, images, calls = submit(0), 0, 0
        started = time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            pixels = np.stack([future.result() for future in pending])
            pending = submit(images + batch)  # decoded while this batch encodes
            encoder.encode_pixels(pixels)
            images, calls = images + batch, calls + 1
        elapsed = time.perf_counter() - started
        for future in pending:
            future.cancel()
    result = {"images_per_s": round(images / elapsed, 3), "batch_size": batch, "decode_threads": threads}
    print(f"  decode + encode, batch {batch}: {result['images_per_s']:>9.2f} img/s "
          f"({threads} decode threads, the service's JPEG mix)", flush=True)
    return result


def _encode_throughput(encoder: Any, batch_sizes: Sequence[int], seconds: float) -> dict[str, dict[str, float]]:
    """Images/s and median batch time for each batch size (batch 1 gives the single-image latency)."""
    import numpy as np

    height, width = encoder.entry.input_size
    rng = np.random.default_rng(0)
    per_batch: dict[str, dict[str, float]] = {}
    for batch in batch_sizes:
        pixels = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        encoder.encode_pixels(pixels)  # warm-up: allocator and kernel selection for this shape
        times = time_calls(lambda p=pixels: encoder.encode_pixels(p), seconds)
        result = {"images_per_s": round(batch * len(times) / sum(times), 3),
                  "median_ms": round(statistics.median(times) * 1000, 2), "calls": len(times)}
        per_batch[str(batch)] = result
        print(f"  batch {batch:>3}: {result['images_per_s']:>9.2f} img/s, median {result['median_ms']:.1f} ms "
              "per batch", flush=True)
    return per_batch


# ---- (b)-(d) a server under closed-loop load --------------------------------------------------------

def bench_photos(per_size: int) -> list[bytes]:
    """The request payloads: 0.3 MP and 2 MP photos, alternating (a 50/50 mix)."""
    return [photo_jpeg(10_000 + i, PHOTO_SIZES[label]) for i in range(per_size) for label in PAYLOAD_SIZES]


class Upload(NamedTuple):
    """One request's multipart body and content type, encoded once: the load generator shares the
    machine with the server, so what it spends per request is kept small."""

    body: bytes
    content_type: str


def uploads(target: Target, photos: Sequence[bytes]) -> list[Upload]:
    """Each photo as ``target``'s multipart upload (httpx writes the form)."""
    out = []
    for photo in photos:
        request = httpx.Request("POST", "http://bench" + target.route,
                                files={target.field: ("photo.jpg", photo, "image/jpeg")})
        out.append(Upload(request.read(), request.headers["Content-Type"]))
    return out


async def _post(session: aiohttp.ClientSession, target: Target, upload: Upload) -> tuple[int, int | None]:
    try:
        async with session.post(target.route, data=upload.body,
                                headers={"Content-Type": upload.content_type}) as resp:
            await resp.read()
            batch = resp.headers.get("X-Batch-Size")
            return resp.status, int(batch) if batch and batch.isdigit() else None
    except (TimeoutError, aiohttp.ClientError):
        return 0, None  # connection-level failure


async def _client(session: aiohttp.ClientSession, target: Target, bodies: Sequence[Upload], first: int,
                  window: Window, sink: list[Sample]) -> None:
    n = first
    while time.perf_counter() < window.stop:
        start = time.perf_counter()
        status, batch = await _post(session, target, bodies[n % len(bodies)])
        sample = Sample(time.perf_counter(), time.perf_counter() - start, status, batch)
        sink.append(sample)
        window.record(sample)
        n += 1


async def run_level(url: str, target: Target, photos: Sequence[bytes], concurrency: int,
                    opts: Options) -> dict[str, Any]:
    """``concurrency`` clients for warm-up + duration; the measured window's summary, with the
    CPU the load generator itself used (it shares the machine with the server)."""
    bodies = uploads(target, photos)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    now, cpu = time.perf_counter(), time.process_time()
    window = Window(now + opts.warmup_s, now + opts.warmup_s + opts.duration_s, opts.requests)
    sink: list[Sample] = []
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(_client(session, target, bodies, i * 3, window, sink) for i in range(concurrency)))
    client_cores = (time.process_time() - cpu) / (time.perf_counter() - now)
    measured = [s for s in sink if window.contains(s)]
    return {**summarise(measured, window.stop - window.start, concurrency), "client_cores": round(client_cores, 3)}


@contextmanager
def serving(target: Target, photo: bytes, log: Path) -> Iterator[tuple[str, RssSampler, float]]:
    """Start ``bentoml serve`` for ``target``; yields (url, RSS sampler, seconds to ready)."""
    srv = server.start(target.app, {**os.environ, **target.env}, log=log)
    sampler = RssSampler(srv.proc.pid)
    sampler.start()
    files = {target.field: ("photo.jpg", photo, "image/jpeg")}

    def ready(url: str) -> bool:
        # The ready route, then one real request: the model is loaded and warm.
        return (httpx.get(url + target.ready_path, timeout=5).status_code == 200
                and httpx.post(url + target.route, files=files, timeout=120).status_code == 200)

    try:
        started = time.perf_counter()
        try:
            server.wait_ready(srv, ready, SERVER_START_TIMEOUT_S)
        except ServerFailed as exc:
            raise ServerFailed(f"{target.title}: {str(exc).splitlines()[0]} (log: {log})") from exc
        yield srv.url, sampler, round(time.perf_counter() - started, 1)
    finally:
        server.stop(srv)
        sampler.stop()


def measure_server(target: Target, photos: Sequence[bytes], opts: Options, log_dir: Path) -> dict[str, Any]:
    """Every concurrency level against one freshly started server, and its memory: idle for
    ``IDLE_S`` once ready, then under the load of all levels.

    A server that fails to start is recorded as an ``error`` so that the other sections still run.
    """
    print(f"\n{target.title}: starting `bentoml serve {target.app}`", flush=True)
    section: dict[str, Any] = {"title": target.title, "app": target.app, "env": target.env}
    try:
        with serving(target, photos[0], log_dir / f"{target.key}.log") as (url, sampler, ready_s):
            if target.ready_path == "/health":  # ours: what it serves, as it says
                health = httpx.get(url + "/health", timeout=10).json()
                section.update(runtime=health.get("runtime"), precision=health.get("precision"))
            idle_from = time.perf_counter()
            time.sleep(IDLE_S)  # a measurement window, not a wait for a condition
            load_from = time.perf_counter()
            levels = []
            for concurrency in opts.levels:
                level = asyncio.run(run_level(url, target, photos, concurrency, opts))
                print(f"  {_row(target.title, level)}  (client: {level['client_cores']:.2f} cores)", flush=True)
                levels.append(level)
            load_to = time.perf_counter()
    except ServerFailed as exc:
        print(f"  FAILED: {exc}", flush=True)
        return {**section, "error": str(exc)}
    rss = summarise_rss(sampler.readings, sampler.between(idle_from, load_from),
                        sampler.between(load_from, load_to), sampler.every_s)
    return {**section, "ready_s": ready_s, "rss": rss, "levels": levels}


# ---- setup -----------------------------------------------------------------------------------------

def resolve_tag(requested: str | None) -> str:
    """``--model-tag``, else ``CLIP_MODEL_TAG``, else the stored random-init ViT-B-32 (made once)."""
    return requested or os.environ.get("CLIP_MODEL_TAG") or random_init_tag(DEFAULT_ARCH)


def random_init_tag(arch: str, tokenizer: Callable[[Path], Path] | None = None) -> str:
    """The stored random-init ``arch``, registered first when there is none; ``tokenizer`` writes the
    Hugging Face tokenizer folder a model like SigLIP is registered with."""
    from clip_runner.store.entries import latest_tag, store_name
    from clip_runner.store.registration import RANDOM_INIT, register_random

    existing = latest_tag(store_name(arch, RANDOM_INIT))
    if existing:
        return existing
    print(f"registering a random-init {arch} in the model store", flush=True)
    if tokenizer is None:
        return register_random(arch)
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as folder:
        return register_random(arch, tokenizer=tokenizer(Path(folder)))


def targets(tag: str, opts: Options) -> list[Target]:
    """The servers of ``opts.series``: (b) ours, (c) the baseline, (d) ours unbatched and (e) ours
    at fp32; all with the same model and limits."""
    from clip_runner.settings import get_settings

    settings = get_settings().model_copy(update={"device": opts.device})
    shared = {"CLIP_MODEL_TAG": tag, "CLIP_DEVICE": opts.device, "CLIP_STRICT_MODEL": "true",
              # the service's default batch size for the device, unless CLIP_BATCH_SIZE is set
              "CLIP_BATCH_SIZE": str(settings.max_batch),
              # admission control must not refuse the benchmark's own load
              "CLIP_MAX_CONCURRENCY": str(max(settings.max_concurrency, *opts.levels))}
    ours = Target("ours", "ours", "service:ClipService", "/encode_image", "image", "/health",
                  {**shared, **gpu_workers(opts.device)})
    every = {
        "b": ours,
        "c": Target("baseline", "transformers baseline", "bench.baseline_service:ClipBaseline",
                    "/encode_image", "images", "/readyz", shared),
        "d": dataclasses.replace(ours, key="unbatched", title="ours, CLIP_BATCH_SIZE=1",
                                 env={**ours.env, "CLIP_BATCH_SIZE": "1"}),
        "e": dataclasses.replace(ours, key="ours_fp32", title="ours, torch fp32",
                                 env={**ours.env, "CLIP_RUNTIME": "torch", "CLIP_PRECISION": "fp32"}),
        "f": dataclasses.replace(ours, key="ours_torch", title="ours, CLIP_RUNTIME=torch",
                                 env={**ours.env, "CLIP_RUNTIME": "torch"}),
        **{letter: dataclasses.replace(ours, key=SERIES[letter], title=f"ours, openvino {precision}",
                                       env={**ours.env, "CLIP_RUNTIME": "openvino", "CLIP_PRECISION": precision})
           for letter, precision in COMPILED_SERIES.items()},
    }
    return [target for letter, target in every.items() if letter in opts.series]


def gpu_workers(device: str) -> dict[str, str]:
    """On CUDA, our service's worker count as docs/performance.md advises for a GPU machine
    (one per 2 CPUs, at most 8), unless ``CLIP_WORKERS`` is set: one worker's event loop and
    GIL cap it at a few hundred requests/s, far below what the GPU serves."""
    from clip_runner.settings import cpu_share

    if not device.startswith("cuda") or os.environ.get("CLIP_WORKERS"):
        return {}
    return {"CLIP_WORKERS": str(min(8, cpu_share(2)))}


def served_precision(device: str) -> str:
    """What (b) computes in on ``device`` under this shell's ``CLIP_PRECISION``."""
    from clip_runner.runtimes.torch_encoder import pick_device, resolve_precision
    from clip_runner.settings import get_settings

    return resolve_precision(pick_device(device), get_settings().precision).name


def environment(tag: str, opts: Options) -> dict[str, Any]:
    """Facts a reader needs to interpret the numbers, and what this run was asked to measure."""
    import torch

    from clip_runner.hardware import cpu_name
    from clip_runner.settings import available_cpus
    from clip_runner.store.entries import open_entry

    entry = open_entry(tag)
    gpu = torch.cuda.get_device_name(0) if opts.device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "model_tag": tag, "arch": entry.labels.get("arch"), "source": entry.labels.get("source"),
        "device": opts.device, "precision": served_precision(opts.device), "gpu": gpu,
        "cpu_model": cpu_name(), "cpus": available_cpus(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": str(torch.__version__), **git_state(),
        "payload": {"route": "one JPEG per request (ours: /encode_image)",
                    "mix": {label: f"{PHOTO_SIZES[label][0]}x{PHOTO_SIZES[label][1]}" for label in PAYLOAD_SIZES},
                    "share": "50/50, alternating", "distinct_photos": opts.photos_per_size * len(PAYLOAD_SIZES)},
        "series": list(opts.series), "levels": list(opts.levels), "warmup_s": opts.warmup_s,
        "duration_s": opts.duration_s, "requests_per_level": opts.requests,
    }


def git_state() -> dict[str, Any]:
    """The commit the code under test is at, and whether tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if commit is None or changes is None else bool(changes)}


# ---- output --------------------------------------------------------------------------------------------

SECTIONS = tuple((key, f"({letter}) ") for letter, key in SERIES.items() if letter != "a")
HEADER = (f"{'setup':<38}{'conc':>5}{'img/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"
          f"{'ok':>7}{'errors':>8}{'batch':>7}")
RSS_HEADER = (f"  {'MB':<36}{'idle: sup.':>11}{'workers':>9}{'load peak: sup.':>16}{'workers':>9}{'tree':>9}"
              f"{'tree peak':>11}")


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _row(title: str, level: dict[str, Any]) -> str:
    return (f"{title:<38}{level['concurrency']:>5}{_num(level['images_per_s'], '.2f'):>10}"
            f"{_num(level['p50_ms']):>10}{_num(level['p95_ms']):>10}{_num(level['p99_ms']):>10}"
            f"{level['ok']:>7}{level['errors']:>8}{_num(level['mean_batch_size']):>7}")


def render(report: dict[str, Any]) -> str:
    """The human-readable summary: table, ratios, goals and memory."""
    lines = [HEADER, "-" * len(HEADER), *_limit_rows(report.get("limit"))]
    if runtimes := report.get("runtimes"):
        lines += ["", f"(a) runtimes in process at batch {runtimes['batch_size']} ({runtimes['threads']} threads):"]
        for model, section in runtime_models(report):
            for name, row in section["rows"].items():
                parity = row.get("parity") or {}
                cosine = (f"cosine to torch fp32: images {parity['image_mean']:.5f}, texts {parity['text_mean']:.5f} "
                          f"(worst row {min(parity['image_min'], parity['text_min']):.5f})" if parity else "")
                lines.append(f"  {model:<18}{name:<16}{row['images_per_s']:>9.1f} img/s{row['texts_per_s']:>9.1f} "
                             f"texts/s  {cosine}")
            if ceiling := fp32_ceiling(section):
                lines.append(f"  {model}: {ceiling}")
        int8, fp32 = runtimes["demo"]["openvino_int8"], runtimes["demo"]["torch_fp32"]
        lines.append(f"  demo model, int8 vs torch fp32: zero-shot top-1 {int8['zero_shot_top1']:.2%} vs "
                     f"{fp32['zero_shot_top1']:.2%}, mismatch F1 {int8['mismatch_f1']:.4f} vs "
                     f"{fp32['mismatch_f1']:.4f}")
        lines.append("")
    for key, label in SECTIONS:
        series = report.get(key) or {}
        for level in series.get("levels") or []:
            lines.append(_row(label + series["title"], level))
    lines += ["", _ratio_lines(report.get("ratios") or {}), "", "goals:"]
    for goal in report.get("goals") or []:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        lines.append(f"  {goal['goal']:<40}{goal['target']:>9}{_num(goal['value'], 'g'):>9}  {verdict}")
    lines += ["", "RSS of each server: supervisor (`bentoml serve`) and workers (its children), idle after "
              "start-up and peak under load; peak of the whole tree from start to stop:", RSS_HEADER]
    for key, _label in SECTIONS:
        series = report.get(key) or {}
        if series.get("rss"):
            rss = series["rss"]
            idle, load = rss["idle_mb"], rss["load_peak_mb"]
            lines.append(f"  {series['title']:<36}{_num(idle['supervisor']):>11}{_num(idle['workers']):>9}"
                         f"{_num(load['supervisor']):>16}{_num(load['workers']):>9}{_num(load['tree']):>9}"
                         f"{_num(rss['peak_tree_mb']):>11}  (ready in {series['ready_s']} s)")
        elif series.get("error"):
            lines.append(f"  {series['title']:<36} not measured: {series['error']}")
    return "\n".join(lines)


def _limit_rows(limit: dict[str, Any] | None) -> list[str]:
    if not limit:
        return []
    rows = [f"{'(a) in-process limit':<38}{'-':>5}{limit['best_images_per_s']:>10.2f}"
            f"{limit['single_image_ms']:>10.1f}   (best batch {limit['best_batch_size']}; p50 = batch-of-1 median; "
            f"{limit.get('precision', 'fp32')})"]
    if limit.get("with_decode"):
        label = "(a') decode + encode in process"
        rows.append(f"{label:<38}{'-':>5}{limit['with_decode']['images_per_s']:>10.2f}{'-':>10}   "
                    f"(batch {limit['with_decode']['batch_size']}, the JPEG mix of (b), no HTTP)")
    return rows


def _ratio_lines(ratio: dict[str, Any]) -> str:
    out = []
    if "ours_vs_limit" in ratio:
        sat, over = ratio["ours_vs_limit"], ratio["overhead_at_c1"]
        out += [f"(b)/(a) at saturation: {_num(sat['ratio'], '.2f')}  ({_num(sat['ours_images_per_s'], '.2f')} "
                f"img/s at c={sat['ours_concurrency']} vs {sat['limit_images_per_s']:.2f} img/s "
                f"at batch {sat['limit_batch_size']})",
                f"(b)/(a') at saturation: {_num(ratio['ours_vs_decode_limit']['ratio'], '.2f')}  "
                f"(vs {_num(ratio['ours_vs_decode_limit']['decode_limit_images_per_s'], '.2f')} img/s decoding "
                "and encoding in process: what HTTP and queueing cost)",
                f"(b) images/s at c=64 / at c=16: {_num(ratio.get('ours_64_vs_16'), '.2f')}",
                f"p50 at c=1 minus single-image model latency: {_num(over['overhead_ms'])} ms "
                f"({_num(over['p50_ms'])} - {_num(over['model_ms'])})"]
    for key, label in (("ours_vs_baseline", "(b)/(c)"), ("ours_vs_unbatched", "(b)/(d)"),
                       ("ours_fp32_vs_baseline", "(e)/(c)"), ("ours_openvino_fp32_vs_baseline", "(g)/(c)")):
        if key not in ratio:
            continue
        cmp = ratio[key]
        if cmp:
            per = ", ".join(f"c={c}: {_num(r, '.2f')}" for c, r in cmp["per_concurrency"].items())
            out.append(f"{label} at c={cmp['concurrency']}: {_num(cmp['ratio'], '.2f')}  "
                       f"(best vs best {_num(cmp['best_vs_best'], '.2f')}; {per})")
        else:
            out.append(f"{label}: not measured")
    return "\n".join(out) or "(no ratios: the series they compare did not all run)"


# ---- command line --------------------------------------------------------------------------------

def _levels(text: str) -> tuple[int, ...]:
    levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("levels are positive integers, e.g. 1,4,16,64")
    return levels


def _series(text: str) -> tuple[str, ...]:
    letters = {part.strip().lower() for part in text.split(",") if part.strip()}
    if not letters or letters - set(SERIES):
        raise argparse.ArgumentTypeError(f"series are letters among {','.join(SERIES)}, e.g. b or a,b,c")
    return tuple(sorted(letters))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: levels 1,16, 1.5 s each, short (a)")
    parser.add_argument("--series", type=_series, default=tuple(SERIES),
                        help="which series to run, by letter (default a,b,c,d,e; e only when (b) is not fp32)")
    parser.add_argument("--levels", type=_levels, help="concurrency levels (default 1,4,16,64)")
    parser.add_argument("--duration", type=float, help="measured seconds per level (default 30)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each level (default 10)")
    parser.add_argument("--requests", type=int,
                        help="end a level after this many measured requests (or --duration, if sooner)")
    parser.add_argument("--limit-seconds", type=float, help="seconds per batch size for (a) (default 10)")
    parser.add_argument("--model-tag", help="model-store tag (default CLIP_MODEL_TAG, else random ViT-B-32)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu (bf16 weights on CPUs with native bf16, else fp32) or cuda (fp16 autocast); "
                        "CLIP_PRECISION overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "bench.json", help="JSON report")
    parser.add_argument("--plots-dir", type=Path, help="where the PNGs go (default: beside --out)")
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    """Options from the arguments, with --quick's short defaults."""
    quick = args.quick
    return Options(
        levels=args.levels or (QUICK_LEVELS if quick else DEFAULT_LEVELS),
        duration_s=args.duration or (1.5 if quick else 30.0),
        warmup_s=args.warmup if args.warmup is not None else (0.5 if quick else 10.0),
        requests=args.requests,
        limit_batch_sizes=QUICK_LIMIT_BATCH_SIZES if quick else LIMIT_BATCH_SIZES,
        limit_s=args.limit_seconds or (0.5 if quick else 10.0),
        device=args.device,
        series=args.series,
        photos_per_size=2 if quick else 8,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The series asked for; returns the report (also written to ``args.out``)."""
    opts = options(args)
    if "c" in opts.series and importlib.util.find_spec("transformers") is None:
        raise SystemExit("the baseline (c) needs transformers: pip install -e '.[dev]' (or pass --series without c)")
    photos = bench_photos(opts.photos_per_size)
    # Everything that loads torch runs in a child process: torch's libraries mapped here would be
    # shared with the servers' workers and so counted twice, and keep the workers from handing
    # back the pages of the CUDA libraries (a shared page stays).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        tag, opts, report = child.submit(model_side, args.model_tag, opts, photos, args.quick).result()
    print(f"model {tag} on {opts.device}; series {','.join(opts.series)}; levels {list(opts.levels)}; "
          f"{opts.warmup_s:g} s warm-up + {opts.duration_s:g} s per level", flush=True)
    for target in targets(tag, opts):
        report[target.key] = _twin_of_ours(target, report) or measure_server(target, photos, opts,
                                                                             args.out.parent / "bench_logs")
    report["ratios"] = ratios(report)
    report["goals"] = goals(report)
    from bench.plots import write_plots

    plots = write_plots(report, args.plots_dir or args.out.parent)
    report["plots"] = [_shown(path) for path in plots]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + render(report) + f"\n\nreport: {args.out}\nplots: {', '.join(report['plots'])}")
    return report


def _twin_of_ours(target: Target, report: dict[str, Any]) -> dict[str, Any] | None:
    """(b)'s figures when ``target`` is a compiled series at the precision (b) serves: the same server."""
    ours, env = report.get("ours"), target.env
    serves = f"openvino {env.get('CLIP_PRECISION')}" if env.get("CLIP_RUNTIME") == "openvino" else None
    if not ours or ours.get("error") or serves != report["environment"].get("precision"):
        return None
    print(f"\n{target.title}: what (b) serves, so (b)'s figures", flush=True)
    return {**ours, "same_as": "ours"}


def model_side(requested_tag: str | None, opts: Options, photos: Sequence[bytes],
               quick: bool) -> tuple[str, Options, dict[str, Any]]:
    """In a child process: the model's tag, the series that make sense, the environment, and
    (a) with the decode table when asked for."""
    opts = dataclasses.replace(opts, series=tuple(letter for letter in opts.series if _applies(letter, opts.device)))
    tag = resolve_tag(requested_tag)
    report: dict[str, Any] = {"environment": environment(tag, opts)}
    if opts.device == "cpu" and _has_openvino() and set(opts.series) & {"a", "b", *COMPILED_SERIES}:
        report["environment"]["precision"] = _prepare_compiled(tag, opts.device)
    if "a" in opts.series:
        print("(a) in-process limit", flush=True)
        report["limit"] = measure_limit(tag, opts.device, opts.limit_batch_sizes, opts.limit_s, photos)
        from bench.decode import format_table, measure

        report["decode"] = measure(tag, repeats=3 if quick else 9)
        print(format_table(report["decode"]), flush=True)
        if opts.device == "cpu" and _has_openvino():
            from bench import runtimes

            print("(a) runtimes in process, at the service's batch size", flush=True)
            report["runtimes"] = runtimes.measure(tag, _service_batch(opts.device), opts.limit_s, _threads(),
                                                  demo_images=200 if quick else 1000, siglip=not quick)
            report["runtimes"]["ratios"] = runtimes.ratios(report["runtimes"])
    return tag, opts, report


def _applies(letter: str, device: str) -> bool:
    """Whether a series means something here: (e) only where torch's default is not fp32 already,
    (f)-(i) only on a CPU with OpenVINO, (h) only where the CPU has native bf16."""
    from clip_runner.hardware import cpu_has_native_bf16

    if letter == "e":
        return served_precision(device) != "fp32"
    if letter in ("f", *COMPILED_SERIES):
        return device == "cpu" and _has_openvino() and (letter != "h" or cpu_has_native_bf16())
    return True


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _service_batch(device: str) -> int:
    from clip_runner.settings import get_settings

    return get_settings().model_copy(update={"device": device}).max_batch


def _threads() -> int:
    from clip_runner.settings import get_settings

    return get_settings().model_copy(update={"workers": 1}).inference_thread_count


def _served_as(encoder: Any) -> str:
    """How an encoder computes, as reports name it: ``fp32`` (torch) or ``openvino int8`` (compiled)."""
    facts = encoder.describe()
    return facts["precision"] if facts["runtime"] == "torch" else f"{facts['runtime']} {facts['precision']}"


def _prepare_compiled(tag: str, device: str) -> str:
    """Compile every precision, and let the service's choice be timed, before (a) and any server:
    a server's start-up and memory should be a served model's, not a first start's compile."""
    from bench.runtimes import compile_all
    from clip_runner.runtimes.choice import candidate_precisions, choose_runtime
    from clip_runner.settings import get_settings

    compile_all(tag, candidate_precisions("auto"))
    settings = get_settings().model_copy(update={"device": device, "model_tag": tag, "runtime": "auto"})
    encoder, choice = choose_runtime(tag, settings, _threads())
    served = _served_as(encoder)
    print(f"the service serves {served}: {choice.reason}", flush=True)
    return served


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (reports name no machine's folders)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def failures(report: dict[str, Any]) -> list[str]:
    """The errors of server sections that could not be measured."""
    return [section["error"] for section in report.values() if isinstance(section, dict) and section.get("error")]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m bench.run``; exits 1 when a server could not be measured."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    report = run(parse_args(argv))
    if failures(report):
        raise SystemExit("\nnot every server was measured:\n  " + "\n  ".join(failures(report)))


if __name__ == "__main__":
    main()
