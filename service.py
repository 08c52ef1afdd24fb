"""The BentoML service: each worker loads the model and serves ``clip_http.app``'s routes.

``bentoml serve`` imports this module in its supervisor too, so nothing here loads torch or the
model code. A configuration that cannot serve stops the whole server with one error and a
non-zero exit, instead of a worker restarting forever.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import bentoml

from clip_http.app import create_app
from clip_runner.hardware import serves_on_cpu
from clip_runner.settings import ClipSettings, get_settings

logger = logging.getLogger("clip_service")
settings = get_settings()
BAKED_MODEL_FILE = Path(__file__).with_name("bento_model.json")
SUPERVISOR_ENV = "_CLIP_SERVICE_SUPERVISOR_PID"  # set by the supervisor for the workers it starts
FATAL_SIGNAL = signal.SIGUSR1  # a worker → its supervisor: "this configuration cannot serve"


def served_settings(base: ClipSettings) -> ClipSettings:
    """``base``, with the model tag `make build` baked into a bento unless ``CLIP_MODEL_TAG`` names another
    (a source checkout has no baked tag)."""
    if base.model_tag or not BAKED_MODEL_FILE.is_file():
        return base
    return base.model_copy(update={"model_tag": str(json.loads(BAKED_MODEL_FILE.read_text())["tag"])})


def service_config(base: ClipSettings) -> dict[str, Any]:
    """BentoML's config: ``CLIP_WORKERS`` workers (one model copy each), ``CLIP_GPUS`` GPUs, no request
    traced unless ``CLIP_TRACING``."""
    # 600 s: a 32-image request on a slow CPU must not be cut off.
    gpus = {"resources": {"gpu": base.gpus}} if base.gpus else {}
    # BentoML's tracing middleware runs on every request even with no exporter: ~5 % of the CPU.
    tracing = {} if base.tracing else {"tracing": {"excluded_urls": [".*"]}}
    return {"workers": base.workers, "traffic": {"timeout": 600}, **gpus, **tracing}


def _stop_serving(signum: int, frame: object) -> None:
    """Supervisor: a worker cannot serve this configuration; stop everything, exit non-zero."""
    sys.stderr.write("clip-service: stopping: the model could not be loaded (the worker's error is "
                     "above); fix the configuration and start again\n")
    sys.stderr.flush()
    atexit.register(os._exit, 3)  # after the graceful stop below, whatever the CLI returns
    os.kill(os.getpid(), signal.SIGTERM)


def _watch_workers() -> None:
    """In ``bentoml serve``'s supervisor (any process but a BentoML worker): hear a worker's call."""
    in_a_worker = Path(sys.argv[0]).parts[-3:] == ("_bentoml_impl", "worker", "service.py")
    if in_a_worker or threading.current_thread() is not threading.main_thread():
        return
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # inherited by the workers it starts
    signal.signal(FATAL_SIGNAL, _stop_serving)


def _cannot_serve(exc: Exception) -> None:
    """Worker: say why once, ask the supervisor to stop the server, wait for it (no restarts)."""
    if isinstance(exc, (ValueError, RuntimeError)):  # configuration errors say all in one line
        logger.error("cannot serve: %s", exc)
    else:
        logger.exception("cannot serve: the model failed to load")
    if os.environ.get(SUPERVISOR_ENV) != str(os.getppid()):
        raise exc  # not under `bentoml serve` (e.g. driven in process): the caller sees it
    os.kill(os.getppid(), FATAL_SIGNAL)
    signal.alarm(60)  # should the stop never come, exit anyway (the supervisor then restarts us)
    signal.pause()  # returns when the supervisor's stop (or the alarm) reaches this worker
    os._exit(3)


def _pinned_model(tag: str) -> bentoml.models.BentoModel:
    """The store entry to pack and serve; a tag not in the store stops here, before any worker."""
    try:
        return bentoml.models.BentoModel(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        raise SystemExit(f"clip-service: cannot serve: model {tag!r} (CLIP_MODEL_TAG) is not in the model "
                         "store; `bentoml models list` shows what is, BENTOML_HOME picks the store") from None


_watch_workers()
app = create_app(settings)
MODEL_TAG = served_settings(settings).model_tag


@bentoml.service(name="clip_service", **service_config(settings))
@bentoml.asgi_app(app, path="/")
class ClipService:
    """The public service; the model lives in each worker, behind the micro-batcher."""

    if MODEL_TAG:  # pinned so that `bentoml build` packs it into the bento
        model_ref = _pinned_model(MODEL_TAG)

    def __init__(self) -> None:
        _quiet_third_party_logs(settings.log_level)
        _skip_triton_on_cpu(settings.device)
        from clip_runner.startup import serve  # supervisor/worker split: the model code loads in the worker only

        try:
            app.state.api = serve(served_settings(settings))
        except Exception as exc:
            _cannot_serve(exc)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Finish queued work and stop the model thread."""
        api = getattr(app.state, "api", None)
        if api is not None:
            api.close()


def _quiet_third_party_logs(level: str) -> None:
    """Our loggers at ``CLIP_LOG_LEVEL``; the root logger (open_clip's ``logging.info`` chatter) at WARNING."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("clip_service", "clip_runner", "models"):
        logging.getLogger(name).setLevel(level)


def _skip_triton_on_cpu(device: str) -> None:
    """On a CPU, keep torch from loading triton (a GPU kernel compiler) it will never use.

    open_clip imports torchvision, whose import reaches torch._dynamo, which imports triton
    only to see whether it is there: 100 MB of resident library in a worker that serves on CPU.
    Without it, torch takes its CPU paths as it would on a machine without triton.
    """
    if "triton" not in sys.modules and serves_on_cpu(device):
        sys.modules["triton"] = None  # type: ignore[assignment]  # import triton → ImportError


svc = ClipService  # `bentoml serve service:svc`, the command of the encoder service this replaces
