"""Overload check: drive a server at a multiple of its admitted concurrency.

    python -m bench.overload --admit 16 --factor 3 --seconds 60

Starts ``bentoml serve`` (model from CLIP_MODEL_TAG, else the demo model) with
``CLIP_MAX_CONCURRENCY=admit``, first measures the admitted load alone (``admit`` clients),
then ``admit × factor`` clients, and prints per-status counts and latency percentiles for
both, so that "the excess is refused fast while admitted requests keep their latency" is a
number, not a claim. Writes bench_results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import defaultdict

import httpx

from bench import photo_jpeg, server
from bench.server import ROOT
from bench.soak import start_server


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


async def drive(url: str, clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients posting JPEGs for ``seconds``; latency by status."""
    photos = [photo_jpeg(i, (1280, 960)) for i in range(8)]
    latencies: dict[int, list[float]] = defaultdict(list)
    stop = time.monotonic() + seconds

    async def client(i: int, http: httpx.AsyncClient) -> None:
        n = i
        while time.monotonic() < stop:
            start = time.monotonic()
            try:
                status = (await http.post("/encode_image", files={"image": ("p.jpg", photos[n % 8])})).status_code
            except httpx.HTTPError:
                status = 0
            latencies[status].append(time.monotonic() - start)
            n += 1
            if status == 429:
                await asyncio.sleep(0.05)  # a polite client backs off a little

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return {str(code): {"count": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95), "p99_ms": _pct(v, 0.99)}
            for code, v in sorted(latencies.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admit", type=int, default=16, help="CLIP_MAX_CONCURRENCY for the server")
    parser.add_argument("--factor", type=float, default=3.0, help="load multiple of --admit")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=3097)
    args = parser.parse_args()
    os.environ["CLIP_MAX_CONCURRENCY"] = str(args.admit)
    srv = start_server(args.port)
    try:
        asyncio.run(drive(srv.url, args.admit, 10))  # warm-up
        baseline = asyncio.run(drive(srv.url, args.admit, args.seconds))
        overload = asyncio.run(drive(srv.url, int(args.admit * args.factor), args.seconds))
    finally:
        server.stop(srv)
    report = {"admit": args.admit, "factor": args.factor, "seconds": args.seconds,
              "at_capacity": baseline, "overloaded": overload}
    out = ROOT / "bench_results" / "overload.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
