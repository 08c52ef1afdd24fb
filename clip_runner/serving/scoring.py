"""Scores built on unit embeddings: cosine similarity, probabilities (softmax or sigmoid), mismatch,
zero-shot ranking, and the default zero-shot label set (product categories) with its prompt templates."""

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
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {}.", "a product photo of {}.", "a close-up photo of {}.",
                                      "an image of {}.")


SIGMOID_THRESHOLD = 0.5  # a sigmoid model's probability is calibrated per pair: below even odds is a mismatch


@dataclasses.dataclass(frozen=True)
class Scorer:
    """How a model's cosines become probabilities, by the loss it was trained with: CLIP's softmax over the
    candidates given (they sum to one), or SigLIP's sigmoid of each pair alone (they need not)."""

    family: str  # "softmax" or "sigmoid"
    logit_scale: float
    logit_bias: float = 0.0

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Scorer:
        """The scorer a store entry's metadata describes (entries that predate families are softmax CLIPs)."""
        return cls(metadata.get("family", "softmax"), float(metadata.get("logit_scale", 100.0)),
                   float(metadata.get("logit_bias", 0.0)))

    @property
    def sigmoid(self) -> bool:
        return self.family == "sigmoid"

    def probabilities(self, similarities: np.ndarray) -> np.ndarray:
        """Each candidate's probability of matching: softmax(scale · cos), or sigmoid(scale · cos + bias)."""
        logits = np.asarray(similarities, dtype=np.float64) * self.logit_scale
        if self.sigmoid:
            return (1.0 / (1.0 + np.exp(-(logits + self.logit_bias)))).astype(np.float32)
        exp = np.exp(logits - logits.max())
        return (exp / exp.sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The mismatch threshold in force and where it came from (env, model or default): a cosine for a
    softmax model, a probability for a sigmoid one."""

    value: float
    source: str


def resolve_threshold(settings: ClipSettings, metadata: Mapping[str, Any]) -> Threshold:
    """``CLIP_SIMILARITY_THRESHOLD`` wins, then a threshold calibrated into the model, then the family's default."""
    if settings.similarity_threshold is not None:
        return Threshold(float(settings.similarity_threshold), "env")
    if (calibrated := metadata.get("calibrated_threshold")) is not None:
        return Threshold(float(calibrated), "model")
    return Threshold(SIGMOID_THRESHOLD if Scorer.of(metadata).sigmoid else DEFAULT_THRESHOLD, "default")


def cosine(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine similarity of one unit vector (D,) with unit rows (N, D) → (N,)."""
    return np.asarray(rows, dtype=np.float32) @ np.asarray(query, dtype=np.float32)


def similarity_scores(image: np.ndarray, texts: Sequence[str], text_rows: np.ndarray,
                      scorer: Scorer) -> list[dict[str, Any]]:
    """One ``{"text", "similarity", "probability"}`` per text, in the order given."""
    sims = cosine(image, text_rows)
    return [{"text": text, "similarity": float(s), "probability": float(p)}
            for text, s, p in zip(texts, sims, scorer.probabilities(sims), strict=True)]


def analyze_pair(similarity: float, threshold: Threshold, scorer: Scorer) -> dict[str, Any]:
    """Mismatch decision for one image–text pair: a mismatch when its score is under the threshold (the
    cosine for a softmax model; the sigmoid probability, also answered, for a sigmoid one)."""
    score = {"similarity": float(similarity)}
    if scorer.sigmoid:
        score["probability"] = float(scorer.probabilities(np.array([similarity]))[0])
    value = score["probability" if scorer.sigmoid else "similarity"]
    return {**score, "is_mismatch": bool(value < threshold.value), "threshold": threshold.value,
            "threshold_source": threshold.source, "margin": float(value - threshold.value)}


def rank_labels(image: np.ndarray, labels: Sequence[str], label_rows: np.ndarray, scorer: Scorer,
                top_k: int) -> list[dict[str, Any]]:
    """Labels ranked by probability: ``[{"category", "probability", "similarity"}]``, top_k long."""
    sims = cosine(image, label_rows)
    probs = scorer.probabilities(sims)
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
