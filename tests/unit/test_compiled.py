"""Compiled (OpenVINO) entries of the tiny model: parity with open_clip, what they record, refusals."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pytest
from PIL import Image

from clip_runner.compile import openvino_compiler
from clip_runner.compile.openvino_compiler import compile_entries
from clip_runner.errors import CompileRefused, ModelNotAvailable, RuntimeMissing
from clip_runner.hardware import NVIDIA_DEVICE_NODE, cpu_has_native_bf16
from clip_runner.preprocessing.images import PixelPipeline
from clip_runner.runtimes import choice as runtime_choice
from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
from clip_runner.settings import ClipSettings
from clip_runner.store.entries import COMPILED_FILES, PARITY_BAR, find_compiled, list_entries, open_entry, store_home
from models import __main__ as cli
from tests.conftest import make_jpeg

ROOT = Path(__file__).resolve().parents[2]
# Cosine to open_clip's own fp32 encode, per precision: what each precision is held to.
BOUNDS = {"fp32": 0.9999, "bf16": 0.995, "int8": 0.95}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_compiled_towers_match_open_clip(compiled_tiny: dict[str, str], reference, precision: str) -> None:
    if precision not in compiled_tiny:
        pytest.skip("bf16 compiles only on a CPU with native bf16")
    encoder = OpenVINOEncoder(open_entry(compiled_tiny[precision]), threads=2)
    pipeline = PixelPipeline(encoder.entry.preprocess_cfg)
    blobs = [make_jpeg(seed, size=(120 + seed * 17, 90)) for seed in range(4)]
    pixels = np.stack([pipeline(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    texts = ["a red circle", "a blue square on a white background", "ünïcødé 🙂 text"]
    image_cos = np.sum(encoder.encode_pixels(pixels) * reference.images(blobs), axis=1)
    text_cos = np.sum(encoder.encode_texts(texts) * reference.texts(texts), axis=1)
    assert image_cos.min() >= BOUNDS[precision] and text_cos.min() >= BOUNDS[precision], (image_cos, text_cos)
    if precision != "fp32":  # really computed at a lower precision, not fp32 under another label
        assert min(image_cos.min(), text_cos.min()) < 0.99999


def test_dynamic_batch_rows_equal_single_rows(compiled_tiny: dict[str, str]) -> None:
    encoder = OpenVINOEncoder(open_entry(compiled_tiny["fp32"]), threads=2)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    singles = np.concatenate([encoder.encode_pixels(pixels[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(encoder.encode_pixels(pixels), singles, atol=1e-5)
    assert encoder.encode_texts(["one"] * 7).shape == (7, 32)


def test_compiled_entry_records_runtime_parity_and_parent(compiled_tiny: dict[str, str], tiny_tag: str) -> None:
    entry = open_entry(compiled_tiny["int8"])
    assert entry.labels | {"runtime": "openvino", "precision": "int8", "parent": tiny_tag, "source": "compiled"} \
        == entry.labels
    meta = entry.metadata
    assert meta["runtime_version"].startswith("20") and meta["compile"]["precision"] == "int8"
    assert meta["compile"]["calibration"]["images"] == 128 and "nncf" in meta["compile"]["calibration"]["tool"]
    assert set(meta["parity"]) == {"image_mean", "image_min", "text_mean", "text_min"}
    assert min(meta["parity"]["image_mean"], meta["parity"]["text_mean"]) >= PARITY_BAR
    assert set(meta["files_sha256"]) == {*COMPILED_FILES, "tokenizer.json"} and "weights_sha256" not in meta
    assert meta["embedding_size"] == 32 and not (entry.path / "open_clip_model.safetensors").exists()


def test_altered_compiled_files_are_refused_at_load(tiny_tag: str) -> None:
    tag = compile_entries(tiny_tag, ["fp32"], threads=2)["fp32"]
    weights = open_entry(tag).path / "image.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailable, match=r"image\.bin does not match its recorded sha256"):
        OpenVINOEncoder(open_entry(tag), threads=1)
    bentoml.models.delete(tag)


def test_parity_under_the_bar_refuses_and_writes_nothing(tiny_tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_compiler, "PARITY_BAR", 1.5)  # no compile reaches it
    before = {e.tag for e in list_entries()}
    with pytest.raises(CompileRefused, match=r"fp32 compile of .* refused: mean cosine .* nothing was written"):
        compile_entries(tiny_tag, ["fp32"], threads=2)["fp32"]
    assert {e.tag for e in list_entries()} == before
    forced = compile_entries(tiny_tag, ["fp32"], force=True, threads=2)["fp32"]
    assert forced not in before and open_entry(forced).metadata["parity"]["image_mean"] < 1.5
    bentoml.models.delete(forced)


def test_calibration_folder_is_used_and_unreadable_files_skipped(tiny_tag: str, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    for seed in range(6):
        (tmp_path / f"{seed}.jpg").write_bytes(make_jpeg(seed, size=(96, 80)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="clip_runner.runtimes.choice"):
        tag = compile_entries(tiny_tag, ["int8"], tmp_path, threads=2)["int8"]
    calibration = open_entry(tag).metadata["compile"]["calibration"]
    assert calibration["images"] == 6 and calibration["image_source"] == str(tmp_path)
    assert "skipped 1 unreadable files of 7" in caplog.text
    bentoml.models.delete(tag)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompileRefused, match="holds no readable images"):
        compile_entries(tiny_tag, ["int8"], empty, threads=2)


def test_cli_compile_prints_the_new_tags_last(tiny_tag: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    exports = []
    export = openvino_compiler._export_in_a_child
    monkeypatch.setattr(openvino_compiler, "_export_in_a_child", lambda *args: exports.append(args) or export(*args))
    asked = ("bf16" if cpu_has_native_bf16() else "int8", "fp32")
    assert cli.main(["compile", tiny_tag, "--precision", *asked]) == 0
    tags = capsys.readouterr().out.strip().splitlines()[-2:]  # one entry per precision, in the order asked
    assert len(exports) == 1  # both from one export of the model
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    for tag, precision in zip(tags, asked, strict=True):
        assert tag.split(":")[0] == f"{tiny_tag.split(':')[0]}-openvino-{precision}"
        assert open_entry(tag).labels["parent"] == tiny_tag and open_entry(tag).labels["precision"] == precision
        row = next(line for line in listing.splitlines() if line.startswith(tag))
        assert "compiled" in row and f"openvino {precision}" in row
        bentoml.models.delete(tag)


def test_bf16_is_compiled_where_native_and_served_as_what_the_cpu_computes(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from clip_runner.store.registration import register_random
    from tests.conftest import TINY_CONFIG

    parent = register_random(str(TINY_CONFIG), seed=5, name="clip-tiny-bf16-elsewhere")  # no other test serves it
    monkeypatch.setattr(openvino_compiler, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(CompileRefused, match="native bf16"):  # where bf16 is emulated, its parity would mean nothing
        openvino_compiler.compile_entries(parent, ["bf16"], threads=2)
    with caplog.at_level("WARNING"):  # asked beside another precision: that one is compiled, bf16 is said refused
        assert set(openvino_compiler.compile_entries(parent, ["fp32", "bf16"], threads=2)) == {"fp32"}
    assert "bf16 needs a CPU with native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(openvino_compiler, "cpu_has_native_bf16", lambda: True)  # as compiled on a CPU that has it
    tag = openvino_compiler.compile_entries(parent, ["bf16"], threads=2)["bf16"]
    with caplog.at_level("WARNING"):
        encoder = OpenVINOEncoder(open_entry(tag), threads=2)
    native = cpu_has_native_bf16()
    assert encoder.describe()["precision"] == ("bf16" if native else "fp32")
    assert ("computes it in fp32" in caplog.text) is not native


def test_without_openvino_the_error_names_the_extra(tiny_tag: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    for module in ("clip_runner.compile.openvino_compiler", "clip_runner.runtimes.openvino_encoder"):
        monkeypatch.delitem(sys.modules, module, raising=False)  # imported again, now without OpenVINO
    assert cli.main(["compile", tiny_tag]) == 1
    assert "pip install 'clip-service[openvino]'" in capsys.readouterr().err
    with pytest.raises(RuntimeMissing, match=r"clip-service\[openvino\]"):
        runtime_choice.choose_runtime(tiny_tag, ClipSettings(model_tag=tiny_tag, runtime="openvino", device="cpu"), 1)
    settings = ClipSettings(model_tag=tiny_tag, runtime="auto", device="cpu")
    encoder, choice = runtime_choice.choose_runtime(tiny_tag, settings, 1)
    assert encoder.describe()["runtime"] == "torch" and "OpenVINO not installed" in choice.reason


def test_int8_needs_a_compiled_runtime(tiny_tag: str) -> None:
    settings = ClipSettings(model_tag=tiny_tag, runtime="torch", precision="int8")
    with pytest.raises(ModelNotAvailable, match="int8 run on CPU, with CLIP_RUNTIME=auto or openvino"):
        runtime_choice.choose_runtime(tiny_tag, settings, 1)


def test_auto_times_the_candidates_once_and_serves_the_fastest(compiled_tiny: dict[str, str], tiny_tag: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ClipSettings(model_tag=tiny_tag, runtime="auto", device="cpu")
    decisions = Path(store_home()).parent / runtime_choice.DECISION_FILE
    decisions.unlink(missing_ok=True)
    encoder, choice = runtime_choice.choose_runtime(tiny_tag, settings, 1)
    measured = choice.measured
    assert measured is not None and set(measured) >= {"fp32", "int8"}
    fastest = max(measured, key=lambda p: measured[p]["images_per_s"])
    assert encoder.describe() | {"runtime": "openvino", "precision": fastest} == encoder.describe()
    # Each precision's candidate is the store's newest compile of it (other tests may compile the tiny model too).
    assert encoder.entry.tag == find_compiled(tiny_tag, fastest).tag and "measured now" in choice.reason
    assert list(json.loads(decisions.read_text()).values())[0]["measured"] == measured
    again, second = runtime_choice.choose_runtime(tiny_tag, settings, 1)
    assert second.measured == measured and "measured at" in second.reason and again.entry.tag == encoder.entry.tag
    pinned, why = runtime_choice.choose_runtime(tiny_tag, settings.model_copy(update={"precision": "fp32"}), 1)
    assert pinned.entry.tag == find_compiled(tiny_tag, "fp32").tag and why.measured is None
    # The same store on another CPU generation (one the hypervisor names alike): timed again there.
    monkeypatch.setattr(runtime_choice, "cpu_name", lambda: "AMD EPYC (family 26 model 2; avx2+avx512f)")
    _, elsewhere = runtime_choice.choose_runtime(tiny_tag, settings, 1)
    assert "measured now" in elsewhere.reason and len(json.loads(decisions.read_text())) == 2


NO_TORCH_PROBE = """
import asyncio, io, sys
sys.modules["torch"] = None  # any import of torch now fails loudly
import httpx
from PIL import Image
from clip_http.local import local_app
from clip_runner.settings import ClipSettings

jpeg = io.BytesIO()
Image.new("RGB", (120, 90), (200, 30, 30)).save(jpeg, "JPEG")

async def main(tag):
    local = local_app(ClipSettings(model_tag=tag, device=sys.argv[2]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=local.app), base_url="http://in-process") as http:
        image = await http.post("/encode_image", files={"image": ("a.jpg", jpeg.getvalue())})
        text = await http.post("/encode_text", json={"text": ["a red circle"]})
        health = (await http.get("/health")).json()
    local.close()
    print(image.status_code, text.status_code, health["runtime"], health["precision"])

asyncio.run(main(sys.argv[1]))
"""


def test_serving_a_compiled_entry_imports_no_torch(compiled_tiny: dict[str, str]) -> None:
    # CLIP_DEVICE=auto where no NVIDIA driver is loaded (the machine's facts, read without torch).
    device = "cpu" if NVIDIA_DEVICE_NODE.exists() else "auto"
    done = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE, compiled_tiny["int8"], device], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["200", "200", "openvino", "int8"]


NO_TORCH_START = """
import sys
sys.modules["torch"] = None  # as in the slim image: torch is not there
from clip_runner.errors import ModelNotAvailable
from clip_runner.runtimes.choice import choose_runtime
from clip_runner.settings import ClipSettings
try:
    choose_runtime(sys.argv[1], ClipSettings(model_tag=sys.argv[1], device="cpu", runtime="auto"), 1)
except ModelNotAvailable as exc:
    print(exc)
"""


def test_without_torch_a_torch_entry_is_refused_not_compiled() -> None:
    from clip_runner.store.registration import register_random
    from tests.conftest import TINY_CONFIG

    tag = register_random(str(TINY_CONFIG), seed=1)  # nothing compiled of it yet
    done = subprocess.run([sys.executable, "-c", NO_TORCH_START, tag], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    candidates = "fp32/bf16/int8" if cpu_has_native_bf16() else "fp32/int8"
    assert done.stdout.strip() == (f"{tag} has no {candidates} compile in the store and torch is not installed to "
                                   "make one: pin a compiled entry (`make build` does)")
    assert find_compiled(tag, "fp32") is None
    bentoml.models.delete(tag)


def test_native_bf16_is_read_as_torch_reads_it() -> None:
    import torch

    from clip_runner.hardware import cpu_has_native_bf16

    assert cpu_has_native_bf16() == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_the_export_childs_error_is_raised_in_the_compiling_process(tmp_path: Path) -> None:
    """The torch side runs in a child process; what goes wrong there is raised here, as itself."""
    pixels, texts = np.zeros((1, 64, 64, 3), np.uint8), ["a photo"]
    with pytest.raises(ModelNotAvailable, match="'clip-missing:v1' is not in the model store"):
        openvino_compiler._export_in_a_child("clip-missing:v1", tmp_path, 1, pixels, texts, [])
