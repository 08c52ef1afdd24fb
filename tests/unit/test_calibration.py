"""Calibration: the F1-optimal mismatch threshold, AUC, pair building, and its use by /analyze."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from clip_runner import synthetic_images
from clip_runner.serving.scoring import resolve_threshold
from clip_runner.settings import ClipSettings
from clip_runner.store.entries import open_entry
from clip_runner.store.weights import load_entry
from clip_runner.training import calibration as cal


def _f1(sims: np.ndarray, positive: np.ndarray, threshold: float) -> float:
    flagged = sims < threshold
    tp = np.sum(flagged & positive)
    return 2 * tp / (flagged.sum() + positive.sum())


def test_derangement_moves_every_element_and_is_seeded() -> None:
    for n in (2, 3, 10, 101):
        perm = cal.derangement(n, seed=4)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))
    assert cal.derangement(50, 1).tolist() == cal.derangement(50, 1).tolist()
    assert cal.derangement(50, 1).tolist() != cal.derangement(50, 2).tolist()
    with pytest.raises(ValueError):
        cal.derangement(1, 0)


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert cal.roc_auc(scores, positive) == pytest.approx(expected)


def test_separable_pairs_give_perfect_f1_and_a_threshold_in_the_gap() -> None:
    sims = np.array([0.10, 0.12, 0.15, 0.30, 0.35, 0.40])
    mismatch = np.array([True, True, True, False, False, False])
    result = cal.fit_threshold(sims, mismatch)
    assert result.f1 == result.precision == result.recall == result.auc == 1.0
    assert 0.15 < result.threshold < 0.30
    assert (result.mismatches, result.matches) == (3, 3)


def test_threshold_maximises_f1_on_overlapping_scores() -> None:
    rng = np.random.default_rng(3)
    sims = np.concatenate([rng.normal(0.2, 0.05, 200), rng.normal(0.3, 0.05, 200)])
    mismatch = np.concatenate([np.ones(200, bool), np.zeros(200, bool)])
    result = cal.fit_threshold(sims, mismatch)
    best_brute = max(_f1(sims, mismatch, t) for t in np.concatenate([sims, sims + 1e-9]))
    assert result.f1 == pytest.approx(best_brute)
    assert _f1(sims, mismatch, result.threshold) == pytest.approx(result.f1)
    assert 0.2 < result.threshold < 0.3 and 0.5 < result.auc < 1.0


def test_shuffled_pairs_never_pair_a_caption_with_its_own_image() -> None:
    texts = ["a red circle", "a blue star", "a red circle", "a green cross"]
    rows, pair_texts, mismatch = cal.build_pairs(texts, None, seed=0)
    assert mismatch[:4].tolist() == [False] * 4 and mismatch[4:].all()
    for row, text, is_mismatch in zip(rows, pair_texts, mismatch, strict=True):
        assert (texts[row] == text) != bool(is_mismatch)


def test_labelled_pairs_are_used_as_given() -> None:
    rows, texts, mismatch = cal.build_pairs(["a", "b", "c"], [1, 0, 1], seed=0)
    assert rows.tolist() == [0, 1, 2] and texts == ["a", "b", "c"]
    assert mismatch.tolist() == [False, True, False]


def test_calibrate_stores_the_threshold_and_analyze_uses_it(tiny_tag: str, tmp_path) -> None:
    csv_path = synthetic_images.write_dataset(tmp_path, 24, seed=5, image_size=64)
    loaded = load_entry(tiny_tag, torch.device("cpu"))
    result = cal.calibrate(loaded, csv_path)
    assert result.matches == 24 and 0 < result.mismatches <= 24
    assert 0.0 <= result.f1 <= 1.0 and 0.0 <= result.auc <= 1.0

    new_tag = cal.register_calibrated(tiny_tag, result, {"csv": str(csv_path)})
    metadata = open_entry(new_tag).metadata
    assert new_tag != tiny_tag and metadata["calibrated_threshold"] == pytest.approx(result.threshold)
    assert metadata["calibration"]["calibrated_from"] == open_entry(tiny_tag).tag
    assert metadata["weights_sha256"] == open_entry(tiny_tag).metadata["weights_sha256"]  # same weights

    threshold = resolve_threshold(ClipSettings(), metadata)
    assert (threshold.value, threshold.source) == (pytest.approx(result.threshold), "model")
    assert resolve_threshold(ClipSettings(similarity_threshold=0.4), metadata).source == "env"


def test_calibrate_cli_reports_and_registers(tiny_tag: str, tmp_path, capsys) -> None:
    from models.__main__ import main

    csv_path = synthetic_images.write_dataset(tmp_path, 12, seed=6, image_size=64)
    assert main(["calibrate", tiny_tag, str(csv_path)]) == 0
    out, err = capsys.readouterr()
    assert "F1" in err and "AUC" in err
    assert open_entry(out.strip()).metadata["calibrated_threshold"] is not None
