"""Making compiled entries: ``python -m models compile TAG --precision fp32|bf16|int8``.

The parent entry's towers are traced from open_clip (torch) and converted to OpenVINO with a
dynamic batch dimension; the image graph takes the batcher's uint8 pixels, with open_clip's
scaling and normalisation compiled in. int8 is NNCF post-training quantization, calibrated on a
folder of the user's images or on :func:`calibration_images`' default set. The new entry's
parity to the parent's torch fp32 output is measured on :func:`parity_set` before anything is
written, and a compile under :data:`~clip_runner.store.entries.PARITY_BAR` refuses to register
unless forced. The entry also gets the text tokenizer as a ``tokenizer.json`` (run by
:class:`~clip_runner.preprocessing.clip_tokenizer.ClipTokenizer`), so serving it needs no torch.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bentoml
import nncf
import numpy as np
import openvino as ov
import torch
from open_clip.tokenizer import SimpleTokenizer
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from .. import synthetic_images
from ..errors import CompileRefused, InputError, ModelNotAvailable
from ..preprocessing.clip_tokenizer import PATTERN, SPECIAL_TOKENS
from ..preprocessing.images import PixelPipeline, decode_image
from ..runtimes.openvino_encoder import OpenVINOEncoder
from ..runtimes.torch_encoder import TorchEncoder
from ..serving.scoring import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
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
from ..store.weights import load_entry

logger = logging.getLogger(__name__)

MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset size: more adds time, not accuracy
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_PARITY_SEED, _CALIBRATION_SEED = 7_000_001, 7_100_003  # apart from each other and the demo's seeds


class ImageTower(torch.nn.Module):
    """(N, H, W, 3) uint8 → image features: ToTensor + Normalize compiled into the graph."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = (pixels.float() / 255.0 - self.mean) / self.std
        return self.model.encode_image(batch.permute(0, 3, 1, 2))


class TextTower(torch.nn.Module):
    """(N, context_length) int64 tokens → text features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def compiled_name(parent: StoreEntry, precision: str) -> str:
    """Store name of ``parent`` compiled at ``precision``, e.g. ``clip-vit-b-32-openai-openvino-int8``."""
    return f"{parent.tag.split(':')[0]}-{OPENVINO}-{precision}"


def compile_entry(tag: str, precision: str, calibration: Path | None = None, *, force: bool = False,
                  threads: int | None = None) -> str:
    """Compile store entry ``tag`` for OpenVINO at ``precision``; returns the new entry's tag.

    Nothing is written when the parity falls under :data:`PARITY_BAR` (unless ``force``).
    ``calibration``: a folder of images for int8 (default: :func:`calibration_images`).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    parent = open_entry(tag)
    if parent.runtime != "torch":
        raise ModelNotAvailable(f"{parent.tag} is already compiled; compile its parent {parent.labels.get('parent')}")
    start = time.perf_counter()
    loaded = load_entry(parent, torch.device("cpu"))
    pipeline = PixelPipeline(parent.preprocess_cfg)
    reference = TorchEncoder(loaded, "fp32")
    probe_pixels, probe_texts = parity_set(pipeline)
    expected = (reference.encode_pixels(probe_pixels), reference.encode_texts(probe_texts))
    logger.info("converting %s to OpenVINO (%s)", parent.tag, precision)
    tokenizer = loaded.tokenizer
    towers = _convert(loaded.model, tokenizer, pipeline)
    settings: dict[str, Any] = {"precision": precision, "dynamic_batch": True}
    if precision == "int8":
        towers, settings["calibration"] = _quantize(towers, tokenizer, pipeline, calibration)
    del loaded, reference
    with tempfile.TemporaryDirectory(prefix="clip-compile-") as tmp:
        folder = Path(tmp)
        for name, tower in towers.items():
            ov.save_model(tower, str(folder / f"{name}.xml"), compress_to_fp16=precision == "bf16")
        shutil.copy(parent.path / CONFIG_FILE, folder / CONFIG_FILE)
        if not write_tokenizer(tokenizer, folder):
            logger.warning("%s's tokenizer is not plain CLIP BPE: serving this entry will import torch "
                           "for open_clip's tokenizer", parent.tag)
        draft = dataclasses.replace(parent, tag=f"{parent.tag} ({precision}, compiling)", path=folder,
                                    labels={"runtime": OPENVINO, "precision": precision})
        candidate = OpenVINOEncoder(draft, threads or torch.get_num_threads(), verify=False)
        parity = Parity.between(expected, (candidate.encode_pixels(probe_pixels), candidate.encode_texts(probe_texts)))
        del candidate
        logger.info("parity of %s %s to torch fp32: %s", parent.tag, precision, parity.to_json())
        if parity.worst_mean < PARITY_BAR and not force:
            raise CompileRefused(
                f"{precision} compile of {parent.tag} refused: mean cosine to torch fp32 is {parity.image_mean:.4f} "
                f"(image) and {parity.text_mean:.4f} (text), under the bar of {PARITY_BAR}, so nothing was written; "
                "calibrate on your own images (--calibration DIR)")
        return _register(parent, precision, folder, {
            "runtime_version": ov.get_version(), "compile": settings, "parity": parity.to_json(),
            "parity_set": {"images": len(probe_pixels), "texts": len(probe_texts)},
            "compile_seconds": round(time.perf_counter() - start, 1)})


def write_tokenizer(tokenizer: Any, folder: Path) -> bool:
    """Write ``tokenizer.json`` for open_clip ``tokenizer`` into ``folder``; False (nothing written)
    when it is not the plain CLIP tokenizer that :class:`~clip_runner.preprocessing.clip_tokenizer.ClipTokenizer`
    reproduces."""
    if type(tokenizer) is not SimpleTokenizer or tokenizer.reduction_fn is not None or \
            tokenizer.clean_fn.__name__ != "_clean_lower":
        return False
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
    bpe = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    bpe.save(str(folder / TOKENIZER_FILE))
    return True


def _register(parent: StoreEntry, precision: str, folder: Path, facts: dict[str, Any]) -> str:
    labels = {**parent.labels, "source": "compiled", "runtime": OPENVINO, "precision": precision, "parent": parent.tag}
    metadata = {k: v for k, v in parent.metadata.items() if not k.startswith("weights_")}
    files = [name for name in (*COMPILED_FILES, TOKENIZER_FILE) if (folder / name).is_file()]
    metadata.update(facts, files_sha256={name: sha256_file(folder / name) for name in files})
    with bentoml.models.create(compiled_name(parent, precision), labels=labels, metadata=metadata) as ref:
        for name in (CONFIG_FILE, *files):
            shutil.copy(folder / name, Path(ref.path) / name)
    logger.info("registered %s", ref.tag)
    return str(ref.tag)


def _convert(model: torch.nn.Module, tokenizer: Any, pipeline: PixelPipeline) -> dict[str, Any]:
    """Both towers as OpenVINO models with a dynamic batch dimension."""
    h, w = pipeline.size
    tokens = tokenizer(["a photo of a cat"])
    with torch.no_grad():
        image = ov.convert_model(ImageTower(model, pipeline.mean, pipeline.std).eval(),
                                 example_input=torch.zeros(1, h, w, 3, dtype=torch.uint8),
                                 input=[([-1, h, w, 3], ov.Type.u8)])
        text = ov.convert_model(TextTower(model).eval(), example_input=tokens,
                                input=[([-1, tokens.shape[1]], ov.Type.i64)])
    return {"image": image, "text": text}


def _quantize(towers: dict[str, Any], tokenizer: Any, pipeline: PixelPipeline,
              folder: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """NNCF post-training int8 quantization of both towers, on calibration images and captions."""
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
    (:mod:`clip_runner.synthetic_images`). Your own images calibrate int8 better than these.
    """
    if folder is None:
        photos = [synthetic_images.photo_like(_CALIBRATION_SEED + i, (320, 240)) for i in range(64)]
        shapes = [image for _, image in synthetic_images.generate(64, _CALIBRATION_SEED)]
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
    scenes = [scene.caption for scene, _ in synthetic_images.generate(28, _CALIBRATION_SEED)]
    return prompts + scenes


def parity_set(pipeline: PixelPipeline) -> tuple[np.ndarray, list[str]]:
    """The fixed images (16 photo-like, 16 shapes) and 32 captions parity is measured on."""
    photos = [synthetic_images.photo_like(_PARITY_SEED + i, (320, 240)) for i in range(16)]
    shapes = [image for _, image in synthetic_images.generate(16, _PARITY_SEED)]
    scenes = [scene.caption for scene, _ in synthetic_images.generate(16, _PARITY_SEED)]
    prompts = [f"a photo of {label}." for label in DEFAULT_CATEGORIES[::3][:16]]
    return np.stack([pipeline(image) for image in photos + shapes]), scenes + prompts
