"""Soak test: steady mixed load for N minutes; errors by status, latency and RSS over time.

    python -m bench.soak --minutes 10 --concurrency 8            # starts its own server
    python -m bench.soak --url http://host:3000 --pid 1234       # an already running one

Without ``--url`` it serves ``CLIP_MODEL_TAG`` (or the demo model) with ``bentoml serve`` and
measures that server's whole process tree. It writes ``bench_results/soak.json`` and prints a
table per interval plus the RSS growth after warm-up (goal: < 5 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx

from bench import photo_jpeg, server
from bench.memory import tree_rss_mb
from bench.server import ROOT


def payloads() -> list[tuple[str, dict]]:
    """A realistic mix, including a few bad requests (they must stay 4xx)."""
    photos = [photo_jpeg(i, s) for i, s in enumerate([(640, 480), (1600, 1200), (800, 800)] * 3)]
    mix: list[tuple[str, dict]] = []
    for p in photos:
        mix.append(("/encode_image", {"files": {"image": ("p.jpg", p)}}))
        mix.append(("/classify", {"files": {"image": ("p.jpg", p)}, "data": {"top_k": "3"}}))
        mix.append(("/analyze", {"files": {"image": ("p.jpg", p)}, "data": {"text": "a red shoe"}}))
    mix.append(("/encode_text", {"json": {"text": ["a red shoe", "a blue bag", "a watch"]}}))
    mix.append(("/encode_image", {"files": {"image": ("bad.jpg", b"not an image")}}))  # 415
    mix.append(("/encode_text", {"json": {"text": ""}}))  # 400
    return mix


async def _worker(client: httpx.AsyncClient, mix, stop: float, sink: list[tuple[float, int, float]]) -> None:
    rng = random.Random()
    while time.monotonic() < stop:
        path, kwargs = rng.choice(mix)
        start = time.monotonic()
        try:
            status = (await client.post(path, **kwargs)).status_code
        except httpx.HTTPError:
            status = 0  # connection-level failure
        sink.append((start, status, time.monotonic() - start))


async def soak(url: str, pid: int | None, minutes: float, concurrency: int, interval_s: float) -> dict:
    """Run the load and sample every ``interval_s``; returns the report."""
    mix, sink = payloads(), []
    stop = time.monotonic() + minutes * 60
    samples = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        workers = [asyncio.create_task(_worker(client, mix, stop, sink)) for _ in range(concurrency)]
        begin = time.monotonic()
        while time.monotonic() < stop:
            await asyncio.sleep(interval_s)
            window = [s for s in sink if s[0] >= time.monotonic() - interval_s]
            lat = sorted(s[2] for s in window) or [float("nan")]
            sample = {
                "t_s": round(time.monotonic() - begin, 1),
                "requests": len(window),
                "by_status": dict(Counter(str(s[1]) for s in window)),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                "p95_ms": round(lat[int(len(lat) * 0.95)] * 1000, 1),
                "rss_mb": round(tree_rss_mb(pid), 1) if pid else None,
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        await asyncio.gather(*workers)
    return _report(samples, sink)


def _report(samples: list[dict], sink: list[tuple[float, int, float]]) -> dict:
    totals = Counter(str(s[1]) for s in sink)
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
    growth = None
    if len(rss) >= 5:
        warm = rss[max(1, len(rss) // 5)]  # after the first fifth: caches and pools are warm
        growth = round((max(rss[len(rss) // 5:]) - warm) / warm * 100, 2)
    server_errors = sum(n for code, n in totals.items() if code == "0" or code.startswith("5"))
    return {"requests": len(sink), "by_status": dict(totals), "server_errors": server_errors,
            "rss_growth_after_warmup_pct": growth, "samples": samples}


def start_server(port: int) -> server.Server:
    """`bentoml serve` of CLIP_MODEL_TAG (else the demo model) on ``port``, once healthy."""
    env = dict(os.environ)
    if not env.get("CLIP_MODEL_TAG"):
        env.setdefault("CLIP_MODEL_NAME", "demo")
    srv = server.start(env=env, port=port)
    try:
        server.wait_ready(srv, timeout_s=300, poll_s=1)
    except server.ServerFailed:
        server.stop(srv)
        raise
    return srv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="server to soak (default: start one)")
    parser.add_argument("--pid", type=int, help="server process id for RSS (with --url)")
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 10)))
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("SOAK_CONCURRENCY", 8)))
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--port", type=int, default=3099)
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "soak.json"))
    args = parser.parse_args()
    srv = None
    url, pid = args.url, args.pid
    if not url:
        srv = start_server(args.port)
        url, pid = srv.url, srv.proc.pid
    try:
        report = asyncio.run(soak(url, pid, args.minutes, args.concurrency, args.interval))
    finally:
        if srv is not None:
            server.stop(srv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nrequests {report['requests']}  by status {report['by_status']}  "
          f"server errors {report['server_errors']}  RSS growth after warm-up "
          f"{report['rss_growth_after_warmup_pct']} %  -> {args.out}")


if __name__ == "__main__":
    main()
