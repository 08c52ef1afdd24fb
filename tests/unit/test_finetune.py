"""Fine-tuning: CSV handling, a short run that learns, checkpoints, resume, registration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clip_runner import finetune as ft
from clip_runner.store import open_entry
from models import demo_data
from tests.conftest import TINY_CONFIG, make_jpeg


def _config(tmp_path: Path, **overrides) -> ft.TrainConfig:
    values = {"batch_size": 16, "learning_rate": 2e-3, "epochs": 3, "checkpoint_dir": tmp_path / "ckpt",
              "val_fraction": 0.25, "progress": False}
    return ft.TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 generated captioned images (64 px: the tiny model's input size)."""
    return demo_data.write_dataset(tmp_path_factory.mktemp("shapes"), 160, seed=11, image_size=64)


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "text"])
        writer.writerows(rows)
    return path


def test_bad_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "good1.jpg").write_bytes(make_jpeg(1))
    (tmp_path / "good2.jpg").write_bytes(make_jpeg(2))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    csv_path = _write_csv(tmp_path / "pairs.csv", [
        ("good1.jpg", "a photo"), ("missing.jpg", "gone"), ("good2.jpg", "   "),
        ("broken.jpg", "corrupt"), ("good2.jpg", "another photo"), ("", "no path")])
    pairs = ft.load_pairs(csv_path, {"size": 64})
    assert [row.text for row in pairs.rows] == ["a photo", "another photo"]
    report = pairs.report()
    assert (report["rows"], report["used"], report["skipped"]) == (6, 2, 4)
    reasons = " | ".join(pairs.reasons)
    assert "image not found" in reasons and "empty text" in reasons
    assert "could not be decoded" in reasons and "empty image_path" in reasons
    assert all(reason.startswith("line ") for reason in pairs.reasons)


def test_no_usable_rows_fails_with_a_clear_message(tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "pairs.csv", [("missing.jpg", "gone"), ("other.png", "")])
    with pytest.raises(ft.NoUsableRows, match="0 usable image–text rows of 2.*image not found"):
        ft.finetune(csv_path, _config(tmp_path), model_config=TINY_CONFIG)
    (tmp_path / "bad.csv").write_text("path,caption\na.jpg,x\n")
    with pytest.raises(ft.FinetuneError, match="missing: image_path, text"):
        ft.read_pair_rows(tmp_path / "bad.csv")


def test_settings_give_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ft.TrainConfig.from_settings()
    assert (config.batch_size, config.learning_rate, config.epochs) == (16, 5e-6, 3)
    assert config.checkpoint_dir == Path("clip_checkpoints")
    monkeypatch.setenv("CLIP_TRAIN_BATCH_SIZE", "8")
    monkeypatch.setenv("CLIP_TRAIN_EPOCHS", "5")
    monkeypatch.setenv("CLIP_CHECKPOINT_DIR", "/data/ckpt")
    config = ft.TrainConfig.from_settings(epochs=2)
    assert (config.batch_size, config.epochs, config.checkpoint_dir) == (8, 2, Path("/data/ckpt"))


def test_a_short_run_improves_validation_and_registers(shapes_csv: Path, tmp_path: Path) -> None:
    result = ft.finetune(shapes_csv, _config(tmp_path, epochs=4), model_config=TINY_CONFIG, name="tiny-shapes",
                         metadata={"categories": ["red circle"]})
    before, after = result.history[0], result.history[-1]
    assert before["epoch"] == 0 and after["epoch"] == 4
    assert after["val_loss"] < before["val_loss"] - 0.2, result.history
    assert after["val_recall_at_1"] > before["val_recall_at_1"], result.history

    entry = open_entry(result.tag)
    assert entry.tag.startswith("tiny-shapes:") and entry.labels["source"] == "finetune"
    training = entry.metadata["training"]
    assert training["history"] == result.history and training["data"]["used"] == 160
    assert entry.metadata["categories"] == ["red circle"]
    assert entry.metadata["val_loss"] == after["val_loss"]
    assert len(list(ft.iter_checkpoints(result.checkpoint.parent))) == 2  # keep_checkpoints


def test_resume_continues_where_the_checkpoint_stopped(shapes_csv: Path, tmp_path: Path) -> None:
    first = ft.finetune(shapes_csv, _config(tmp_path, epochs=1), model_config=TINY_CONFIG, register=False)
    assert first.tag is None and first.checkpoint is not None
    state = json.loads((first.checkpoint / ft.STATE_FILE).read_text())
    assert state["epoch"] == 1 and state["global_step"] > 0

    resumed = ft.finetune(shapes_csv, _config(tmp_path, epochs=2), resume=first.checkpoint)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history  # the first run's record is kept, not redone
    assert ft.weights_digest(resumed.checkpoint) != ft.weights_digest(first.checkpoint)
    assert open_entry(resumed.tag).metadata["training"]["epochs_completed"] == 2

    with pytest.raises(ft.FinetuneError, match="already completed epoch 2"):
        ft.finetune(shapes_csv, _config(tmp_path, epochs=2), resume=resumed.checkpoint)


def test_finetune_cli_prints_history_and_tag(shapes_csv: Path, tmp_path: Path, capsys) -> None:
    from models.__main__ import main

    code = main(["finetune", str(shapes_csv), "--model-config", str(TINY_CONFIG), "--epochs", "1",
                 "--batch-size", "16", "--learning-rate", "1e-3", "--checkpoint-dir", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    assert json.loads(lines[0])["epoch"] == 0 and json.loads(lines[1])["epoch"] == 1
    assert open_entry(lines[-1]).labels["source"] == "finetune"
    assert "used 160 of 160 rows" in err


def test_same_seed_same_weights(shapes_csv: Path, tmp_path: Path) -> None:
    """What makes `make demo` reproducible: a run is a function of its data, config and seed."""
    runs = [ft.finetune(shapes_csv, _config(tmp_path / str(i), epochs=1), model_config=TINY_CONFIG, register=False)
            for i in range(2)]
    assert ft.weights_digest(runs[0].checkpoint) == ft.weights_digest(runs[1].checkpoint)
    other = ft.finetune(shapes_csv, _config(tmp_path / "other", epochs=1, seed=1), model_config=TINY_CONFIG,
                        register=False)
    assert ft.weights_digest(other.checkpoint) != ft.weights_digest(runs[0].checkpoint)
