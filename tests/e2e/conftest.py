"""A real `bentoml serve` subprocess serving the tiny test model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running `bentoml serve` and what it printed (for failure messages)."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def start_server(env_overrides: dict[str, str], log: Path, timeout: float = 180) -> Server:
    port = free_port()
    env = {**os.environ, **env_overrides}
    bentoml = Path(sys.executable).with_name("bentoml")
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(bentoml), "serve", "service:ClipService", "--port", str(port), "--host", "127.0.0.1"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"bentoml serve did not become healthy in {timeout}s:\n{server.output()}")


def stop_server(server: Server) -> None:
    import signal

    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def server(tiny_tag: str, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    srv = start_server(
        {"CLIP_MODEL_TAG": tiny_tag, "CLIP_BATCH_SIZE": "16", "CLIP_MAX_LATENCY_MS": "5000"}, log
    )
    yield srv
    stop_server(srv)
