"""The OpenVINO runtime: a compiled entry's two towers (made by :mod:`clip_runner.compile`), without torch.

The image graph takes the batcher's uint8 pixels as they are (it normalises); the text graph takes the
ids of the entry's ``tokenizer.json``, CLIP BPE or a Hugging Face tokenizer. The serving side's only
home of OpenVINO (README, "Compiled CPU runtimes").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import openvino as ov

from ..errors import ModelNotAvailable
from ..preprocessing.clip_tokenizer import ClipTokenizer
from ..preprocessing.hf_tokenizer import HFTextTokenizer
from ..store.entries import OPENVINO, TOKENIZER_FILE, StoreEntry, verify_files
from .encoder import Encoder, check_pixels

logger = logging.getLogger(__name__)
ONE_STREAM = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}  # one batch at a time, every thread on it


class OpenVINOEncoder(Encoder):
    """Serves a compiled entry: one OpenVINO infer request per tower, one batch at a time."""

    def __init__(self, entry: StoreEntry, threads: int, *, verify: bool = True) -> None:
        """Compile ``entry``'s towers for this CPU with ``threads`` inference threads."""
        start = time.perf_counter()
        if verify:
            verify_files(entry)
        self.entry = entry
        self.precision = entry.labels.get("precision", "fp32")
        config = {**ONE_STREAM, "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads}
        core = ov.Core()
        try:
            image, text = (core.compile_model(str(entry.path / f"{tower}.xml"), "CPU", config)
                           for tower in ("image", "text"))
        except RuntimeError as exc:
            raise ModelNotAvailable(f"store entry {entry.tag}: OpenVINO could not compile it: {exc}") from exc
        if self.precision == "bf16" and image.get_property("INFERENCE_PRECISION_HINT") != ov.Type.bf16:
            logger.warning("%s: this CPU has no native bf16, so OpenVINO computes it in fp32", entry.tag)
            self.precision = "fp32"  # what /health reports is what the CPU computes
        self._image, self._text = image.create_infer_request(), text.create_infer_request()
        self._tokenizer = _tokenizer(entry)
        if isinstance(self._tokenizer, HFTextTokenizer):
            self.padding = self._tokenizer.padding
        self.load_seconds = time.perf_counter() - start

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self._tokenizer(list(texts)))

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        check_pixels(pixels)
        return np.array(self._image.infer([np.ascontiguousarray(pixels, dtype=np.uint8)])[0])

    def text_features(self, tokens: np.ndarray) -> np.ndarray:
        return np.array(self._text.infer([np.asarray(tokens, dtype=np.int64)])[0])

    def describe(self) -> dict[str, Any]:
        return {"runtime": OPENVINO, "runtime_version": self.entry.metadata.get("runtime_version"),
                "device": "cpu", "device_name": "cpu", "precision": self.precision,
                "parent": self.entry.labels.get("parent"), "load_seconds": round(self.load_seconds, 3)}


def _tokenizer(entry: StoreEntry) -> Callable[[list[str]], Any]:
    """The entry's torch-free tokenizer; open_clip's for an entry compiled without one."""
    if entry.hf_tokenizer:
        return HFTextTokenizer.for_model(entry.path, entry.model_cfg)
    if (entry.path / TOKENIZER_FILE).is_file():
        return ClipTokenizer(entry.path / TOKENIZER_FILE, int(entry.metadata.get("context_length", 77)))
    import open_clip  # torch boundary: only for a tokenizer that is not CLIP BPE (the compile log warned)

    return open_clip.get_tokenizer(entry.local_dir_name)
