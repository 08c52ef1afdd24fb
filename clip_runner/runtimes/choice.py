"""Which runtime and precision serve a model on this machine: :func:`choose_runtime`.

``CLIP_RUNTIME=auto`` on a CPU with OpenVINO serves the fastest compiled precision that meets the
parity bar, compiling missing ones first and keeping the timing in ``clip_runtime.json`` (README,
"Compiled CPU runtimes"). Each runtime's library is imported only once chosen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import importlib.util
import logging
import subprocess
import sys
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import CompileRefused, ModelNotAvailable, RuntimeMissing
from ..hardware import cpu_has_native_bf16, cpu_name, serves_on_cpu
from ..settings import ClipSettings
from ..store.entries import (
    PARITY_BAR,
    PRECISIONS,
    Parity,
    StoreEntry,
    beside_store,
    find_compiled,
    open_entry,
    read_beside_store,
    write_beside_store,
)
from .encoder import Encoder, warn_fp16_on_cpu

logger = logging.getLogger(__name__)

DECISION_FILE = "clip_runtime.json"
INSTALL_HINT = "pip install 'clip-service[openvino]'"


@dataclasses.dataclass(frozen=True)
class RuntimeChoice:
    """What serves and why: shown by ``/health`` as ``runtime_choice``."""

    reason: str
    measured: dict[str, dict[str, float]] | None = None  # precision → images/s, texts/s


def choose_runtime(tag: str, settings: ClipSettings, threads: int) -> tuple[Encoder, RuntimeChoice]:
    """The encoder that serves store entry ``tag`` under ``settings`` (see the module docstring)."""
    entry = open_entry(tag)
    if entry.runtime != "torch":
        return openvino_encoder()(entry, threads), RuntimeChoice(f"{tag} is a compiled entry")
    wanted = settings.runtime
    if wanted == "torch" or not serves_on_cpu(settings.device):
        if wanted == "openvino" or settings.precision == "int8":
            raise ModelNotAvailable(f"CLIP_RUNTIME={wanted} with CLIP_PRECISION={settings.precision} on "
                                    f"CLIP_DEVICE={settings.device}: compiled runtimes and int8 run on CPU, with "
                                    "CLIP_RUNTIME=auto or openvino")
        return _torch_encoder(entry, settings, threads), RuntimeChoice(f"CLIP_RUNTIME={wanted}, CLIP_DEVICE="
                                                                       f"{settings.device}")
    try:
        compiled_encoder = openvino_encoder()
    except RuntimeMissing:
        if wanted == "openvino" or settings.precision == "int8":
            raise
        return _torch_encoder(entry, settings, threads), RuntimeChoice(f"OpenVINO not installed ({INSTALL_HINT}): "
                                                                       "torch")
    picked = choose_compiled(entry, settings, threads)
    if picked is None:
        if wanted == "openvino":
            raise ModelNotAvailable(f"no compiled entry of {tag} meets the parity bar; see the log above")
        return _torch_encoder(entry, settings, threads), RuntimeChoice("no compiled entry usable: torch")
    compiled, choice = picked
    return compiled_encoder(compiled, threads), choice


def choose_compiled(entry: StoreEntry, settings: ClipSettings, threads: int) -> tuple[StoreEntry, RuntimeChoice] | None:
    """The compiled entry ``auto`` serves for torch entry ``entry`` on this CPU, compiling the missing
    candidates first; None when none meets the parity bar. ``make build`` pins it in the CPU bento."""
    with _store_lock():  # one worker compiles and times; the others then read its decision
        candidates = _compiled_candidates(entry, candidate_precisions(settings.precision), threads)
        if not candidates:
            return None
        precision, choice = _fastest(entry, candidates, threads, settings.max_batch)
    return candidates[precision], choice


def openvino_encoder() -> Callable[[StoreEntry, int], Encoder]:
    """The OpenVINO encoder class, or :class:`RuntimeMissing` naming the extra to install."""
    try:
        from .openvino_encoder import OpenVINOEncoder  # optional extra: OpenVINO may not be installed
    except ImportError as exc:
        raise RuntimeMissing(f"the OpenVINO runtime is not installed ({exc}); install it with {INSTALL_HINT}") from exc
    return OpenVINOEncoder


def _torch_encoder(entry: StoreEntry, settings: ClipSettings, threads: int) -> Encoder:
    from .torch_encoder import TorchEncoder  # torch boundary: loaded only when torch serves

    return TorchEncoder.serve(entry, settings, threads)


def candidate_precisions(requested: str) -> tuple[str, ...]:
    """The compiled precisions ``CLIP_PRECISION=requested`` lets ``auto`` choose from on this CPU."""
    if requested in PRECISIONS:
        return (requested,)
    if requested == "fp16":
        warn_fp16_on_cpu()
        return ("fp32",)
    return ("fp32", "bf16", "int8") if cpu_has_native_bf16() else ("fp32", "int8")


def _compiled_candidates(entry: StoreEntry, precisions: tuple[str, ...], threads: int) -> dict[str, StoreEntry]:
    """Each precision's compiled entry from the store, the missing ones compiled now; refusals skipped."""
    if missing := [precision for precision in precisions if find_compiled(entry.tag, precision) is None]:
        if importlib.util.find_spec("torch") is None:  # the slim image: it serves, it does not compile
            raise ModelNotAvailable(f"{entry.tag} has no {'/'.join(missing)} compile in the store and torch is not "
                                    "installed to make one: pin a compiled entry (`make build` does)")
        logger.warning("no %s compile of %s in the store: compiling it now (once)", "/".join(missing), entry.tag)
        try:
            _compile_in_a_child(entry.tag, missing, threads)
        except CompileRefused as exc:
            logger.warning("%s", exc)
    found: dict[str, StoreEntry] = {}
    for precision in precisions:
        if (compiled := find_compiled(entry.tag, precision)) is None:
            continue  # refused: the compile's log says why
        parity = compiled.metadata.get("parity")
        if not parity or Parity(**parity).worst_mean < PARITY_BAR:
            logger.warning("%s was forced past the parity bar (%s): not served by default", compiled.tag, parity)
            continue
        found[precision] = compiled
    return found


def _compile_in_a_child(tag: str, precisions: list[str], threads: int) -> None:
    """``python -m models compile`` of ``precisions`` in a child process (so the worker never holds torch or the
    compiler's peak); the store then has each precision that met the parity bar."""
    command = [sys.executable, "-m", "models", "compile", tag, "--precision", *precisions, "--threads", str(threads)]
    root = Path(__file__).resolve().parents[2]  # where the `models` command line lives, in a checkout or a bento
    done = subprocess.run(command, cwd=root, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise CompileRefused(f"compiling {tag} at {'/'.join(precisions)} failed (exit {done.returncode}; "
                             "its log is above)")


def _fastest(entry: StoreEntry, candidates: dict[str, StoreEntry], threads: int,
             batch: int) -> tuple[str, RuntimeChoice]:
    """The candidate with the most images/s at ``batch`` on this CPU (timed once, then remembered)."""
    if len(candidates) == 1:
        (precision,) = candidates
        return precision, RuntimeChoice(f"CLIP_PRECISION={precision}")
    key = "|".join([entry.tag, cpu_name(), f"threads={threads}", f"batch={batch}",
                    *sorted(c.tag for c in candidates.values())])
    decisions = read_beside_store(DECISION_FILE)
    if (measured := decisions.get(key, {}).get("measured")) is None:
        logger.info("timing %s at batch %d on %s", ", ".join(candidates), batch, cpu_name())
        measured = {p: _throughput(c, threads, batch) for p, c in candidates.items()}
        decisions[key] = {"measured": measured, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        write_beside_store(DECISION_FILE, decisions)  # a read-only store times again at the next start
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
    encoder = openvino_encoder()(entry, threads)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *entry.input_size, 3), dtype=np.uint8)
    texts = [f"a photo of item number {i}" for i in range(batch)]
    encoder.warm_up()
    rates = {}
    for name, call in (("images_per_s", lambda: encoder.encode_pixels(pixels)),
                       ("texts_per_s", lambda: encoder.encode_texts(texts))):
        call(), call()
        rates[name] = round(batch / min(timeit.repeat(call, number=1, repeat=repeats)), 2)
    return rates


@contextlib.contextmanager
def _store_lock() -> Iterator[None]:
    """Held while compiling and timing, so that workers starting together do it once."""
    path = beside_store("clip_compile.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:  # a read-only store: nothing will be written to it, so nothing to guard
        logger.info("no compile lock (%s): %s", path, exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, whatever happens
        yield
