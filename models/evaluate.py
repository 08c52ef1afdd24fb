"""Evaluation of a model on a held-out generated shapes set (the demo model's report card).

Two figures, both on images the model never saw (a seed of their own):

* **zero-shot top-1**: each image is classified over the full label set
  (:data:`models.demo_data.CATEGORIES`, e.g. "red circle") with the prompt templates averaged,
  exactly as ``/classify`` does; accuracy is the share whose top label is the image's own;
* **mismatch F1**: every image is paired with its caption (a match) and with a shuffled caption
  from another image (a mismatch); a pair is flagged when its similarity is below the
  threshold. F1 of the mismatch class is reported at the threshold the service would use (the
  model's calibrated one, else the default) and at the best threshold for this set, with AUC.

    python -m models evaluate [TAG] --count 1000 --seed 1000
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from clip_runner.calibration import build_pairs, encode_texts, fit_threshold
from clip_runner.encoder import BatchEncoder, encode_in_chunks
from clip_runner.loading import LoadedModel
from clip_runner.preprocess import PixelPipeline
from clip_runner.scoring import average_prompts, prompts_for
from clip_runner.settings import DEFAULT_THRESHOLD

from . import demo_data

EVAL_SEED = 1_000_003  # far from the training seeds, so no image is shared


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Figures of one evaluation run."""

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

    def to_json(self) -> dict[str, Any]:
        """Rounded figures, for metadata and reports."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def _f1_at(similarities: np.ndarray, is_mismatch: np.ndarray, threshold: float) -> float:
    flagged = similarities < threshold
    tp = int(np.sum(flagged & is_mismatch))
    denominator = int(flagged.sum()) + int(is_mismatch.sum())
    return 2 * tp / denominator if denominator else 0.0


def evaluate(loaded: LoadedModel, count: int = 1000, seed: int = EVAL_SEED) -> Evaluation:
    """Zero-shot accuracy and mismatch F1 of ``loaded`` on ``count`` generated images."""
    if count < 2:
        raise ValueError("evaluation needs at least 2 images")
    pipeline = PixelPipeline(loaded.entry.preprocess_cfg)
    scenes, pixels = [], []
    for scene, image in demo_data.generate(count, seed):
        scenes.append(scene)
        pixels.append(pipeline(image))
    encoder = BatchEncoder(loaded, precision="fp32")
    images = encode_in_chunks(encoder.encode_pixels, np.stack(pixels))
    templates = list(loaded.entry.metadata.get("prompt_templates") or demo_data.PROMPT_TEMPLATES)
    labels = list(demo_data.CATEGORIES)
    label_rows = average_prompts(encode_texts(encoder, prompts_for(labels, templates)), len(labels))
    predicted = [labels[i] for i in (images @ label_rows.T).argmax(axis=1)]
    truth = [scene.category for scene in scenes]
    top1 = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    colour = float(np.mean([p.split()[0] == t.split()[0] for p, t in zip(predicted, truth, strict=True)]))
    shape = float(np.mean([p.split()[1] == t.split()[1] for p, t in zip(predicted, truth, strict=True)]))

    image_rows, texts, is_mismatch = build_pairs([scene.caption for scene in scenes], None, seed)
    sims = np.einsum("nd,nd->n", images[image_rows], encode_texts(encoder, texts))
    calibrated = loaded.entry.metadata.get("calibrated_threshold")
    threshold = float(calibrated) if calibrated is not None else DEFAULT_THRESHOLD
    best = fit_threshold(sims, is_mismatch)
    return Evaluation(
        images=count, zero_shot_top1=top1, colour_accuracy=colour, shape_accuracy=shape,
        mismatch_f1=_f1_at(sims, is_mismatch, threshold), mismatch_threshold=threshold,
        threshold_source="model" if calibrated is not None else "default",
        best_f1=best.f1, best_threshold=best.threshold, auc=best.auc,
    )


def evaluate_tag(tag: str, count: int = 1000, seed: int = EVAL_SEED) -> Evaluation:
    """Load a store entry on CPU and evaluate it."""
    from clip_runner.loading import load_entry

    return evaluate(load_entry(tag, torch.device("cpu")), count, seed)


def format_report(tag: str, result: Evaluation) -> str:
    """Human-readable evaluation summary."""
    return "\n".join([
        f"model: {tag}",
        f"held-out images: {result.images}",
        f"zero-shot top-1 over {len(demo_data.CATEGORIES)} labels: {result.zero_shot_top1:.2%} "
        f"(colour {result.colour_accuracy:.2%}, shape {result.shape_accuracy:.2%})",
        f"mismatch F1 at the served threshold {result.mismatch_threshold:.4f} ({result.threshold_source}): "
        f"{result.mismatch_f1:.4f}",
        f"best mismatch F1 on this set: {result.best_f1:.4f} at {result.best_threshold:.4f}; AUC {result.auc:.4f}",
    ])
