"""A `bentoml serve` subprocess: start, wait until ready, stop. Benchmarks and end-to-end tests share it.

The server runs in its own session (process group), so stopping it signals BentoML's whole
tree of workers at once: SIGTERM first (graceful drain), SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message carries the end of its output."""


@dataclasses.dataclass
class Server:
    """A running `bentoml serve` and where its output goes."""

    proc: subprocess.Popen
    url: str
    log: Path | None

    def output(self, chars: int = 5000) -> str:
        """The end of what the server printed (for failure messages)."""
        if self.log is None or not self.log.is_file():
            return "(output not kept)"
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(app: str = "service:ClipService", env: Mapping[str, str] | None = None, *, log: Path | None = None,
          port: int | None = None, host: str = "127.0.0.1", cwd: Path = ROOT) -> Server:
    """Launch ``bentoml serve APP`` (a module:Service or a built bento's tag) from ``cwd``.

    Output goes to ``log`` (discarded when None).
    """
    port = port or free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", app, "--port", str(port), "--host", host]
    environment = dict(os.environ if env is None else env)
    if log is None:
        proc = subprocess.Popen(command, cwd=cwd, env=environment, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as fh:
            proc = subprocess.Popen(command, cwd=cwd, env=environment, start_new_session=True,
                                    stdout=fh, stderr=subprocess.STDOUT)
    return Server(proc, f"http://{host}:{port}", log)


def healthy(url: str) -> bool:
    """The default readiness check: ``GET /health`` answers 200."""
    return httpx.get(f"{url}/health", timeout=5).status_code == 200


def wait_ready(server: Server, ready: Callable[[str], bool] = healthy, timeout_s: float = 300,
               poll_s: float = 0.5) -> None:
    """Return once ``ready(url)`` holds; raise :class:`ServerFailed` if the server exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerFailed(f"bentoml serve exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if ready(server.url):
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(poll_s)
    raise ServerFailed(f"bentoml serve did not become ready in {timeout_s:.0f}s:\n{server.output()}")


def stop(server: Server, timeout_s: float = 60) -> None:
    """SIGTERM the server's process group and wait; SIGKILL it if it outlives ``timeout_s``."""
    if server.proc.poll() is not None:
        return
    os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
