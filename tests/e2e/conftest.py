"""A real `bentoml serve` subprocess serving the tiny test model (via bench.server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import server as server_process
from bench.server import ROOT, Server, ServerFailed, free_port

__all__ = ["ROOT", "Server", "free_port", "start_server", "stop_server"]


def start_server(env_overrides: dict[str, str], log: Path, timeout: float = 180) -> Server:
    """`bentoml serve service:ClipService` with extra env, once /health answers (stopped on failure)."""
    srv = server_process.start(env={**os.environ, **env_overrides}, log=log)
    try:
        server_process.wait_ready(srv, timeout_s=timeout)
    except ServerFailed:
        stop_server(srv)
        raise
    return srv


def stop_server(srv: Server) -> None:
    server_process.stop(srv, timeout_s=30)


@pytest.fixture(scope="session")
def server(tiny_tag: str, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = start_server(
        {"CLIP_MODEL_TAG": tiny_tag, "CLIP_BATCH_SIZE": "16", "CLIP_MAX_LATENCY_MS": "5000"}, log
    )
    yield srv
    stop_server(srv)
