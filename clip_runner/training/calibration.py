"""Calibration of the mismatch threshold from labelled or shuffled image–caption pairs.

A pair is a *mismatch* when its score is below the threshold: its cosine similarity, or for a sigmoid
(SigLIP) model its sigmoid probability. Calibration treats **mismatch as the positive class**
(precision, recall and F1 are those of the mismatch class) and picks the threshold that maximises
that F1; AUC is the ROC AUC of ``-similarity`` as a mismatch score. With a ``label`` column (1 =
match, 0 = mismatch) the CSV's pairs are taken as labelled; without one every row is a match, and
each image also gets another row's caption, chosen by a seeded derangement, as a mismatch (one word
for word its own caption is dropped).

The functions down to :func:`fit_threshold` are pure (numpy in, numbers out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtimes.encoder import Encoder, encode_in_chunks
from ..runtimes.torch_encoder import TorchEncoder
from ..serving.scoring import Scorer
from ..store.entries import MetadataRecord, open_entry
from ..store.weights import LoadedModel, load_entry, save_entry
from .pairs import PairDataError, load_pairs

# Store metadata that save_entry recomputes for the new version.
_RECOMPUTED = ("weights_sha256", "weights_bytes", "tokenizer_sha256")


@dataclasses.dataclass(frozen=True)
class Calibration(MetadataRecord):
    """The F1-optimal mismatch threshold and how it scores (mismatch = positive class)."""

    threshold: float
    precision: float
    recall: float
    f1: float
    auc: float
    mismatches: int
    matches: int


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` that moves every element, uniformly drawn with ``seed``."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    rng = np.random.default_rng(seed)
    # Rejection: about e ≈ 2.7 draws on average, and every derangement is equally likely.
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the ``positive`` (True) class via the rank-sum statistic; ties count half."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: tied scores share their mean rank.
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_score(true_positives: Any, flagged: Any, positives: int) -> Any:
    """F1 of the mismatch class: 2·TP / (flagged + actual mismatches); numbers or arrays."""
    return 2 * true_positives / np.maximum(flagged + positives, 1)


def f1_at(similarities: np.ndarray, is_mismatch: np.ndarray, threshold: float) -> float:
    """Mismatch F1 when pairs under ``threshold`` are flagged."""
    flagged, positive = np.asarray(similarities) < threshold, np.asarray(is_mismatch, dtype=bool)
    return float(f1_score(int(np.sum(flagged & positive)), int(flagged.sum()), int(positive.sum())))


def fit_threshold(similarities: np.ndarray, is_mismatch: np.ndarray) -> Calibration:
    """The threshold maximising the mismatch class's F1, where mismatch = similarity < threshold. Candidates lie
    midway between consecutive distinct similarities (and just above the largest): the middle of the gap."""
    sims, positive = np.asarray(similarities, dtype=np.float64), np.asarray(is_mismatch, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == len(sims):
        raise ValueError("calibration needs both matching and mismatching pairs")
    values, inverse = np.unique(sims, return_inverse=True)
    # Flagging every pair with similarity ≤ values[k]: cumulative counts per distinct value.
    tp = np.cumsum(np.bincount(inverse, weights=positive, minlength=len(values)))
    flagged = np.cumsum(np.bincount(inverse, minlength=len(values)))
    f1 = f1_score(tp, flagged, n_pos)
    best = int(np.argmax(f1))
    upper = values[best + 1] if best + 1 < len(values) else values[best] + 1e-6
    return Calibration(threshold=float((values[best] + upper) / 2.0), precision=float(tp[best] / flagged[best]),
                       recall=float(tp[best] / n_pos), f1=float(f1[best]), auc=roc_auc(-sims, positive),
                       mismatches=n_pos, matches=len(sims) - n_pos)


def build_pairs(texts: Sequence[str], labels: Sequence[int | None] | None,
                seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(image row of each pair, its text, is-mismatch) from the CSV rows: as labelled, or a derangement's."""
    if labels is not None and all(label is not None for label in labels):
        return np.arange(len(texts)), list(texts), np.array([label == 0 for label in labels])
    perm = derangement(len(texts), seed)
    keep = [i for i in range(len(texts)) if texts[perm[i]] != texts[i]]
    image_rows = np.concatenate([np.arange(len(texts)), np.array(keep, dtype=int)])
    pair_texts = list(texts) + [texts[perm[i]] for i in keep]
    is_mismatch = np.concatenate([np.zeros(len(texts), bool), np.ones(len(keep), bool)])
    return image_rows, pair_texts, is_mismatch


def encode_texts(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """Unit text embeddings, each distinct text encoded once."""
    distinct, inverse = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    return encode_in_chunks(encoder.encode_texts, distinct.tolist())[inverse]


def calibrate(loaded: LoadedModel, csv_path: str | Path, image_root: str | Path | None = None,
              *, seed: int = 0) -> Calibration:
    """Fit the mismatch threshold of a loaded model on the CSV's pairs: on the cosine for a softmax model,
    on the sigmoid probability (what ``/analyze`` then compares) for a sigmoid one."""
    pairs = load_pairs(csv_path, loaded.entry.preprocess_cfg, image_root, with_label=True, min_rows=2)
    image_rows, texts, is_mismatch = build_pairs([r.text for r in pairs.rows], [r.label for r in pairs.rows], seed)
    if is_mismatch.all() or not is_mismatch.any():
        raise PairDataError(f"{csv_path}: calibration needs both matching and mismatching pairs")
    encoder = TorchEncoder(loaded, precision="fp32")
    images = encode_in_chunks(lambda rows: encoder.encode_pixels(pairs.batch_pixels(rows)), range(len(pairs.rows)))
    cosines = np.einsum("nd,nd->n", images[image_rows], encode_texts(encoder, texts))
    scorer = Scorer.of(loaded.entry.metadata)
    return fit_threshold(scorer.probabilities(cosines) if scorer.sigmoid else cosines, is_mismatch)


def register_calibrated(tag: str, calibration: Calibration, details: dict[str, Any] | None = None) -> str:
    """Store the same weights as a new version of ``tag``'s model with the calibrated threshold."""
    entry = open_entry(tag)
    loaded = load_entry(entry, torch.device("cpu"))
    metadata = {k: v for k, v in entry.metadata.items() if k not in _RECOMPUTED}
    metadata["calibrated_threshold"] = calibration.threshold
    metadata["calibration"] = {**calibration.to_json(), "calibrated_from": entry.tag, **(details or {})}
    return save_entry(loaded.model, entry.model_cfg, entry.preprocess_cfg, name=entry.tag.split(":")[0],
                      arch=entry.labels.get("arch", ""), pretrained=entry.labels.get("pretrained", ""),
                      source=entry.labels.get("source", "checkpoint"), extra_metadata=metadata,
                      tokenizer_dir=entry.path)
