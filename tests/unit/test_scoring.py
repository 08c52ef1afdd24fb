"""Similarity, softmax and sigmoid probabilities, mismatch thresholds and the label-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from clip_runner.serving import scoring
from clip_runner.settings import ClipSettings


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_cosine_and_softmax() -> None:
    query = _unit([1, 0, 0])
    rows = _unit([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    sims = scoring.cosine(query, rows)
    np.testing.assert_allclose(sims, [1.0, 0.0, 2**-0.5], atol=1e-6)
    probs = scoring.Scorer("softmax", 100.0).probabilities(sims)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert probs.argmax() == 0 and probs[0] > 0.99
    # A small logit scale spreads the probabilities out.
    assert scoring.Scorer("softmax", 1.0).probabilities(sims)[0] < 0.5


def test_sigmoid_probabilities_stand_alone() -> None:
    """SigLIP's probability of a pair is sigmoid(scale · cos + bias), whatever the other texts are."""
    scorer = scoring.Scorer.of({"family": "sigmoid", "logit_scale": 10.0, "logit_bias": -5.0})
    sims = np.array([0.9, 0.5, 0.1], dtype=np.float32)
    expected = [1 / (1 + np.exp(-(10.0 * s - 5.0))) for s in (0.9, 0.5, 0.1)]
    np.testing.assert_allclose(scorer.probabilities(sims), expected, rtol=1e-6)
    assert scorer.probabilities(sims[:1])[0] == pytest.approx(expected[0], rel=1e-6)  # alone, the same
    assert scorer.probabilities(sims).sum() != pytest.approx(1.0)
    assert scoring.Scorer.of({}) == scoring.Scorer("softmax", 100.0, 0.0)  # entries before families


def test_threshold_sources() -> None:
    assert scoring.resolve_threshold(ClipSettings(), {}) == scoring.Threshold(0.25, "default")
    assert scoring.resolve_threshold(ClipSettings(), {"family": "sigmoid"}) == scoring.Threshold(0.5, "default")
    assert scoring.resolve_threshold(ClipSettings(), {"calibrated_threshold": 0.31}).source == "model"
    env = ClipSettings(similarity_threshold=0.2)
    assert scoring.resolve_threshold(env, {"calibrated_threshold": 0.31}) == scoring.Threshold(0.2, "env")


def test_analyze_pair_decision() -> None:
    t, clip = scoring.Threshold(0.25, "default"), scoring.Scorer("softmax", 100.0)
    assert scoring.analyze_pair(0.24, t, clip)["is_mismatch"] is True
    ok = scoring.analyze_pair(0.30, t, clip)
    assert ok["is_mismatch"] is False and ok["margin"] == pytest.approx(0.05) and "probability" not in ok


def test_a_sigmoid_model_flags_a_mismatch_by_its_probability() -> None:
    siglip, even = scoring.Scorer("sigmoid", 10.0, -5.0), scoring.Threshold(0.5, "default")
    below, above = scoring.analyze_pair(0.49, even, siglip), scoring.analyze_pair(0.51, even, siglip)
    assert below["is_mismatch"] is True and above["is_mismatch"] is False
    assert above["probability"] == pytest.approx(1 / (1 + np.exp(-(10.0 * 0.51 - 5.0))), rel=1e-6)
    assert above["margin"] == pytest.approx(above["probability"] - 0.5)


def test_rank_labels_orders_and_truncates() -> None:
    image = _unit([1, 0.2, 0])
    labels = ["a", "b", "c"]
    rows = _unit([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    ranked = scoring.rank_labels(image, labels, rows, scoring.Scorer("softmax", 100.0), top_k=2)
    assert [r["category"] for r in ranked] == ["b", "a"]
    assert set(ranked[0]) == {"category", "probability", "similarity"}


async def test_label_cache_encodes_each_set_once() -> None:
    calls: list[list[str]] = []

    async def encode(prompts: list[str]) -> np.ndarray:
        calls.append(prompts)
        rng = np.random.default_rng(len(prompts))
        return _unit(rng.normal(size=(len(prompts), 8)))

    cache = scoring.LabelCache(["a photo of {}.", "a picture of {}."], max_sets=2)
    first = await cache.get(["cat", "dog"], encode)
    again = await cache.get(["cat", "dog"], encode)
    assert first is again and len(calls) == 1
    assert calls[0] == ["a photo of cat.", "a picture of cat.", "a photo of dog.", "a picture of dog."]
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    await cache.get(["x"], encode)
    await cache.get(["y"], encode)  # evicts the least recently used set
    await cache.get(["cat", "dog"], encode)
    assert len(calls) == 4
