"""Making compiled entries: ``python -m models compile TAG --precision fp32|bf16|int8`` (README, "Compiled CPU
runtimes"). The towers are exported from torch in a child process (:mod:`.torch_export`) that ends before
quantizing begins, so torch and the fp32 model are never held beside it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import openvino as ov

from .. import synthetic_images
from ..errors import CompileRefused, InputError, ModelNotAvailable
from ..hardware import cpu_has_native_bf16
from ..preprocessing.images import PixelPipeline, decode_image
from ..runtimes.openvino_encoder import OpenVINOEncoder
from ..serving.scoring import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
from ..settings import available_cpus
from ..store.entries import (
    COMPILED_FILES,
    CONFIG_FILE,
    OPENVINO,
    PARITY_BAR,
    PRECISIONS,
    TOKENIZER_FILE,
    Parity,
    StoreEntry,
    open_entry,
    sha256_file,
)

logger = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset size: more adds time, not accuracy
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PARITY_SEED, _CALIBRATION_SEED = 7_000_001, 7_100_003  # apart from each other and the demo's seeds
TOWERS = ("image", "text")


def compile_entries(tag: str, precisions: Sequence[str], calibration: Path | None = None, *, force: bool = False,
                    threads: int | None = None) -> dict[str, str]:
    """Compile store entry ``tag`` for OpenVINO at each of ``precisions``, all from one export; returns precision
    → new tag. A precision whose parity falls under :data:`PARITY_BAR` writes nothing (unless ``force``), nor does
    bf16 where the CPU only emulates it; when none passes, a refusal is raised. ``calibration``: int8's images."""
    if unknown := set(precisions) - set(PRECISIONS):
        raise ValueError(f"precision must be one of {PRECISIONS}, not {sorted(unknown)}")
    emulated_bf16 = "bf16" in precisions and not cpu_has_native_bf16()  # its parity cannot be measured here
    refused = [CompileRefused("bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); compile it on one, or ask "
                              "for fp32 or int8")] if emulated_bf16 else []
    if not (measurable := [precision for precision in precisions if not (emulated_bf16 and precision == "bf16")]):
        raise refused[0]
    parent = open_entry(tag)
    if parent.runtime != "torch":
        raise ModelNotAvailable(f"{parent.tag} is already compiled; compile its parent {parent.labels.get('parent')}")
    start, threads = time.perf_counter(), threads or available_cpus()
    pipeline = PixelPipeline(parent.preprocess_cfg)
    probe = parity_set(pipeline)
    images = calibration_images(pipeline, calibration) if "int8" in precisions else []
    tags: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="clip-compile-") as tmp:
        traced = Path(tmp, "traced")
        traced.mkdir()
        answer = _export_in_a_child(parent.tag, traced, threads, *probe, calibration_texts() if images else [])
        export = _Export(parent, traced, answer, probe, images, calibration, threads, time.perf_counter() - start)
        for precision in measurable:
            try:
                tags[precision] = _compile(export, precision, Path(tmp, precision), force)
            except CompileRefused as exc:
                refused.append(exc)
    for exc in refused if len(precisions) > 1 else ():
        logger.warning("%s", exc)
    if not tags:
        raise refused[0]
    return tags


@dataclasses.dataclass
class _Export:
    """A torch entry's towers exported once (:mod:`.torch_export`), with what each precision's compile reads."""

    parent: StoreEntry
    folder: Path
    answer: dict[str, Any]  # the export child's
    probe: tuple[np.ndarray, list[str]]  # the parity set
    images: list[np.ndarray]  # int8's calibration pixels
    calibration: Path | None
    threads: int
    seconds: float  # the export's


def _compile(export: _Export, precision: str, folder: Path, force: bool) -> str:
    """One precision's compiled entry from ``export``, registered when its parity meets the bar."""
    start, parent, traced, exported = time.perf_counter(), export.parent, export.folder, export.answer
    images = export.images if precision == "int8" else []
    folder.mkdir()
    settings: dict[str, Any] = {"precision": precision, "dynamic_batch": True}
    for name in TOWERS:  # one tower in memory at a time
        tower = ov.Core().read_model(str(traced / f"{name}.xml"))
        if images:
            tower = _quantize(name, tower, images if name == "image" else list(exported["calibration_tokens"]))
        ov.save_model(tower, str(folder / f"{name}.xml"), compress_to_fp16=precision == "bf16")
        del tower
    if images:
        settings["calibration"] = {
            "tool": f"nncf {importlib.metadata.version('nncf')}", "images": len(images),
            "captions": len(exported["calibration_tokens"]),
            "image_source": str(export.calibration) if export.calibration else "default set (generated)",
            "model_type": "transformer", "overflow_fix": "enable"}
    for name in (CONFIG_FILE, TOKENIZER_FILE):
        if (traced / name).is_file():
            shutil.copy(traced / name, folder / name)
    for name in parent.metadata.get("tokenizer_sha256", {}):  # a Hugging Face tokenizer, kept as it is
        shutil.copy(parent.path / name, folder / name)
    if not exported["tokenizer_written"] and not parent.hf_tokenizer:
        logger.warning("%s's tokenizer is not plain CLIP BPE: serving this entry will import torch "
                       "for open_clip's tokenizer", parent.tag)
    draft = dataclasses.replace(parent, tag=f"{parent.tag} ({precision}, compiling)", path=folder,
                                labels={"runtime": OPENVINO, "precision": precision})
    candidate = OpenVINOEncoder(draft, export.threads, verify=False)
    pixels, texts = export.probe
    parity = Parity.between((exported["expected_images"], exported["expected_texts"]),
                            (candidate.encode_pixels(pixels), candidate.encode_texts(texts)))
    del candidate
    logger.info("parity of %s %s to torch fp32: %s", parent.tag, precision, parity.to_json())
    if parity.worst_mean < PARITY_BAR and not force:
        raise CompileRefused(
            f"{precision} compile of {parent.tag} refused: mean cosine to torch fp32 is {parity.image_mean:.4f} "
            f"(image) and {parity.text_mean:.4f} (text), under the bar of {PARITY_BAR}, so nothing was written; "
            "calibrate on your own images (--calibration DIR)")
    return _register(parent, precision, folder, {
        "runtime_version": ov.get_version(), "compile": settings, "parity": parity.to_json(),
        "parity_set": {"images": len(pixels), "texts": len(texts)}, "compile_peak_rss_mb": _peak_rss_mb(),
        "compile_seconds": round(export.seconds + time.perf_counter() - start, 1)})


def _peak_rss_mb() -> float:
    """The larger peak RSS of this compile and its export child (what a first start must fit)."""
    return round(max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                                                                    resource.RUSAGE_CHILDREN)) / 1024, 1)


def _export_in_a_child(*args: Any) -> dict[str, Any]:
    """:func:`~clip_runner.compile.torch_export.export` in a fresh process, which ends (freeing torch and
    the fp32 model) before this one goes on. Its error is raised here; a child that dies is a clear error."""
    context = multiprocessing.get_context("spawn")
    answers, answer_to = context.Pipe(duplex=False)
    child = context.Process(target=_export, args=(answer_to, *args), name="clip-export")
    child.start()
    answer_to.close()  # the child holds the only writer: its death ends the pipe
    try:
        answer = answers.recv()
    except EOFError:
        child.join()
        raise CompileRefused(f"the export of {args[0]} stopped without an answer (exit code {child.exitcode}; "
                             "-9 is a kill, often for memory), so nothing was written; see the log above") from None
    finally:
        # Killed, not left to exit: with torch loaded a clean interpreter exit takes seconds.
        child.kill()
        child.join()
    if isinstance(answer, BaseException):
        raise answer
    return answer


def _export(answer_to: Connection, *args: Any) -> None:
    from .torch_export import export  # torch boundary: runs in the export child only

    try:
        answer_to.send(export(*args))
    except Exception as exc:  # the parent raises it
        answer_to.send(exc)


def _register(parent: StoreEntry, precision: str, folder: Path, facts: dict[str, Any]) -> str:
    labels = {**parent.labels, "source": "compiled", "runtime": OPENVINO, "precision": precision, "parent": parent.tag}
    metadata = {k: v for k, v in parent.metadata.items() if not k.startswith("weights_")}
    tokenizer = dict.fromkeys((TOKENIZER_FILE, *parent.metadata.get("tokenizer_sha256", {})))
    files = [name for name in (*COMPILED_FILES, *tokenizer) if (folder / name).is_file()]
    metadata.update(facts, files_sha256={name: sha256_file(folder / name) for name in files})
    entry_name = f"{parent.tag.split(':')[0]}-{OPENVINO}-{precision}"  # e.g. clip-vit-b-32-openai-openvino-int8
    with bentoml.models.create(entry_name, labels=labels, metadata=metadata) as ref:
        for name in (CONFIG_FILE, *files):
            shutil.copy(folder / name, Path(ref.path) / name)
    logger.info("registered %s (compiled in %.0f s, peak RSS %.0f MB)", ref.tag, facts["compile_seconds"],
                facts["compile_peak_rss_mb"])
    return str(ref.tag)


def _quantize(name: str, tower: Any, samples: list[np.ndarray]) -> Any:
    """NNCF post-training int8 quantization of one tower on its calibration samples (one per call)."""
    import nncf  # loads torch too (0.5 GB) when installed: not before the export child has ended

    logger.info("calibrating the int8 %s tower on %d samples", name, len(samples))
    # 7-bit weights in every layer: CPUs without VNNI saturate 8-bit dot products (the tiny test model's int8 fell
    # under the parity bar on AVX2), and an entry compiled on one CPU may serve on another (docs/performance.md).
    return nncf.quantize(tower, nncf.Dataset([sample[None] for sample in samples]), subset_size=len(samples),
                         model_type=nncf.ModelType.TRANSFORMER,
                         advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE))


def calibration_images(pipeline: PixelPipeline, folder: Path | None = None) -> list[np.ndarray]:
    """Model-input pixels of up to :data:`MAX_CALIBRATION_IMAGES` images from ``folder``; without one, 64
    photo-like images and 64 shape scenes, generated (your own images calibrate int8 better)."""
    if folder is None:
        return list(_generated_pixels(pipeline, 64, _CALIBRATION_SEED))
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
    scenes = [scene.caption for scene, _ in synthetic_images.generate(28, _CALIBRATION_SEED)]
    return prompts + scenes


def parity_set(pipeline: PixelPipeline) -> tuple[np.ndarray, list[str]]:
    """The fixed images (16 photo-like, 16 shapes) and 32 captions parity is measured on."""
    scenes = [scene.caption for scene, _ in synthetic_images.generate(16, _PARITY_SEED)]
    prompts = [f"a photo of {label}." for label in DEFAULT_CATEGORIES[::3][:16]]
    return _generated_pixels(pipeline, 16, _PARITY_SEED), scenes + prompts


def _generated_pixels(pipeline: PixelPipeline, count: int, seed: int) -> np.ndarray:
    """Model-input pixels of ``count`` photo-like images, then ``count`` shape scenes, of ``seed``."""
    photos = [synthetic_images.photo_like(seed + i, (320, 240)) for i in range(count)]
    shapes = [image for _, image in synthetic_images.generate(count, seed)]
    return np.stack([pipeline(image) for image in photos + shapes])
