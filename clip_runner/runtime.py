"""Which runtime and precision serve a model on this machine.

``CLIP_RUNTIME=torch`` serves the store entry with torch, as on a GPU. ``auto`` (the default)
on a CPU with OpenVINO installed serves a compiled entry of the model instead: each candidate
precision (fp32; bf16 where the CPU multiplies bf16 natively; int8) is taken from the store or
compiled now (as a model is downloaded at first start), those whose parity meets the bar are
timed at the serving batch size, and the fastest serves. The decision and its measurements are
logged, shown by ``/health`` and kept beside the model store (``clip_runtime.json``) so later
starts on the same CPU skip the timing. ``CLIP_RUNTIME=openvino`` insists on a compiled entry;
``CLIP_PRECISION`` narrows the candidates to one.

:class:`ServedModel` is what a worker serves: the resolved model, loaded in its runtime,
warm. A worker serving a compiled entry imports no torch (unless it has to compile one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compiled import (
    PARITY_BAR,
    PRECISIONS,
    CompiledEncoder,
    CompileRefused,
    Parity,
    RuntimeMissing,
    find_compiled,
    import_openvino,
)
from .encoder import Encoder
from .errors import ModelNotAvailable
from .hardware import cpu_has_native_bf16, cpu_name, serves_on_cpu
from .settings import ClipSettings, cpu_share
from .store import StoreEntry, open_entry, store_home

if TYPE_CHECKING:
    from .resolve import Resolution

logger = logging.getLogger(__name__)

DECISION_FILE = "clip_runtime.json"


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """What serves and why: shown by ``/health`` as ``runtime_choice``."""

    reason: str
    measured: dict[str, dict[str, float]] | None = None  # precision → images/s, texts/s

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "measured": self.measured}


@dataclasses.dataclass
class ServedModel:
    """The model a worker serves: resolved, loaded in its runtime and precision, warm."""

    resolution: Resolution
    encoder: Encoder
    threads: int
    choice: RuntimeChoice

    @classmethod
    def load(cls, settings: ClipSettings) -> ServedModel:
        """Resolve (registering if needed), load and warm up the configured model.

        Inference threads are this worker's share of the CPUs (``CLIP_WORKERS`` split them).
        """
        from .resolve import resolve_model

        threads = settings.num_threads or cpu_share(settings.workers)
        resolution = resolve_model(settings)
        encoder, choice = load_encoder(resolution.tag, settings, threads)
        encoder.warm_up()  # the first call pays for lazy initialisation: not a caller's
        facts = encoder.describe()
        if facts["device"] == "cpu" and sys.modules.get("torch") is not None:  # torch was imported
            from .device import page_out_gpu_libraries

            page_out_gpu_libraries()
        logger.info("serving %s (%s) on %s: %s at %s", encoder.entry.tag, resolution.reason, facts["device_name"],
                    facts["runtime"], facts["precision"])
        return cls(resolution, encoder, threads, choice)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The served model's id (its store name), then every alias a request may name it by: the
        full tag, a compiled entry's parent, the open_clip name (and with its pretrained tag), ``clip``."""
        entry = self.encoder.entry
        arch, pretrained, parent = (entry.labels.get(k) for k in ("arch", "pretrained", "parent"))
        names = [entry.tag.split(":")[0], entry.tag, parent, parent and parent.split(":")[0], arch,
                 arch and pretrained and f"{arch}/{pretrained}", "clip"]
        return tuple(dict.fromkeys(name for name in names if name))

    def info(self) -> dict[str, Any]:
        """What is served, where, why and how: the body of ``/health`` (less the live fields)."""
        entry, resolution = self.encoder.entry, self.resolution
        return {
            "model": entry.tag,
            "arch": entry.labels.get("arch"),
            "pretrained": entry.labels.get("pretrained"),
            "source": entry.labels.get("source"),
            **self.encoder.describe(),
            "embedding_size": entry.embedding_size,
            "reason": resolution.reason,
            "fallback": resolution.fallback,
            "hardware": resolution.hardware,
            "runtime_choice": self.choice.to_dict(),
            "threads": self.threads,
            "image_size": entry.metadata.get("image_size"),
        }


def load_encoder(tag: str, settings: ClipSettings, threads: int) -> tuple[Encoder, RuntimeChoice]:
    """The encoder that serves store entry ``tag`` under ``settings`` (see the module docstring)."""
    entry = open_entry(tag)
    if entry.runtime != "torch":
        return CompiledEncoder(entry, threads), RuntimeChoice(f"{tag} is a compiled entry")
    wanted = settings.runtime
    if wanted == "torch" or not serves_on_cpu(settings.device):
        if wanted == "openvino" or settings.precision == "int8":
            raise ModelNotAvailable(f"CLIP_RUNTIME={wanted} with CLIP_PRECISION={settings.precision} on "
                                    f"CLIP_DEVICE={settings.device}: compiled runtimes and int8 run on CPU, with "
                                    "CLIP_RUNTIME=auto or openvino")
        return _torch_encoder(entry, settings, threads), RuntimeChoice(f"CLIP_RUNTIME={wanted}, CLIP_DEVICE="
                                                                       f"{settings.device}")
    try:
        import_openvino()
    except RuntimeMissing:
        if wanted == "openvino" or settings.precision == "int8":
            raise
        logger.info("OpenVINO is not installed: serving with torch (%s)", "pip install 'clip-service[openvino]'")
        return _torch_encoder(entry, settings, threads), RuntimeChoice("OpenVINO not installed: torch")
    with _store_lock():  # one worker compiles and times; the others then read its decision
        candidates = _compiled_candidates(entry, _candidate_precisions(settings.precision), threads)
        if not candidates:
            if wanted == "openvino":
                raise ModelNotAvailable(f"no compiled entry of {tag} meets the parity bar; see the log above")
            return _torch_encoder(entry, settings, threads), RuntimeChoice("no compiled entry usable: torch")
        precision, choice = _fastest(entry, candidates, threads, settings.max_batch)
    logger.info("serving %s through OpenVINO at %s: %s", tag, precision, choice.reason)
    return CompiledEncoder(candidates[precision], threads), choice


def _torch_encoder(entry: StoreEntry, settings: ClipSettings, threads: int) -> Encoder:
    from .device import configure_threads, pick_device, resolve_precision
    from .encoder import BatchEncoder
    from .loading import load_entry

    configure_threads(threads)
    device = pick_device(settings.device)
    precision = resolve_precision(device, settings.precision)
    return BatchEncoder(load_entry(entry, device, precision.weights), precision)


def _candidate_precisions(requested: str) -> tuple[str, ...]:
    if requested in PRECISIONS:
        return (requested,)
    if requested == "fp16":
        logger.warning("CLIP_PRECISION=fp16 is not supported on CPU; using fp32 (bf16 is the fast CPU choice)")
        return ("fp32",)
    return ("fp32", "bf16", "int8") if cpu_has_native_bf16() else ("fp32", "int8")


def _compiled_candidates(entry: StoreEntry, precisions: tuple[str, ...], threads: int) -> dict[str, StoreEntry]:
    """Each precision's compiled entry from the store, compiled now when missing; refusals skipped."""
    found: dict[str, StoreEntry] = {}
    for precision in precisions:
        compiled = find_compiled(entry.tag, precision)
        if compiled is None:
            logger.warning("no %s compile of %s in the store: compiling it now (once)", precision, entry.tag)
            try:
                compiled = open_entry(_compile_in_a_child(entry.tag, precision, threads))
            except CompileRefused as exc:
                logger.warning("%s", exc)
                continue
        parity = compiled.metadata.get("parity")
        if not parity or Parity(**parity).worst_mean < PARITY_BAR:
            logger.warning("%s was forced past the parity bar (%s): not served by default", compiled.tag, parity)
            continue
        found[precision] = compiled
    return found


def _compile_in_a_child(tag: str, precision: str, threads: int) -> str:
    """``python -m models compile`` in a child process; returns the new tag.

    A child, so that the worker never holds torch, the parent's fp32 weights or the compiler's
    peak: it keeps only the compiled graphs it serves. Its log lines (and NNCF's progress bars)
    go to the worker's stderr.
    """
    command = [sys.executable, "-m", "models", "compile", tag, "--precision", precision, "--threads", str(threads)]
    root = Path(__file__).resolve().parents[1]  # where the `models` command line lives, in a checkout or a bento
    done = subprocess.run(command, cwd=root, stdout=subprocess.PIPE, text=True, check=False)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not last:
        raise CompileRefused(f"compiling {tag} at {precision} failed (exit {done.returncode}; its log is above)")
    return last


def _fastest(entry: StoreEntry, candidates: dict[str, StoreEntry], threads: int,
             batch: int) -> tuple[str, RuntimeChoice]:
    """The candidate with the most images/s at ``batch`` on this CPU (timed once, then remembered)."""
    if len(candidates) == 1:
        (precision,) = candidates
        return precision, RuntimeChoice(f"CLIP_PRECISION={precision}")
    key = "|".join([entry.tag, cpu_name(), f"threads={threads}", f"batch={batch}",
                    *sorted(c.tag for c in candidates.values())])
    decisions = _read_decisions()
    if (measured := decisions.get(key, {}).get("measured")) is None:
        logger.info("timing %s at batch %d on %s", ", ".join(candidates), batch, cpu_name())
        measured = {p: _throughput(c, threads, batch) for p, c in candidates.items()}
        decisions[key] = {"measured": measured, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        try:
            _decision_file().write_text(json.dumps(decisions, indent=2))
        except OSError as exc:  # a read-only store: time again at the next start, but serve now
            logger.warning("could not remember the timing in %s: %s", _decision_file(), exc)
        how = "measured now"
    else:
        how = f"measured at {decisions[key]['at']}"
    best = max(measured, key=lambda p: measured[p]["images_per_s"])
    figures = ", ".join(f"{p} {m['images_per_s']:.1f}" for p, m in measured.items())
    return best, RuntimeChoice(f"fastest on {cpu_name()} meeting parity {PARITY_BAR} (images/s at batch "
                               f"{batch}: {figures}; {how})", measured)


def _throughput(entry: StoreEntry, threads: int, batch: int, repeats: int = 5) -> dict[str, float]:
    """Images/s and texts/s of ``entry`` at ``batch``: the best of ``repeats`` calls, after two
    unmeasured ones (the first calls at a new batch shape prepare its kernels)."""
    encoder = CompiledEncoder(entry, threads)
    size = entry.preprocess_cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    texts = [f"a photo of item number {i}" for i in range(batch)]
    encoder.warm_up()
    rates = {}
    for name, call in (("images_per_s", lambda: encoder.encode_pixels(pixels)),
                       ("texts_per_s", lambda: encoder.encode_texts(texts))):
        call(), call()
        best = min(_seconds(call) for _ in range(repeats))
        rates[name] = round(batch / best, 2)
    return rates


def _seconds(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _decision_file() -> Path:
    return Path(store_home()).parent / DECISION_FILE


def _read_decisions() -> dict[str, Any]:
    try:
        return json.loads(_decision_file().read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _store_lock() -> Iterator[None]:
    """Held while compiling and timing, so that workers starting together do it once."""
    path = Path(store_home()).parent / "clip_compile.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:  # a read-only store: nothing will be written to it, so nothing to guard
        logger.info("no compile lock (%s): %s", path, exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
