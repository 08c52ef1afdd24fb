"""Building and evaluating the bundled demo model (``models/demo/``): a small CLIP that knows coloured shapes.

:func:`build_demo` trains it from random weights on :mod:`clip_runner.synthetic_images`;
:func:`evaluate` is its report card on a held-out generated set (docs/demo-and-finetuning.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .. import synthetic_images
from ..preprocessing.images import PREPROCESS_DEFAULTS, PixelPipeline
from ..runtimes.encoder import Encoder, encode_in_chunks
from ..runtimes.torch_encoder import TorchEncoder
from ..serving.scoring import average_prompts, prompts_for
from ..settings import DEFAULT_THRESHOLD
from ..store.entries import CONFIG_FILE, WEIGHTS_FILE, MetadataRecord, open_entry
from ..store.registration import CARD_FILE, DEMO_DIR, DEMO_STORE_NAME
from ..store.weights import LoadedModel, load_entry
from .calibration import build_pairs, calibrate, encode_texts, f1_at, fit_threshold, register_calibrated
from .finetune import TrainConfig, finetune

logger = logging.getLogger(__name__)

MAX_WEIGHTS_BYTES = 15_000_000

# A small convolutional image tower (timm's LCNet-0.5, random init): trained from scratch on
# this data, ViTs and ConvNeXt of the same cost learned colour but stayed at chance on shape,
# while LCNet learned shape fastest per CPU second. 224 px input and OpenAI's mean/std, exactly
# as ViT-B-32 is fed, so the serving path is the same.
DEMO_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"timm_model_name": "lcnet_050", "timm_model_pretrained": False,
                   "timm_pool": "avg", "timm_proj": "", "image_size": 224},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}
DEMO_PREPROCESS_CFG: dict[str, Any] = dict(PREPROCESS_DEFAULTS)  # open_clip's defaults: ViT-B-32's


@dataclasses.dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model; ``build_demo`` is a function of it."""

    train_images: int = 16_000
    calibration_images: int = 1_000
    eval_images: int = 1_000
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    threads: int = 2  # float reduction order depends on it: fixed so a rebuild is bit-identical


EVAL_SEED = 1_000_003  # far from the training seeds, so no image is shared


@dataclasses.dataclass(frozen=True)
class Evaluation(MetadataRecord):
    """Figures of one evaluation run."""

    DIGITS: ClassVar[int] = 4

    images: int
    zero_shot_top1: float
    colour_accuracy: float
    shape_accuracy: float
    mismatch_f1: float
    mismatch_threshold: float
    threshold_source: str
    best_f1: float
    best_threshold: float
    auc: float


def evaluate(model: LoadedModel | Encoder, count: int = 1000, seed: int = EVAL_SEED) -> Evaluation:
    """Zero-shot accuracy and mismatch F1 on ``count`` generated images of a torch model (in fp32) or any encoder."""
    if count < 2:
        raise ValueError("evaluation needs at least 2 images")
    encoder = model if isinstance(model, Encoder) else TorchEncoder(model, precision="fp32")
    entry = encoder.entry
    pipeline = PixelPipeline(entry.preprocess_cfg)
    scenes, pixels = zip(*((scene, pipeline(image)) for scene, image in synthetic_images.generate(count, seed)),
                         strict=True)
    images = encode_in_chunks(encoder.encode_pixels, np.stack(pixels))
    templates = list(entry.metadata.get("prompt_templates") or synthetic_images.PROMPT_TEMPLATES)
    labels = list(synthetic_images.CATEGORIES)
    label_rows = average_prompts(encode_texts(encoder, prompts_for(labels, templates)), len(labels))
    predicted = [labels[i].split() for i in (images @ label_rows.T).argmax(axis=1)]
    truth = [scene.category.split() for scene in scenes]  # labels are "colour shape"
    hits = [(p == t, p[0] == t[0], p[1] == t[1]) for p, t in zip(predicted, truth, strict=True)]
    top1, colour, shape = (float(x) for x in np.mean(hits, axis=0))

    image_rows, texts, is_mismatch = build_pairs([scene.caption for scene in scenes], None, seed)
    sims = np.einsum("nd,nd->n", images[image_rows], encode_texts(encoder, texts))
    calibrated = entry.metadata.get("calibrated_threshold")
    threshold = float(calibrated) if calibrated is not None else DEFAULT_THRESHOLD
    best = fit_threshold(sims, is_mismatch)
    return Evaluation(
        images=count, zero_shot_top1=top1, colour_accuracy=colour, shape_accuracy=shape,
        mismatch_f1=f1_at(sims, is_mismatch, threshold), mismatch_threshold=threshold,
        threshold_source="model" if calibrated is not None else "default",
        best_f1=best.f1, best_threshold=best.threshold, auc=best.auc,
    )


def evaluate_tag(tag: str, count: int = 1000, seed: int = EVAL_SEED) -> Evaluation:
    """Load a store entry on CPU and evaluate it."""
    return evaluate(load_entry(tag, torch.device("cpu")), count, seed)


def format_report(tag: str, result: Evaluation) -> str:
    """Human-readable evaluation summary."""
    return "\n".join([
        f"model: {tag}",
        f"held-out images: {result.images}",
        f"zero-shot top-1 over {len(synthetic_images.CATEGORIES)} labels: {result.zero_shot_top1:.2%} "
        f"(colour {result.colour_accuracy:.2%}, shape {result.shape_accuracy:.2%})",
        f"mismatch F1 at the served threshold {result.mismatch_threshold:.4f} ({result.threshold_source}): "
        f"{result.mismatch_f1:.4f}",
        f"best mismatch F1 on this set: {result.best_f1:.4f} at {result.best_threshold:.4f}; AUC {result.auc:.4f}",
    ])


@dataclasses.dataclass
class DemoBuild:
    """Result of :func:`build_demo`."""

    tag: str
    folder: Path
    card: dict[str, Any]
    seconds: float


def build_demo(out_dir: Path = DEMO_DIR, recipe: DemoRecipe | None = None, *, progress: bool = True) -> DemoBuild:
    """Generate data, train from scratch, calibrate, evaluate (on images of other seeds) and write the bundle."""
    recipe = recipe or DemoRecipe()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="clip-demo-") as tmp:
            work = Path(tmp)
            train_csv = synthetic_images.write_dataset(work / "train", recipe.train_images, recipe.seed)
            calib_csv = synthetic_images.write_dataset(work / "calibration", recipe.calibration_images, recipe.seed + 1)
            model_config = work / "demo_model_config.json"
            model_config.write_text(json.dumps({"model_cfg": DEMO_MODEL_CFG, "preprocess_cfg": DEMO_PREPROCESS_CFG}))
            config = TrainConfig(batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                                 epochs=recipe.epochs, checkpoint_dir=work / "checkpoints", val_fraction=0.05,
                                 seed=recipe.seed, device="cpu", progress=progress, keep_checkpoints=1)
            labels = {"categories": list(synthetic_images.CATEGORIES),
                      "prompt_templates": list(synthetic_images.PROMPT_TEMPLATES)}
            trained = finetune(train_csv, config, model_config=model_config, name=DEMO_STORE_NAME, metadata=labels)
            assert trained.tag is not None
            calibration = calibrate(load_entry(trained.tag, torch.device("cpu")), calib_csv, seed=recipe.seed)
            tag = register_calibrated(trained.tag, calibration, {"calibration_images": recipe.calibration_images})
        result = evaluate(load_entry(tag, torch.device("cpu")), recipe.eval_images, EVAL_SEED)
        logger.info("\n%s", format_report(tag, result))
        seconds = time.perf_counter() - start
        card = _export(tag, out_dir, recipe, result.to_json(), trained.seconds, seconds)
        return DemoBuild(tag, out_dir, card, seconds)
    finally:
        torch.set_num_threads(threads)


def _export(tag: str, out_dir: Path, recipe: DemoRecipe, evaluation: dict[str, Any], train_seconds: float,
            seconds: float) -> dict[str, Any]:
    """Copy the entry's weights and config to ``out_dir`` and write its card (``demo.json``); returns the card."""
    entry = open_entry(tag)
    size = (entry.path / WEIGHTS_FILE).stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"demo weights are {size / 1e6:.1f} MB, over the {MAX_WEIGHTS_BYTES / 1e6:.0f} MB budget")
    metadata, training = entry.metadata, entry.metadata.get("training", {})
    kept = ("categories", "prompt_templates", "calibrated_threshold", "calibration", "val_recall_at_1", "val_loss")
    card = {
        "name": DEMO_STORE_NAME,
        "description": "Small CLIP trained from scratch on generated images of coloured shapes; "
                       "it knows the 64 'colour shape' labels and nothing else.",
        "recipe": dataclasses.asdict(recipe),
        "evaluation": evaluation,
        "training_seconds": round(train_seconds, 1),
        "build_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
        "metadata": {**{k: metadata[k] for k in kept if k in metadata},
                     "training": {"history": training.get("history"), "seconds": training.get("seconds"),
                                  # counts only: the data lived in a temporary folder
                                  "data": {k: v for k, v in training.get("data", {}).items() if k != "csv"}},
                     "evaluation": evaluation},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(entry.path / name, out_dir / name)
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card
