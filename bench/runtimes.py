"""The runtimes in process: torch and compiled OpenVINO entries at every precision this CPU has.

Part of ``make bench`` series (a). For each runtime and precision: images/s and texts/s at the
service's batch size, on the same pixels and texts, the rows taking turns in one process (so the
ratios compare like with like, drift and all); the compiled entries' recorded parity; the CPU's fp32 matrix
product peak, timed in turn with the rows, which bounds what compiling can gain at fp32; and the demo model's
zero-shot top-1 and mismatch F1 at int8 against torch fp32. The full run measures a random-init
ViT-B-16-SigLIP (a sigmoid model, with a stand-in tokenizer) the same way, next to the bench's model.

ONNX Runtime, the other CPU runtime the field uses, is measured beside them when installed (the
dev extra has it): the same towers exported with ``torch.onnx``, at fp32 and with ONNX Runtime's
dynamic int8 quantization. It is the evidence for serving OpenVINO only (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import fp32_gain_ceiling, random_init_tag, time_calls
from bench.tokenizer_files import write_siglip_tokenizer

SIGLIP_ARCH = "ViT-B-16-SigLIP"  # the sigmoid model the full run measures next to the bench's model
ROUNDS = 3  # timing windows per row, the rows taking turns (see _throughputs)
PEAK = "fp32 matmul peak"  # the slot timed beside the rows (see matmul_peak)
PEAK_N = 2048  # its matrices' side: 17 GFLOP a call, large enough for the CPU's fastest kernels
Slot = tuple[str, str]  # (row, measure): what _throughputs times
TEXTS = [f"a photo of a {thing} on a table" for thing in ("cat", "dog", "red car", "blue mug")] * 16


def compile_all(tag: str, precisions: tuple[str, ...]) -> dict[str, str]:
    """Each precision's compiled entry of ``tag``: from the store, else compiled now."""
    from clip_runner.compile.openvino_compiler import compile_entries
    from clip_runner.store.entries import find_compiled

    found = {precision: compiled.tag for precision in precisions if (compiled := find_compiled(tag, precision))}
    missing = [precision for precision in precisions if precision not in found]
    return {**found, **(compile_entries(tag, missing) if missing else {})}


def measure(tag: str, batch: int, seconds: float, threads: int, demo_images: int = 1000,
            siglip: bool = False) -> dict[str, Any]:
    """Throughput of every runtime × precision at ``batch``, parity, and the demo accuracy at int8; with
    ``siglip``, the rows of a random-init ViT-B-16-SigLIP too (torch and compiled)."""
    out = {"batch_size": batch, "threads": threads, "rounds": ROUNDS, **model_rows(tag, batch, seconds, threads)}
    if importlib.util.find_spec("onnxruntime") is not None:
        out["rows"].update(onnxruntime_rows(tag, batch, seconds, threads))
    out["demo"] = demo_accuracy(demo_images)
    if siglip:
        siglip_tag = random_init_tag(SIGLIP_ARCH, write_siglip_tokenizer)
        print(f"  {SIGLIP_ARCH} (random init, stand-in tokenizer)", flush=True)
        out["siglip"] = {"arch": SIGLIP_ARCH, "tag": siglip_tag, **model_rows(siglip_tag, batch, seconds, threads)}
    return out


def model_rows(tag: str, batch: int, seconds: float, threads: int,
               precisions: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Torch (fp32, bf16 where native) and each compiled precision of ``tag``: ``rows`` of throughput, with the
    compiled entries' parity to torch fp32 as recorded when compiled (both towers, on the fixed parity set), and
    the ``fp32_ceiling`` they are timed against (see :func:`matmul_peak`)."""
    import torch

    from clip_runner.hardware import cpu_has_native_bf16
    from clip_runner.runtimes.choice import candidate_precisions
    from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
    from clip_runner.runtimes.torch_encoder import TorchEncoder
    from clip_runner.store.entries import open_entry
    from clip_runner.store.weights import load_entry

    compiled = compile_all(tag, precisions or candidate_precisions("auto"))
    encoders: dict[str, Any] = {}
    for precision in ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",):
        loaded = load_entry(tag, torch.device("cpu"), torch.bfloat16 if precision == "bf16" else torch.float32)
        encoders[f"torch {precision}"] = TorchEncoder(loaded, precision)
    entries = {precision: open_entry(compiled_tag) for precision, compiled_tag in compiled.items()}
    for precision, entry in entries.items():
        encoders[f"openvino {precision}"] = OpenVINOEncoder(entry, threads)
    peak = {(PEAK, "gflop_per_s"): matmul_peak(threads)}
    rows = _throughputs({**_encoder_slots(encoders, batch), **peak}, seconds)
    fp32 = encoders["torch fp32"].loaded
    ceiling = {"image_gflop": image_gflop(fp32.model, fp32.entry.input_size), **rows.pop(PEAK)}
    for precision, entry in entries.items():
        rows[f"openvino {precision}"].update(parity=entry.metadata.get("parity"), tag=entry.tag)
    del encoders
    gc.collect()
    return {"rows": rows, "fp32_ceiling": ceiling}


def matmul_peak(threads: int) -> tuple[Callable[[], Any], float]:
    """A call of one PEAK_N² fp32 matrix product compiled by OpenVINO with the encoders' settings, and its GFLOP.
    Timed beside the rows (median call, as theirs), it is the rate of the fastest fp32 kernels this CPU gives
    OpenVINO, with no copies in or out: against it, how much of the CPU an fp32 model's FLOPs use."""
    import openvino as ov
    import openvino.opset13 as ops

    from clip_runner.runtimes.openvino_encoder import ONE_STREAM

    rng = np.random.default_rng(0)
    left = ops.parameter([PEAK_N, PEAK_N], ov.Type.f32)
    product = ops.matmul(left, ops.constant(rng.random((PEAK_N, PEAK_N), dtype=np.float32)), False, False)
    config = {**ONE_STREAM, "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    request = ov.Core().compile_model(ov.Model([product], [left]), "CPU", config).create_infer_request()
    request.set_input_tensor(ov.Tensor(rng.random((PEAK_N, PEAK_N), dtype=np.float32)))  # set once, not per call
    return request.infer, 2 * PEAK_N**3 / 1e9


def image_gflop(model: Any, size: tuple[int, int]) -> float:
    """GFLOP of one image through ``model``'s image tower as torch's counter adds them up: every projection, MLP
    and the patch embedding, but not attention's score products (QKᵀ, AV), which torch's fused CPU attention
    kernel hides from it (1 % of ViT-B-32's FLOPs, 4 % of ViT-B-16's). The count is low by that much."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with _unfused_attention(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.zeros(1, 3, *size, dtype=next(model.parameters()).dtype))
    return counter.get_total_flops() / 1e9


@contextlib.contextmanager
def _unfused_attention() -> Iterator[None]:
    """open_clip's attention as separate projections while inside (the fused op is neither exported to ONNX nor
    seen by the FLOP counter); torch's setting as it was afterwards."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _encoder_slots(encoders: dict[str, Any], batch: int) -> dict[Slot, tuple[Callable[[], Any], float]]:
    """Each encoder's images/s and texts/s slot: a call on ``batch`` items (the same pixels and texts for all)."""
    size = next(iter(encoders.values())).entry.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *size, 3), dtype=np.uint8)
    return {(key, name): (call, batch) for key, encoder in encoders.items()
            for name, call in (("images_per_s", functools.partial(encoder.encode_pixels, pixels)),
                               ("texts_per_s", functools.partial(encoder.encode_texts, TEXTS[:batch])))}


def _throughputs(slots: dict[Slot, tuple[Callable[[], Any], float]], seconds: float) -> dict[str, dict[str, float]]:
    """The rate of each (row, measure) slot: its call's work (items, GFLOP) over the median time of a call. The
    slots take turns: ROUNDS windows of ``seconds / ROUNDS`` each (at least one call), so a drift in the machine's
    speed while they are timed (tens of percent on a shared host) falls on every row alike and their ratios hold."""
    for call, _ in slots.values():
        call()  # warm-up for this shape
    times: dict[Slot, list[float]] = {slot: [] for slot in slots}
    for _ in range(ROUNDS):
        for slot, (call, _) in slots.items():
            times[slot] += time_calls(call, seconds / ROUNDS, min_calls=1)
    rows: dict[str, dict[str, float]] = {}
    for (key, name), (_, work) in slots.items():
        rows.setdefault(key, {})[name] = round(work / statistics.median(times[key, name]), 2)
    for key, row in rows.items():
        print(f"  {key:>20} " + " ".join(f"{rate:>8.1f} {name}" for name, rate in row.items()), flush=True)
    return rows


def demo_accuracy(count: int = 1000) -> dict[str, Any]:
    """The demo model's zero-shot top-1 and mismatch F1: torch fp32 against its int8 compile."""
    import torch

    from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
    from clip_runner.runtimes.torch_encoder import TorchEncoder
    from clip_runner.store.entries import open_entry
    from clip_runner.store.registration import register_demo
    from clip_runner.store.weights import load_entry
    from clip_runner.training.demo import evaluate

    tag = register_demo()
    int8 = open_entry(compile_all(tag, ("int8",))["int8"])
    reference = evaluate(TorchEncoder(load_entry(tag, torch.device("cpu")), "fp32"), count)
    quantized = evaluate(OpenVINOEncoder(int8, torch.get_num_threads()), count)
    return {"images": count, "torch_fp32": reference.to_json(), "openvino_int8": quantized.to_json(),
            "parity": int8.metadata.get("parity"),
            "top1_drop_points": round(100 * (reference.zero_shot_top1 - quantized.zero_shot_top1), 2),
            "f1_drop_points": round(100 * (reference.mismatch_f1 - quantized.mismatch_f1), 2)}


def ratios(runtimes: dict[str, Any]) -> dict[str, float | None]:
    """In-process speed-ups, images/s: compiled fp32, the best compiled and int8 against torch; and the most that
    compiling could gain at fp32 on this CPU: its fp32 matmul peak over torch fp32's image FLOP/s."""
    rows = runtimes["rows"]

    def rate(key: str) -> float | None:
        return rows[key]["images_per_s"] if key in rows else None

    torch_best = max(v["images_per_s"] for k, v in rows.items() if k.startswith("torch"))
    compiled_best = max((v["images_per_s"] for k, v in rows.items() if k.startswith("openvino")), default=None)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {"openvino_fp32_vs_torch_fp32": ratio(rate("openvino fp32"), rate("torch fp32")),
            "best_compiled_vs_torch_best": ratio(compiled_best, torch_best),
            "int8_vs_torch_fp32": ratio(rate("openvino int8"), rate("torch fp32")),
            "fp32_ceiling_vs_torch_fp32": fp32_gain_ceiling(runtimes)}


class OnnxEncoder:
    """Both towers in ONNX Runtime sessions, with the encoder interface the rows are timed through."""

    def __init__(self, entry: Any, image: Path, text: Path, threads: int,
                 tokenize: Callable[[list[str]], np.ndarray]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.entry, self.tokenize = entry, tokenize
        self._image, self._text = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                                   for path in (image, text))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        from clip_runner.runtimes.encoder import unit_rows

        return unit_rows(self._image.run(None, {"pixels": pixels})[0])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        from clip_runner.runtimes.encoder import unit_rows

        return unit_rows(self._text.run(None, {"tokens": self.tokenize(texts)})[0])


def onnxruntime_rows(tag: str, batch: int, seconds: float, threads: int) -> dict[str, Any]:
    """ONNX Runtime fp32 and dynamic int8, timed and checked for parity like the OpenVINO rows."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clip_runner.compile.openvino_compiler import parity_set
    from clip_runner.compile.torch_export import ImageTower, TextTower, write_tokenizer
    from clip_runner.preprocessing.clip_tokenizer import ClipTokenizer
    from clip_runner.preprocessing.images import PixelPipeline
    from clip_runner.runtimes.torch_encoder import TorchEncoder
    from clip_runner.store.entries import TOKENIZER_FILE, Parity
    from clip_runner.store.weights import load_entry

    loaded = load_entry(tag, torch.device("cpu"))
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    pixels, texts = parity_set(pipeline)
    reference = TorchEncoder(loaded, "fp32")
    expected = (reference.encode_pixels(pixels), reference.encode_texts(texts))
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clip-onnx-") as tmp:
        folder = Path(tmp)
        # The fast CLIP BPE that compiled entries use; another tokenizer (SigLIP's) as torch calls it.
        tokenize = (ClipTokenizer(folder / TOKENIZER_FILE, int(loaded.entry.metadata.get("context_length", 77)))
                    if write_tokenizer(loaded.tokenizer, folder) else reference.tokenize)
        h, w = pipeline.size
        tokens = loaded.tokenizer(["a photo of a cat"])
        with _unfused_attention(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # attention's shape checks: constant here
            torch.onnx.export(ImageTower(loaded.model, pipeline.mean, pipeline.std).eval(),
                              (torch.zeros(1, h, w, 3, dtype=torch.uint8),), str(folder / "image.onnx"),
                              input_names=["pixels"], dynamic_axes={"pixels": {0: "batch"}}, dynamo=False)
            torch.onnx.export(TextTower(loaded.model).eval(), (tokens,), str(folder / "text.onnx"),
                              input_names=["tokens"], dynamic_axes={"tokens": {0: "batch"}}, dynamo=False)
        for name in ("image", "text"):
            quantize_dynamic(folder / f"{name}.onnx", folder / f"{name}.int8.onnx", weight_type=QuantType.QInt8)
        for precision, suffix in (("fp32", ".onnx"), ("int8", ".int8.onnx")):
            encoder = OnnxEncoder(loaded.entry, folder / f"image{suffix}", folder / f"text{suffix}", threads, tokenize)
            parity = Parity.between(expected, (encoder.encode_pixels(pixels), encoder.encode_texts(texts)))
            key = f"onnxruntime {precision}"
            rows[key] = {**_throughputs(_encoder_slots({key: encoder}, batch), seconds)[key],
                         "parity": parity.to_json()}
            del encoder
            gc.collect()
    return rows
