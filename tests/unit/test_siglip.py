"""Sigmoid (SigLIP-style) models: the Hugging Face tokenizer kept in the entry and run without torch,
the encoders against open_clip's own encode, and the compiled entry serving without torch."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_runner import synthetic_images
from clip_runner.compile.openvino_compiler import compile_entries
from clip_runner.errors import ModelNotAvailable
from clip_runner.preprocessing.hf_tokenizer import HFTextTokenizer
from clip_runner.preprocessing.images import PixelPipeline
from clip_runner.runtimes.choice import candidate_precisions, choose_runtime
from clip_runner.runtimes.encoder import token_counts
from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
from clip_runner.runtimes.torch_encoder import TorchEncoder
from clip_runner.serving.scoring import Scorer
from clip_runner.settings import ClipSettings
from clip_runner.store.entries import open_entry, sha256_file, verify_files
from clip_runner.store.registration import register_random
from clip_runner.store.weights import load_entry
from clip_runner.training import calibration as cal
from clip_runner.training import finetune as ft
from tests.conftest import BF16_PARITY, NOT_FP32, TINY_SIGLIP_CONFIG, make_jpeg
from tests.unit.test_compiled import NO_TORCH_PROBE

ROOT = Path(__file__).resolve().parents[2]
FIXED_TEXTS = ["a photo of a cat", "A Photo of a CAT!!", "un chat sur une table", "Ein Hund im Park.",
               "猫の写真", "桌子上的狗", "собака на столе", "صورة قطة", "a_red_square &amp; a circle", "",
               "   spaced   out   ", "naïve café crème brûlée", "🙂 emoji 🚀", "x" * 200,
               " ".join(["a photo of a dog on a table"] * 6)]
# Code points from several scripts: Latin, Latin-1, Greek, Cyrillic, Arabic, Devanagari, CJK, Hangul, emoji.
SCRIPTS = [(0x20, 0x7E), (0xC0, 0xFF), (0x391, 0x3C9), (0x410, 0x44F), (0x621, 0x64A), (0x905, 0x939),
           (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F600, 0x1F64F)]


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Random strings mixing scripts, spaces and punctuation."""
    rng = random.Random(seed)
    return ["".join(chr(rng.randint(*rng.choice(SCRIPTS))) if rng.random() > 0.15 else rng.choice(" .,!_")
                    for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_the_entry_keeps_its_tokenizer_labelled_and_hashed(tiny_siglip_tag: str, siglip_tokenizer: Path) -> None:
    entry = open_entry(tiny_siglip_tag)
    assert entry.hf_tokenizer and entry.labels["tokenizer"] == "clip-service/tiny-siglip-tokenizer"
    kept = entry.metadata["tokenizer_sha256"]
    assert set(kept) == {"tokenizer.json", "tokenizer_config.json"}
    for name, digest in kept.items():
        assert (entry.path / name).read_bytes() == (siglip_tokenizer / name).read_bytes()
        assert sha256_file(entry.path / name) == digest
    assert entry.metadata["family"] == "sigmoid" and entry.metadata["logit_bias"] == pytest.approx(-10.0)


def test_an_altered_tokenizer_is_refused(siglip_tokenizer: Path) -> None:
    entry = open_entry(register_random(str(TINY_SIGLIP_CONFIG), name="clip-siglip-altered", tokenizer=siglip_tokenizer))
    (entry.path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable, match="tokenizer_config.json does not match its recorded sha256"):
        verify_files(entry)


def test_a_model_that_needs_a_tokenizer_folder_is_refused_without_one(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="--tokenizer DIR"):
        register_random(str(TINY_SIGLIP_CONFIG), name="clip-siglip-no-tokenizer")
    with pytest.raises(ModelNotAvailable, match="has no tokenizer.json"):
        register_random(str(TINY_SIGLIP_CONFIG), name="clip-siglip-no-tokenizer", tokenizer=tmp_path)


def test_token_ids_and_counts_equal_open_clips_in_every_script(tiny_siglip_tag: str, siglip_reference) -> None:
    entry = open_entry(tiny_siglip_tag)
    ours = HFTextTokenizer.for_model(entry.path, entry.model_cfg)
    theirs = siglip_reference.tokenizer  # open_clip's HFTokenizer: transformers' AutoTokenizer on the entry
    texts = FIXED_TEXTS + random_texts(300)
    ids = ours(texts)
    np.testing.assert_array_equal(ids, theirs(texts).numpy())
    assert ids.shape == (len(texts), 16) and ids.dtype == np.int64
    masks = theirs.tokenizer([theirs.clean_fn(t) for t in texts], max_length=16, padding="max_length",
                             truncation=True).attention_mask
    assert token_counts(ids, *ours.padding) == [sum(mask) for mask in masks]


def _parity(encoder, reference, preprocess_cfg) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the encoder's image and text rows to open_clip's own encode of the same inputs."""
    pipeline = PixelPipeline(preprocess_cfg)
    blobs = [make_jpeg(seed, size=(120 + seed * 17, 90)) for seed in range(4)]
    pixels = np.stack([pipeline(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs])
    texts = FIXED_TEXTS[:9]
    return (np.sum(encoder.encode_pixels(pixels) * reference.images(blobs), axis=1),
            np.sum(encoder.encode_texts(texts) * reference.texts(texts), axis=1))


def test_torch_fp32_matches_open_clip(tiny_siglip_tag: str, siglip_reference) -> None:
    encoder = TorchEncoder(load_entry(tiny_siglip_tag, torch.device("cpu")), "fp32")
    assert encoder.describe()["precision"] == "fp32"
    image_cos, text_cos = _parity(encoder, siglip_reference, encoder.entry.preprocess_cfg)
    assert image_cos.min() >= 0.9999 and text_cos.min() >= 0.9999


def test_torch_bf16_stays_within_bf16s_bound(tiny_siglip_tag: str, siglip_reference) -> None:
    encoder = TorchEncoder(load_entry(tiny_siglip_tag, torch.device("cpu")), "bf16")
    assert encoder.describe()["precision"] == "bf16"
    image_cos, text_cos = _parity(encoder, siglip_reference, encoder.entry.preprocess_cfg)
    assert min(image_cos.min(), text_cos.min()) >= BF16_PARITY
    assert min(image_cos.min(), text_cos.min()) < NOT_FP32  # computed in bf16, not fp32


@pytest.fixture(scope="module")
def compiled_siglip(tiny_siglip_tag: str) -> dict[str, str]:
    return compile_entries(tiny_siglip_tag, candidate_precisions("auto"))


def test_auto_serves_the_fastest_compiled_precision(compiled_siglip: dict[str, str], tiny_siglip_tag: str) -> None:
    settings = ClipSettings(model_tag=tiny_siglip_tag, runtime="auto", device="cpu")
    encoder, choice = choose_runtime(tiny_siglip_tag, settings, 1)
    measured = choice.measured
    assert measured is not None and set(measured) == set(compiled_siglip)  # nothing compiled again
    fastest = max(measured, key=lambda precision: measured[precision]["images_per_s"])
    assert (encoder.describe()["runtime"], encoder.entry.tag) == ("openvino", compiled_siglip[fastest])
    assert Scorer.of(encoder.entry.metadata).sigmoid  # scored as its parent is


def test_compiled_fp32_matches_open_clip_and_keeps_the_tokenizer(compiled_siglip: dict[str, str],
                                                                  tiny_siglip_tag: str, siglip_reference) -> None:
    entry = open_entry(compiled_siglip["fp32"])
    parent = open_entry(tiny_siglip_tag)
    for name, digest in parent.metadata["tokenizer_sha256"].items():
        assert entry.metadata["files_sha256"][name] == digest
    encoder = OpenVINOEncoder(entry, 1)
    assert encoder.padding == (1, True)  # pads with its end token, </s>
    image_cos, text_cos = _parity(encoder, siglip_reference, entry.preprocess_cfg)
    assert image_cos.min() >= 0.9999 and text_cos.min() >= 0.9999
    assert entry.metadata["family"] == "sigmoid"


def test_the_compiled_int8_entry_serves_without_torch(compiled_siglip: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE, compiled_siglip["int8"], "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["200", "200", "openvino", "int8"]


def test_the_benchmark_times_a_sigmoid_model_in_torch_each_compiled_precision_and_onnxruntime(
        compiled_siglip: dict[str, str], tiny_siglip_tag: str) -> None:
    from bench.runtimes import model_rows, onnxruntime_rows

    measured = model_rows(tiny_siglip_tag, batch=4, seconds=0.01, threads=1, precisions=("fp32", "int8"))
    rows, ceiling = measured["rows"], measured["fp32_ceiling"]
    assert ceiling["image_gflop"] > 0 and ceiling["gflop_per_s"] > 0  # the matmul peak, timed beside the rows
    assert {"torch fp32", "openvino fp32", "openvino int8"} <= set(rows)
    assert all(row["images_per_s"] > 0 and row["texts_per_s"] > 0 for row in rows.values())
    assert rows["openvino int8"]["tag"] == compiled_siglip["int8"]  # the stored compiles, not new ones
    fp32 = rows["openvino fp32"]["parity"]  # as recorded at compile time, for both towers
    assert min(fp32["image_min"], fp32["text_min"]) >= 0.9999
    # ONNX Runtime, measured beside it: the towers exported again, the text tower fed by the model's own tokenizer.
    onnx = onnxruntime_rows(tiny_siglip_tag, batch=4, seconds=0.01, threads=1)
    assert set(onnx) == {"onnxruntime fp32", "onnxruntime int8"} and onnx["onnxruntime fp32"]["texts_per_s"] > 0
    assert min(onnx["onnxruntime fp32"]["parity"]["image_min"], onnx["onnxruntime fp32"]["parity"]["text_min"]) \
        >= 0.9999


def test_fine_tuning_uses_the_sigmoid_loss_and_keeps_the_tokenizer(tiny_siglip_tag: str, tmp_path: Path) -> None:
    csv_path = synthetic_images.write_dataset(tmp_path / "shapes", 96, seed=11, image_size=64)
    config = ft.TrainConfig(batch_size=16, learning_rate=2e-3, epochs=2, checkpoint_dir=tmp_path / "ckpt",
                            val_fraction=0.25, progress=False)
    first = ft.finetune(csv_path, dataclasses.replace(config, epochs=1), tag=tiny_siglip_tag, register=False)
    result = ft.finetune(csv_path, config, resume=first.checkpoint)  # the checkpoint carries the tokenizer
    before, after = result.history[0], result.history[-1]
    assert after["val_loss"] < before["val_loss"], result.history
    parent, entry = open_entry(tiny_siglip_tag), open_entry(result.tag)
    # Only the sigmoid loss has a gradient for the bias: CLIP's softmax would leave it where it was.
    assert entry.metadata["family"] == "sigmoid" and entry.metadata["logit_bias"] != parent.metadata["logit_bias"]
    assert entry.metadata["tokenizer_sha256"] == parent.metadata["tokenizer_sha256"]
    verify_files(entry)


def test_calibration_fits_a_probability_threshold(tiny_siglip_tag: str, siglip_reference, tmp_path: Path) -> None:
    """For a sigmoid model the stored threshold is a probability: the F1-best one over the pairs' sigmoids,
    computed here from open_clip's cosines and the entry's own scale and bias."""
    csv_path = synthetic_images.write_dataset(tmp_path, 24, seed=5, image_size=64)
    result = cal.calibrate(load_entry(tiny_siglip_tag, torch.device("cpu")), csv_path)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    image_rows, texts, is_mismatch = cal.build_pairs([row["text"] for row in rows], None, seed=0)
    images = siglip_reference.images([(csv_path.parent / row["image_path"]).read_bytes() for row in rows])
    cosines = np.sum(images[image_rows] * siglip_reference.texts(texts), axis=1)
    metadata = open_entry(tiny_siglip_tag).metadata
    probabilities = 1 / (1 + np.exp(-(metadata["logit_scale"] * cosines.astype(np.float64) + metadata["logit_bias"])))
    assert result.threshold == pytest.approx(cal.fit_threshold(probabilities, is_mismatch).threshold, rel=1e-3)
    assert 0.0 < result.threshold < 1.0
    calibrated = open_entry(cal.register_calibrated(tiny_siglip_tag, result))
    verify_files(calibrated)  # the tokenizer came along, hashed
    assert calibrated.metadata["calibrated_threshold"] == pytest.approx(result.threshold)
