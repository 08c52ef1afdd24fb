"""Starting `bentoml serve`: the seed commands serve; a configuration that cannot serve stops it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench import server
from clip_runner.hardware import cpu_has_native_bf16
from tests.conftest import server_env
from tests.e2e.conftest import ROOT, free_port, stop_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("app", ["service:svc", "."])
def test_the_seed_commands_serve(app: str, tiny_tag: str, tmp_path: Path) -> None:
    """`bentoml serve service:svc` (the encoder service's users' command) and `bentoml serve .`."""
    srv = server.start(app, env=server_env({"CLIP_MODEL_TAG": tiny_tag}), log=tmp_path / "serve.log")
    try:
        server.wait_ready(srv, timeout_s=180)
        assert httpx.get(f"{srv.url}/health", timeout=10).json()["model"] == tiny_tag
        rows = httpx.post(f"{srv.url}/encode_text", json={"text": ["a cat"]}, timeout=30).json()
        assert len(rows) == 1 and len(rows[0]) == 32
    finally:
        stop_server(srv)
    log = (tmp_path / "serve.log").read_text()
    # At the default level: our one start-up line says what serves, how and why; no third-party INFO chatter.
    # `auto` precision on a CPU is bf16 where the CPU multiplies bf16 natively, else fp32.
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    started = [line for line in log.splitlines() if f"serving {tiny_tag} with torch at {precision} on cpu" in line]
    assert len(started) == 1 and "model: CLIP_MODEL_TAG" in started[0] and "runtime: CLIP_RUNTIME=torch" in started[0]
    assert "Parsing model identifier" not in log and "Loaded built-in" not in log, log


@pytest.mark.parametrize(("env", "says"), [
    ({"CLIP_MODEL_NAME": "no-such-arch"}, "cannot serve: unknown open_clip architecture 'no-such-arch'"),
    ({"CLIP_MODEL_TAG": "clip-missing:v1"}, "cannot serve: model 'clip-missing:v1' (CLIP_MODEL_TAG) is not in"),
])
def test_a_configuration_that_cannot_serve_stops_the_server(env: dict[str, str], says: str) -> None:
    """One error and a non-zero exit, instead of a worker restarting forever."""
    command = [str(Path(sys.executable).with_name("bentoml")), "serve", "service:svc", "--port", str(free_port())]
    done = subprocess.run(command, cwd=ROOT, env=server_env({"HF_HUB_OFFLINE": "1", **env}),
                          capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert output.count(says) == 1, output
    assert output.count("Traceback") == 0, output
