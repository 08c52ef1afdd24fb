"""`python -m models evaluate`: the demo model's report card on held-out generated shapes."""

from __future__ import annotations

import json

import pytest

from clip_runner.store.entries import WEIGHTS_FILE
from clip_runner.store.registration import DEMO_DIR, register_demo
from clip_runner.training.demo import evaluate_tag

pytestmark = pytest.mark.skipif(not (DEMO_DIR / WEIGHTS_FILE).is_file(), reason="demo model not built (make demo)")


def test_demo_model_meets_its_goals_on_held_out_images() -> None:
    result = evaluate_tag(register_demo(), count=128)
    assert result.images == 128 and result.colour_accuracy >= 0.95
    assert result.zero_shot_top1 >= 0.9  # the goal is 0.95 over 1,000 images; 128 is noisier
    assert result.threshold_source == "model" and result.mismatch_f1 >= 0.9
    assert result.best_f1 >= result.mismatch_f1 - 1e-9 and 0.9 <= result.auc <= 1.0


def test_evaluate_cli_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from models.__main__ import main

    assert main(["evaluate", "--count", "32", "--json"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot top-1 over 64 labels" in out and "mismatch F1" in out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["images"] == 32 and 0.0 <= figures["zero_shot_top1"] <= 1.0
