"""Compiled models: both towers of a store entry as OpenVINO models, in fp32, bf16 or int8.

``python -m models compile TAG --precision int8`` converts the parent entry's image and text
towers (dynamic batch) into a new store entry, measures their parity against the parent's
torch fp32 output on a fixed set of images and captions, and registers the entry only when
the parity meets :data:`PARITY_BAR` (unless forced). :class:`CompiledEncoder` serves such an
entry with no torch forward pass: the image graph takes the batcher's uint8 pixels as they are
(scaling and normalisation are compiled into it); the text graph takes open_clip's tokens.

Precisions: ``fp32`` (inference in fp32), ``bf16`` (weights stored in fp16, inference in bf16
where the CPU has it), ``int8`` (NNCF post-training quantization, calibrated on a folder of
the user's images or on the default set of :func:`calibration_images`).

OpenVINO is an optional dependency (``pip install 'clip-service[openvino]'``); ONNX Runtime was
measured too and lost on every tower and precision (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import bentoml
import numpy as np
import torch

from . import demo_data
from .categories import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
from .encoder import BatchEncoder, Encoder, unit_rows
from .errors import InputError, ModelNotAvailable
from .images import PixelPipeline, decode_image
from .loading import load_entry
from .store import COMPILED_FILES, CONFIG_FILE, MetadataRecord, StoreEntry, open_entry, sha256_file, verify_files

logger = logging.getLogger(__name__)

RUNTIME = "openvino"
PRECISIONS = ("fp32", "bf16", "int8")
#: Least mean cosine, per tower, between a compiled entry's embeddings and its parent's torch
#: fp32 ones on the parity set: under it a compile refuses to register (unless forced).
PARITY_BAR = 0.99
INSTALL_HINT = "pip install 'clip-service[openvino]'"
MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset size: more adds time, not accuracy
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PARITY_SEED, _CALIBRATION_SEED = 7_000_001, 7_100_003  # apart from each other and the demo's seeds


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
        return min(self.image_mean, self.text_mean)


class CompiledEncoder(Encoder):
    """Serves a compiled entry: one OpenVINO infer request per tower, one batch at a time."""

    runtime: ClassVar[str] = RUNTIME

    def __init__(self, entry: StoreEntry, threads: int, *, verify: bool = True) -> None:
        """Compile ``entry``'s towers for this CPU with ``threads`` inference threads."""
        ov = import_openvino()
        import open_clip

        start = time.perf_counter()
        if verify:
            verify_files(entry)
        self.entry = entry
        self.precision = entry.labels.get("precision", "fp32")
        self.threads = threads
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
        core = ov.Core()
        try:
            self._image, self._text = (core.compile_model(str(entry.path / f"{tower}.xml"), "CPU", config)
                                       .create_infer_request() for tower in ("image", "text"))
        except RuntimeError as exc:
            raise ModelNotAvailable(f"store entry {entry.tag}: OpenVINO could not compile it: {exc}") from exc
        self.tokenizer = open_clip.get_tokenizer(entry.local_dir_name)
        self.load_seconds = time.perf_counter() - start
        logger.info("loaded %s (%s %s) in %.2fs", entry.tag, RUNTIME, self.precision, self.load_seconds)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, D) float32, unit rows."""
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) pixels, got shape {pixels.shape}")
        return unit_rows(self._image.infer([np.ascontiguousarray(pixels, dtype=np.uint8)])[0], len(pixels))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N texts → (N, D) float32, unit rows."""
        tokens = self.tokenizer(list(texts)).numpy()
        return unit_rows(self._text.infer([tokens])[0], len(texts))

    def describe(self) -> dict[str, Any]:
        return {"runtime": RUNTIME, "runtime_version": self.entry.metadata.get("runtime_version"),
                "device": "cpu", "device_name": "cpu", "precision": self.precision,
                "parent": self.entry.labels.get("parent"), "load_seconds": round(self.load_seconds, 3)}


class _ImageTower(torch.nn.Module):
    """(N, H, W, 3) uint8 → image features: ToTensor + Normalize compiled into the graph."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = (pixels.float() / 255.0 - self.mean) / self.std
        return self.model.encode_image(batch.permute(0, 3, 1, 2))


class _TextTower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def compiled_name(parent: StoreEntry, precision: str) -> str:
    """Store name of ``parent`` compiled at ``precision``, e.g. ``clip-vit-b-32-openai-openvino-int8``."""
    return f"{parent.tag.split(':')[0]}-{RUNTIME}-{precision}"


def find_compiled(parent_tag: str, precision: str) -> StoreEntry | None:
    """The newest compiled entry of ``parent_tag`` at ``precision`` in the store, or None."""
    from .store import list_entries

    for entry in list_entries():  # newest first
        labels = entry.labels
        if (labels.get("parent"), labels.get("runtime"), labels.get("precision")) == (parent_tag, RUNTIME, precision):
            return entry
    return None


def compile_entry(tag: str, precision: str, calibration: Path | None = None, *, force: bool = False,
                  threads: int | None = None) -> str:
    """Compile store entry ``tag`` for OpenVINO at ``precision``; returns the new entry's tag.

    Nothing is written when the parity falls under :data:`PARITY_BAR` (unless ``force``).
    ``calibration``: a folder of images for int8 (default: :func:`calibration_images`).
    """
    ov = import_openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    parent = open_entry(tag)
    if parent.runtime != "torch":
        raise ModelNotAvailable(f"{parent.tag} is already compiled; compile its parent {parent.labels.get('parent')}")
    start = time.perf_counter()
    loaded = load_entry(parent, torch.device("cpu"))
    pipeline = PixelPipeline(parent.preprocess_cfg)
    reference = BatchEncoder(loaded, "fp32")
    probe_pixels, probe_texts = parity_set(pipeline)
    expected = (reference.encode_pixels(probe_pixels), reference.encode_texts(probe_texts))
    logger.info("converting %s to OpenVINO (%s)", parent.tag, precision)
    towers = _convert(ov, loaded.model, loaded.tokenizer, pipeline)
    settings: dict[str, Any] = {"precision": precision, "dynamic_batch": True}
    if precision == "int8":
        towers, settings["calibration"] = _quantize(towers, loaded.tokenizer, pipeline, calibration)
    del loaded, reference
    with tempfile.TemporaryDirectory(prefix="clip-compile-") as tmp:
        folder = Path(tmp)
        for name, tower in towers.items():
            ov.save_model(tower, str(folder / f"{name}.xml"), compress_to_fp16=precision == "bf16")
        shutil.copy(parent.path / CONFIG_FILE, folder / CONFIG_FILE)
        draft = dataclasses.replace(parent, tag=f"{parent.tag} ({precision}, compiling)", path=folder,
                                    labels={"runtime": RUNTIME, "precision": precision})
        compiled = CompiledEncoder(draft, threads or torch.get_num_threads(), verify=False)
        parity = Parity.between(expected, (compiled.encode_pixels(probe_pixels), compiled.encode_texts(probe_texts)))
        del compiled
        logger.info("parity of %s %s to torch fp32: %s", parent.tag, precision, parity.to_json())
        if parity.worst_mean < PARITY_BAR and not force:
            raise CompileRefused(
                f"{precision} compile of {parent.tag} refused: mean cosine to torch fp32 is "
                f"{parity.image_mean:.4f} (image) and {parity.text_mean:.4f} (text), under the bar of "
                f"{PARITY_BAR}; nothing was written. Calibrate on your own images (--calibration DIR), "
                "choose another precision, or register it anyway with --force."
            )
        return _register(parent, precision, folder, {
            "runtime_version": ov.get_version(), "compile": settings, "parity": parity.to_json(),
            "parity_set": {"images": len(probe_pixels), "texts": len(probe_texts)},
            "compile_seconds": round(time.perf_counter() - start, 1)})


def _register(parent: StoreEntry, precision: str, folder: Path, facts: dict[str, Any]) -> str:
    labels = {**parent.labels, "source": "compiled", "runtime": RUNTIME, "precision": precision, "parent": parent.tag}
    metadata = {k: v for k, v in parent.metadata.items() if not k.startswith("weights_")}
    metadata.update(facts, files_sha256={name: sha256_file(folder / name) for name in COMPILED_FILES})
    with bentoml.models.create(compiled_name(parent, precision), labels=labels, metadata=metadata) as ref:
        for name in (CONFIG_FILE, *COMPILED_FILES):
            shutil.copy(folder / name, Path(ref.path) / name)
    logger.info("registered %s", ref.tag)
    return str(ref.tag)


def _convert(ov: Any, model: torch.nn.Module, tokenizer: Any, pipeline: PixelPipeline) -> dict[str, Any]:
    """Both towers as OpenVINO models with a dynamic batch dimension."""
    h, w = pipeline.size
    tokens = tokenizer(["a photo of a cat"])
    with torch.no_grad():
        image = ov.convert_model(_ImageTower(model, pipeline.mean, pipeline.std).eval(),
                                 example_input=torch.zeros(1, h, w, 3, dtype=torch.uint8),
                                 input=[([-1, h, w, 3], ov.Type.u8)])
        text = ov.convert_model(_TextTower(model).eval(), example_input=tokens,
                                input=[([-1, tokens.shape[1]], ov.Type.i64)])
    return {"image": image, "text": text}


def _quantize(towers: dict[str, Any], tokenizer: Any, pipeline: PixelPipeline,
              folder: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """NNCF post-training int8 quantization of both towers, on calibration images and captions."""
    try:
        import nncf
    except ImportError as exc:
        raise RuntimeMissing(f"int8 needs NNCF, not installed ({exc}); install it with {INSTALL_HINT}") from exc
    images = calibration_images(pipeline, folder)
    texts = calibration_texts()
    logger.info("calibrating int8 on %d images (%s) and %d captions", len(images), folder or "default set", len(texts))
    quantized = {}
    for name, samples in (("image", [p[None] for p in images]), ("text", [tokenizer([t]).numpy() for t in texts])):
        quantized[name] = nncf.quantize(towers[name], nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                                        subset_size=len(samples))
    settings = {"tool": f"nncf {nncf.__version__}", "images": len(images), "captions": len(texts),
                "image_source": str(folder) if folder else "default set (generated)", "model_type": "transformer"}
    return quantized, settings


def calibration_images(pipeline: PixelPipeline, folder: Path | None = None) -> list[np.ndarray]:
    """Model-input pixels of up to :data:`MAX_CALIBRATION_IMAGES` images from ``folder``.

    Without a folder, the default set: 64 photo-like images and 64 shape scenes, generated
    (:mod:`clip_runner.demo_data`). Your own images calibrate int8 better than these.
    """
    if folder is None:
        photos = [demo_data.photo_like(_CALIBRATION_SEED + i, (320, 240)) for i in range(64)]
        shapes = [image for _, image in demo_data.generate(64, _CALIBRATION_SEED)]
        return [pipeline(image) for image in photos + shapes]
    if not folder.is_dir():
        raise CompileRefused(f"--calibration {folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_CALIBRATION_IMAGES]
    pixels, skipped = [], 0
    for path in files:
        try:
            pixels.append(pipeline(decode_image(path.read_bytes(), max_bytes=1 << 30, max_pixels=200_000_000)))
        except (InputError, OSError):
            skipped += 1
    if skipped:
        logger.warning("calibration: skipped %d unreadable files of %d in %s", skipped, len(files), folder)
    if not pixels:
        raise CompileRefused(f"--calibration {folder} holds no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return pixels


def calibration_texts() -> list[str]:
    """Captions for int8 calibration: zero-shot prompts and generated scene captions."""
    prompts = [template.format(label) for label in DEFAULT_CATEGORIES for template in DEFAULT_TEMPLATES[:2]]
    scenes = [scene.caption for scene, _ in demo_data.generate(28, _CALIBRATION_SEED)]
    return prompts + scenes


def parity_set(pipeline: PixelPipeline) -> tuple[np.ndarray, list[str]]:
    """The fixed images (16 photo-like, 16 shapes) and 32 captions parity is measured on."""
    photos = [demo_data.photo_like(_PARITY_SEED + i, (320, 240)) for i in range(16)]
    shapes = [image for _, image in demo_data.generate(16, _PARITY_SEED)]
    scenes = [scene.caption for scene, _ in demo_data.generate(16, _PARITY_SEED)]
    prompts = [f"a photo of {label}." for label in DEFAULT_CATEGORIES[::3][:16]]
    return np.stack([pipeline(image) for image in photos + shapes]), scenes + prompts
