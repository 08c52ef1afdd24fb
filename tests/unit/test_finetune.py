"""Fine-tuning: CSV handling, a short run that learns, checkpoints, resume, registration."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clip_runner import synthetic_images
from clip_runner.store.entries import WEIGHTS_FILE, open_entry, sha256_file, store_home
from clip_runner.store.weights import load_entry
from clip_runner.training import finetune as ft
from clip_runner.training.pairs import PairDataError, load_pairs, read_pair_rows
from tests.conftest import TINY_CONFIG, make_jpeg

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **overrides) -> ft.TrainConfig:
    values = {"batch_size": 16, "learning_rate": 2e-3, "epochs": 3, "checkpoint_dir": tmp_path / "ckpt",
              "val_fraction": 0.25, "progress": False}
    return ft.TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 generated captioned images (64 px: the tiny model's input size)."""
    return synthetic_images.write_dataset(tmp_path_factory.mktemp("shapes"), 160, seed=11, image_size=64)


def _weights_digest(checkpoint: Path) -> str:
    return sha256_file(checkpoint / WEIGHTS_FILE)


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
    pairs = load_pairs(csv_path, {"size": 64})
    assert [row.text for row in pairs.rows] == ["a photo", "another photo"]
    report = pairs.report()
    assert (report["rows"], report["used"], report["skipped"]) == (6, 2, 4)
    reasons = " | ".join(pairs.reasons)
    assert "image not found" in reasons and "empty text" in reasons
    assert "could not be decoded" in reasons and "empty image_path" in reasons
    assert all(reason.startswith("line ") for reason in pairs.reasons)


def test_no_usable_rows_fails_with_a_clear_message(tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "pairs.csv", [("missing.jpg", "gone"), ("other.png", "")])
    with pytest.raises(PairDataError, match="0 usable image–text rows of 2.*image not found"):
        ft.finetune(csv_path, _config(tmp_path), model_config=TINY_CONFIG)
    (tmp_path / "bad.csv").write_text("path,caption\na.jpg,x\n")
    with pytest.raises(PairDataError, match="missing: image_path, text"):
        read_pair_rows(tmp_path / "bad.csv")


def test_settings_give_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ft.TrainConfig.from_settings()
    assert (config.batch_size, config.learning_rate, config.epochs) == (16, 5e-6, 3)
    assert config.checkpoint_dir == Path("clip_checkpoints")
    monkeypatch.setenv("CLIP_TRAIN_BATCH_SIZE", "8")
    monkeypatch.setenv("CLIP_TRAIN_EPOCHS", "5")
    monkeypatch.setenv("CLIP_CHECKPOINT_DIR", "/data/ckpt")
    config = ft.TrainConfig.from_settings(epochs=2)
    assert (config.batch_size, config.epochs, config.checkpoint_dir) == (8, 2, Path("/data/ckpt"))
    monkeypatch.setenv("CLIP_TRAIN_BATCH_SIZE", "")  # set but empty, as .env files leave it: unset
    assert ft.TrainConfig.from_settings().batch_size == 16


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
    assert len(list(result.checkpoint.parent.glob("epoch-*"))) == 2  # keep_checkpoints


def test_resume_continues_where_the_checkpoint_stopped(shapes_csv: Path, tmp_path: Path) -> None:
    first = ft.finetune(shapes_csv, _config(tmp_path, epochs=1), model_config=TINY_CONFIG, register=False)
    assert first.tag is None and first.checkpoint is not None
    state = json.loads((first.checkpoint / ft.STATE_FILE).read_text())
    assert state["epoch"] == 1 and state["global_step"] > 0

    resumed = ft.finetune(shapes_csv, _config(tmp_path, epochs=2), resume=first.checkpoint)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[:2] == first.history  # the first run's record is kept, not redone
    assert _weights_digest(resumed.checkpoint) != _weights_digest(first.checkpoint)
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
    assert _weights_digest(runs[0].checkpoint) == _weights_digest(runs[1].checkpoint)
    other = ft.finetune(shapes_csv, _config(tmp_path / "other", epochs=1, seed=1), model_config=TINY_CONFIG,
                        register=False)
    assert _weights_digest(other.checkpoint) != _weights_digest(runs[0].checkpoint)


def test_readme_finetune_from_a_stored_model(tiny_tag: str, tmp_path: Path) -> None:
    """The README's path, as a user runs it: `python -m models finetune pairs.csv --tag TAG`."""
    rows = []
    for i in range(8):
        (tmp_path / f"{i}.jpg").write_bytes(make_jpeg(i))
        rows.append((f"{i}.jpg", f"photo number {i}"))
    _write_csv(tmp_path / "pairs.csv", rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}
    env.update(BENTOML_HOME=str(Path(store_home()).parent), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               CLIP_TRAIN_EPOCHS="1", CLIP_TRAIN_BATCH_SIZE="4", CLIP_TRAIN_LEARNING_RATE="")
    done = subprocess.run([sys.executable, "-m", "models", "finetune", "pairs.csv", "--tag", tiny_tag],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    tag = done.stdout.strip().splitlines()[-1]
    parent = open_entry(tiny_tag)
    entry = load_entry(tag, torch.device("cpu")).entry  # loads, and its weights match their recorded hash
    assert entry.tag != parent.tag and entry.tag.startswith(f"{parent.tag.split(':')[0]}-finetune:")
    assert entry.metadata["origin"] == parent.tag
    assert entry.metadata["training"]["base"] == {"base_tag": parent.tag}
    assert entry.metadata["training"]["epochs_completed"] == 1
    assert entry.metadata["weights_sha256"] != parent.metadata["weights_sha256"]
    assert (tmp_path / "clip_checkpoints").is_dir()  # the documented default, relative to where it ran
