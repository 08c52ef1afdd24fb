"""The image in a container, run like `bentoml serve`; ``python -m bench.container`` measures it.

``engine run`` stays in the foreground, so the container is a :class:`bench.server.Server`:
the engine's client forwards SIGTERM to the server inside (a graceful drain), its exit is the
server's, and its output is the server's log. The container runs as the manifests run it: a
read-only root file system, the port from ``BENTOML_PORT``, the host's network.

``python -m bench.container`` (``make bench-container``) builds the slim image of a ViT-B-32 and
the full one, and measures, interleaved with the same compiled entry served on the host: time
from ``run`` to ready, RSS idle and at its peak under 16 clients, images/s at 16 clients; then a
first start on the host that compiles. It writes ``bench_results/container.json``; the docs
quote ``docs/bench/container.json`` (``make docs-figures``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bentoml
import httpx

from bench import server
from bench.memory import RssSampler, summarise_rss, tree_pss_mb
from bench.run import Options, Target, bench_photos, git_state, resolve_tag, run_level
from bench.server import ROOT, Server, free_port
from clip_runner.hardware import cpu_name
from clip_runner.settings import available_cpus
from clip_runner.store.entries import open_entry
from deploy.build_bento import build
from deploy.container import build_image, engine_options, find_engine

TARGET = Target(key="container", title="/encode_image", app="", route="/encode_image", field="image",
                ready_path="/readyz", env={})


def start(engine: str, image: str, env: Mapping[str, str] | None = None, *, log: Path,
          port: int | None = None, name: str | None = None) -> Server:
    """``engine run`` ``image`` listening on ``port`` (a free one by default); returns at once."""
    port = port or free_port()
    name = name or f"clip-service-{port}"
    settings = {"BENTOML_PORT": str(port), **(env or {})}
    command = [engine, "run", "--rm", "--name", name, *engine_options(engine, "run"), "--read-only",
               "--tmpfs", "/tmp", *(f"--env={k}={v}" for k, v in settings.items()), image]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        proc = subprocess.Popen(command, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    return Server(proc, f"http://127.0.0.1:{port}", log)


def main_pid(engine: str, server: Server) -> int:
    """The host PID of the container's first process (its process tree is the server's)."""
    name = _name(server)
    out = subprocess.run([engine, "inspect", "--format", "{{.State.Pid}}", name],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def run_in_image(engine: str, image: str, *command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a fresh container of ``image`` (its entrypoint runs it in the bento's venv)."""
    return subprocess.run([engine, "run", "--rm", *engine_options(engine, "run"), image, *command],
                          capture_output=True, text=True, timeout=120, check=False)


def inspect_image(engine: str, image: str, template: str) -> str:
    """One field of ``engine image inspect`` (a Go template such as ``{{.Size}}``)."""
    out = subprocess.run([engine, "image", "inspect", "--format", template, image],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _name(server: Server) -> str:
    args = server.proc.args
    return str(args[args.index("--name") + 1])


# ---- `make bench-container`: the image measured beside the host ------------------------------------

CLIENTS = 16
IDLE_S = 5.0  # a ready, unloaded server watched for its idle RSS (a measurement window, not a wait)
OUT = ROOT / "bench_results" / "container.json"
GOALS = {"slim image size (GB)": ("<=", 1.0), "container / host images/s at 16 clients": (">=", 0.95),
         "first start that compiles: peak tree memory, PSS (GB)": ("<=", 2.5)}


def _wait_readyz(srv: Server) -> None:
    server.wait_ready(srv, lambda url: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, timeout_s=900)


def _under_load(srv: Server, pid: int, photos: list[bytes], opts: Options) -> dict[str, Any]:
    """Idle RSS, then ``CLIENTS`` clients for the run's duration: images/s, latency, peak RSS."""
    sampler = RssSampler(pid)
    sampler.start()
    try:
        time.sleep(IDLE_S)
        idle_to = time.perf_counter()
        level = asyncio.run(run_level(srv.url, TARGET, photos, CLIENTS, opts))
        load_to = time.perf_counter()
    finally:
        sampler.stop()
    rss = summarise_rss(sampler.readings, sampler.between(idle_to - IDLE_S, idle_to),
                        sampler.between(idle_to, load_to), sampler.every_s)
    return {"level": level, "rss": rss}


def measure_round(engine: str, image: str, model: str, photos: list[bytes], opts: Options,
                  logs: Path, n: int) -> dict[str, Any]:
    """The host service, then the container, serving ``model`` under the same load."""
    row: dict[str, Any] = {}
    for where in ("host", "container"):
        log, begin = logs / f"{where}-{n}.log", time.monotonic()
        srv = (server.start(env={**os.environ, "CLIP_MODEL_TAG": model}, log=log) if where == "host"
               else start(engine, image, log=log))
        try:
            _wait_readyz(srv)
            ready_s = round(time.monotonic() - begin, 2)
            pid = srv.proc.pid if where == "host" else main_pid(engine, srv)
            row[where] = {"ready_s": ready_s, **_under_load(srv, pid, photos, opts)}
        finally:
            server.stop(srv)
        print(f"  round {n} {where:<9} ready {ready_s:5.1f} s  {row[where]['level']['images_per_s']:7.2f} img/s "
              f"at {CLIENTS} clients  peak tree RSS {row[where]['rss']['peak_tree_mb']:.0f} MB", flush=True)
    return row


def first_start(parent: str, logs: Path) -> dict[str, Any]:
    """A host server told to serve torch entry ``parent`` with ``CLIP_RUNTIME=auto`` and none of its
    compiles in the store: it compiles each precision, times them, serves. Peak RSS of the tree."""
    with tempfile.TemporaryDirectory(prefix="clip-first-start-") as home:
        entry = open_entry(parent)  # copied alone into an empty store: nothing compiled yet
        name, version = entry.tag.split(":")
        shutil.copytree(entry.path, Path(home, "models", name, version))
        Path(home, "models", name, "latest").write_text(version)
        env = {**os.environ, "BENTOML_HOME": home, "CLIP_MODEL_TAG": entry.tag, "CLIP_RUNTIME": "auto"}
        begin = time.monotonic()
        srv = server.start(env=env, log=logs / "first-start.log")
        sampler, pss = RssSampler(srv.proc.pid), PssPeak(srv.proc.pid)
        sampler.start()
        pss.start()
        try:
            _wait_readyz(srv)
            ready_s = round(time.monotonic() - begin, 1)
            health = httpx.get(f"{srv.url}/health", timeout=10).json()
        finally:
            pss.stop()
            server.stop(srv)
            sampler.stop()
    rss = max(r.tree_mb for r in sampler.readings)
    print(f"  first start compiling {parent}: ready in {ready_s:.0f} s, peak tree PSS {pss.peak_mb:.0f} MB "
          f"(summed RSS {rss:.0f} MB)", flush=True)
    return {"model": parent, "ready_s": ready_s, "peak_tree_mb": round(pss.peak_mb, 1),
            "peak_tree_rss_sum_mb": round(rss, 1), "serving": health.get("model"), "precision": health.get("precision")}


class PssPeak(threading.Thread):
    """The largest proportional memory of a process tree (:func:`bench.memory.tree_pss_mb`) while it runs."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak_mb = pid, every_s, 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            self.peak_mb = max(self.peak_mb, tree_pss_mb(self.pid) or 0.0)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    rounds = report["rounds"]
    values = {
        "slim image size (GB)": report["images"]["cpu"]["size_gb"],
        "container / host images/s at 16 clients": round(
            statistics.mean(r["container"]["level"]["images_per_s"] for r in rounds)
            / statistics.mean(r["host"]["level"]["images_per_s"] for r in rounds), 3),
        "first start that compiles: peak tree memory, PSS (GB)": round(report["first_start"]["peak_tree_mb"] / 1000, 2)
        if report.get("first_start") else None,
    }
    out = []
    for goal, (op, target) in GOALS.items():
        value = values[goal]
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out.append({"goal": goal, "target": f"{op} {target}", "value": value, "met": met})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The slim image measured beside the host service.")
    parser.add_argument("--model", default=None, help="torch entry to pin (default: ViT-B-32, random init)")
    parser.add_argument("--rounds", type=int, default=2, help="host/container pairs, interleaved")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per round")
    parser.add_argument("--no-full", action="store_true", help="skip building the full (torch) image")
    parser.add_argument("--no-first-start", action="store_true", help="skip the compiling first start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll otherwise
    engine, parent = find_engine(), resolve_tag(args.model)
    logs = OUT.parent / "container-logs"
    logs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": {"engine": engine, "model": parent, "cpu_model": cpu_name(),
                                              "cpus": available_cpus(), "clients": CLIENTS, **git_state()}}
    os.environ["CLIP_MODEL_TAG"] = parent  # what the bentos pin
    bentos = {"cpu": build("cpu"), **({} if args.no_full else {"full": build("full")})}
    report["images"] = {}
    for variant, bento in bentos.items():
        ref = build_image(engine, bento, variant)
        size = int(inspect_image(engine, ref, "{{.Size}}"))
        report["images"][variant] = {"image": ref, "size_gb": round(size / 1e9, 3)}
        print(f"  {variant} image {ref}: {size / 1e9:.2f} GB", flush=True)
    model = json.loads(Path(bentoml.get(bentos["cpu"]).path, "src", "bento_model.json").read_text())["tag"]
    report["environment"]["pinned"] = model
    opts = Options(levels=(CLIENTS,), duration_s=args.seconds, warmup_s=5.0, requests=None, limit_batch_sizes=(),
                   limit_s=0.0, device="cpu", series=(), photos_per_size=8)
    photos = bench_photos(opts.photos_per_size)
    report["rounds"] = [measure_round(engine, report["images"]["cpu"]["image"], model, photos, opts, logs, n)
                        for n in range(1, args.rounds + 1)]
    report["first_start"] = None if args.no_first_start else first_start(parent, logs)
    report["goals"] = _goals(report)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    for goal in report["goals"]:
        print(f"  {goal['goal']}: {goal['value']} ({goal['target']}) {'met' if goal['met'] else 'NOT met'}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
