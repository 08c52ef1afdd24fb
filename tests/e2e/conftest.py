"""A real `bentoml serve` subprocess serving the tiny test model (via bench.server)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from bench import server as server_process
from bench.server import ROOT, Server, ServerFailed, free_port
from tests.conftest import PINNED_FP32, server_env

__all__ = ["ROOT", "Server", "free_port", "in_progress", "start_server", "stop_server", "wait_for"]


def start_server(settings: Mapping[str, str], log: Path, timeout: float = 180) -> Server:
    """`bentoml serve service:ClipService` with exactly these CLIP_* settings, once /health answers.

    The shell's own CLIP_* variables are dropped (tests.conftest.server_env); stopped on failure.
    """
    srv = server_process.start(env=server_env(settings), log=log)
    try:
        server_process.wait_ready(srv, timeout_s=timeout)
    except ServerFailed:
        stop_server(srv)
        raise
    return srv


def stop_server(srv: Server) -> None:
    server_process.stop(srv, timeout_s=30)


def wait_for(condition, what: str, timeout_s: float = 60, poll_s: float = 0.05) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` when it does not in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def in_progress(srv: Server, path: str) -> int:
    """Requests to ``path`` the server is handling now (BentoML's in-progress gauge on /metrics)."""
    metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
    pattern = rf'bentoml_service_request_in_progress\{{endpoint="{re.escape(path)}"[^}}]*\}} (\S+)'
    return int(sum(float(v) for v in re.findall(pattern, metrics)))


@pytest.fixture(scope="session")
def server(tiny_tag: str, tmp_path_factory) -> Iterator[Server]:
    """The tiny model at fp32 on CPU (parity is measured against it)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = start_server({"CLIP_MODEL_TAG": tiny_tag, "CLIP_BATCH_SIZE": "16", **PINNED_FP32}, log)
    yield srv
    stop_server(srv)
