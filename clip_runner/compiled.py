"""Compiled entries: both towers of a store entry as OpenVINO models, in fp32, bf16 or int8.

:mod:`clip_runner.compiler` makes them (``python -m models compile``); this module serves
them. :class:`CompiledEncoder` needs no torch: the image graph takes the batcher's uint8
pixels as they are (scaling and normalisation are compiled into it), and the text graph takes
the tokens of :class:`~clip_runner.tokenizer.ClipTokenizer`.

Precisions: ``fp32`` (inference in fp32), ``bf16`` (weights stored in fp16, inference in bf16
where the CPU has it), ``int8`` (NNCF post-training quantization, calibrated on a folder of
the user's images or on the default set of :func:`calibration_images`).

OpenVINO is an optional dependency (``pip install 'clip-service[openvino]'``); ONNX Runtime was
measured too and lost on every tower and precision (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .encoder import Encoder, unit_rows
from .errors import ModelNotAvailable
from .store import MetadataRecord, StoreEntry, verify_files
from .tokenizer import TOKENIZER_FILE, ClipTokenizer

logger = logging.getLogger(__name__)

RUNTIME = "openvino"
PRECISIONS = ("fp32", "bf16", "int8")
#: Least mean cosine, per tower, between a compiled entry's embeddings and its parent's torch
#: fp32 ones on the parity set: under it a compile refuses to register (unless forced).
PARITY_BAR = 0.99
INSTALL_HINT = "pip install 'clip-service[openvino]'"


class RuntimeMissing(ModelNotAvailable):
    """The compiled runtime (or its quantization tool) is not installed."""


class CompileRefused(ModelNotAvailable):
    """A compile whose result would not be served: parity under the bar, or no calibration data."""


def import_openvino() -> Any:
    """The ``openvino`` module, or :class:`RuntimeMissing` naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeMissing(f"the OpenVINO runtime is not installed ({exc}); install it with {INSTALL_HINT}") from exc
    return openvino


@dataclasses.dataclass(frozen=True)
class Parity(MetadataRecord):
    """Cosine of each tower's output to the parent's torch fp32 output, over the parity set."""

    image_mean: float
    image_min: float
    text_mean: float
    text_min: float

    @classmethod
    def between(cls, ref: tuple[np.ndarray, np.ndarray], ours: tuple[np.ndarray, np.ndarray]) -> Parity:
        """Parity of (image rows, text rows) ``ours`` to ``ref``; all rows unit-length."""
        image, text = (np.einsum("nd,nd->n", r, o) for r, o in zip(ref, ours, strict=True))
        return cls(float(image.mean()), float(image.min()), float(text.mean()), float(text.min()))

    @property
    def worst_mean(self) -> float:
        """The worse tower's mean cosine: what :data:`PARITY_BAR` is held against."""
        return min(self.image_mean, self.text_mean)

    @property
    def worst_min(self) -> float:
        """The single least-alike row of either tower."""
        return min(self.image_min, self.text_min)


class CompiledEncoder(Encoder):
    """Serves a compiled entry: one OpenVINO infer request per tower, one batch at a time."""

    def __init__(self, entry: StoreEntry, threads: int, *, verify: bool = True) -> None:
        """Compile ``entry``'s towers for this CPU with ``threads`` inference threads."""
        ov = import_openvino()
        start = time.perf_counter()
        if verify:
            verify_files(entry)
        self.entry = entry
        self.precision = entry.labels.get("precision", "fp32")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
        core = ov.Core()
        try:
            self._image, self._text = (core.compile_model(str(entry.path / f"{tower}.xml"), "CPU", config)
                                       .create_infer_request() for tower in ("image", "text"))
        except RuntimeError as exc:
            raise ModelNotAvailable(f"store entry {entry.tag}: OpenVINO could not compile it: {exc}") from exc
        self.tokenizer = _tokenizer(entry)
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded %s (%s %s) in %.2fs", entry.tag, RUNTIME, self.precision, self.load_seconds)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) float32, unit rows."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) pixels, got shape {pixels.shape}")
        return unit_rows(self._image.infer([np.ascontiguousarray(pixels, dtype=np.uint8)])[0], len(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) float32, unit rows."""
        tokens = np.asarray(self.tokenizer(list(texts)))
        return unit_rows(self._text.infer([tokens])[0], len(texts))

    def describe(self) -> dict[str, Any]:
        return {"runtime": RUNTIME, "runtime_version": self.entry.metadata.get("runtime_version"),
                "device": "cpu", "device_name": "cpu", "precision": self.precision,
                "parent": self.entry.labels.get("parent"), "load_seconds": round(self.load_seconds, 3)}


def find_compiled(parent_tag: str, precision: str) -> StoreEntry | None:
    """The newest compiled entry of ``parent_tag`` at ``precision`` in the store, or None."""
    from .store import list_entries

    for entry in list_entries():  # newest first
        labels = entry.labels
        if (labels.get("parent"), labels.get("runtime"), labels.get("precision")) == (parent_tag, RUNTIME, precision):
            return entry
    return None


def _tokenizer(entry: StoreEntry) -> Any:
    """The entry's torch-free tokenizer; open_clip's (which imports torch) for one without it."""
    if (entry.path / TOKENIZER_FILE).is_file():
        return ClipTokenizer(entry.path / TOKENIZER_FILE, int(entry.metadata.get("context_length", 77)))
    import open_clip

    return open_clip.get_tokenizer(entry.local_dir_name)
