"""Scores built on unit embeddings: cosine similarity, softmax, mismatch, zero-shot ranking, and
the default zero-shot label set (product categories) with its prompt templates."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..runtimes.encoder import unit_rows
from ..settings import DEFAULT_THRESHOLD, ClipSettings

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "shoes", "sneakers", "boots", "sandals", "high heels",
    "shirt", "t-shirt", "blouse", "dress", "skirt", "pants", "jeans", "shorts",
    "jacket", "coat", "sweater", "hoodie", "suit", "swimsuit", "socks",
    "handbag", "backpack", "purse", "wallet", "suitcase", "belt",
    "watch", "sunglasses", "jewelry", "necklace", "ring", "earrings", "hat", "scarf", "gloves",
    "smartphone", "laptop", "headphones", "camera", "television",
    "sofa", "chair", "table", "bed", "lamp",
    "toy", "book", "bicycle", "perfume", "cosmetics",
)

# Averaging several phrasings is the standard CLIP zero-shot recipe; it is more robust than
# the bare label. A model may carry its own templates in its store metadata.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a product photo of {}.",
    "a close-up photo of {}.",
    "an image of {}.",
)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The mismatch threshold in force and where it came from (env, model or default)."""

    value: float
    source: str


def resolve_threshold(settings: ClipSettings, metadata: Mapping[str, Any]) -> Threshold:
    """``CLIP_SIMILARITY_THRESHOLD`` wins, then a threshold calibrated into the model, then 0.25."""
    if settings.similarity_threshold is not None:
        return Threshold(float(settings.similarity_threshold), "env")
    calibrated = metadata.get("calibrated_threshold")
    if calibrated is not None:
        return Threshold(float(calibrated), "model")
    return Threshold(DEFAULT_THRESHOLD, "default")


def cosine(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine similarity of one unit vector (D,) with unit rows (N, D) → (N,)."""
    return np.asarray(rows, dtype=np.float32) @ np.asarray(query, dtype=np.float32)


def softmax(similarities: np.ndarray, logit_scale: float) -> np.ndarray:
    """CLIP's probabilities over candidates: softmax(logit_scale · cosine)."""
    logits = np.asarray(similarities, dtype=np.float64) * float(logit_scale)
    logits -= logits.max()
    exp = np.exp(logits)
    return (exp / exp.sum()).astype(np.float32)


def similarity_scores(image: np.ndarray, texts: Sequence[str], text_rows: np.ndarray,
                      logit_scale: float) -> list[dict[str, Any]]:
    """One ``{"text", "similarity", "probability"}`` per text, in the order given."""
    sims = cosine(image, text_rows)
    return [{"text": text, "similarity": float(s), "probability": float(p)}
            for text, s, p in zip(texts, sims, softmax(sims, logit_scale), strict=True)]


def analyze_pair(similarity: float, threshold: Threshold) -> dict[str, Any]:
    """Mismatch decision for one image–text pair: a mismatch when similarity < threshold."""
    return {"similarity": float(similarity), "is_mismatch": bool(similarity < threshold.value),
            "threshold": threshold.value, "threshold_source": threshold.source,
            "margin": float(similarity - threshold.value)}


def rank_labels(image: np.ndarray, labels: Sequence[str], label_rows: np.ndarray, logit_scale: float,
                top_k: int) -> list[dict[str, Any]]:
    """Labels ranked by probability: ``[{"category", "probability", "similarity"}]``, top_k long."""
    sims = cosine(image, label_rows)
    probs = softmax(sims, logit_scale)
    order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
    return [{"category": labels[i], "probability": float(probs[i]), "similarity": float(sims[i])} for i in order]


def prompts_for(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template applied to every label, label-major."""
    return [template.format(label) for label in labels for template in templates]


def average_prompts(rows: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels·T, D) prompt embeddings → (n_labels, D) unit label embeddings."""
    return unit_rows(np.asarray(rows, dtype=np.float32).reshape(n_labels, -1, rows.shape[-1]).mean(axis=1))


EncodeTexts = Callable[[list[str]], Awaitable[np.ndarray]]


class LabelCache:
    """Label-set embeddings cached across requests (LRU over label sets, the default one included)."""

    def __init__(self, templates: Sequence[str], max_sets: int = 64) -> None:
        self.templates = tuple(templates)
        self.max_sets = max_sets
        self._cache: OrderedDict[tuple[str, ...], np.ndarray] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, labels: Sequence[str], encode: EncodeTexts) -> np.ndarray:
        """Unit embeddings (len(labels), D) for a label set, computing them on a miss."""
        key = tuple(labels)
        if (hit := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return hit
        async with self._lock:  # one computation per label set, even under concurrency
            if (hit := self._cache.get(key)) is not None:
                return hit
            rows = await encode(prompts_for(key, self.templates))
            value = average_prompts(rows, len(key))
            self._cache[key] = value
            while len(self._cache) > self.max_sets:
                self._cache.popitem(last=False)
            return value
