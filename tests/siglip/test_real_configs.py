"""open_clip's real ``ViT-B-16-SigLIP`` and ``ViT-B-16-SigLIP2`` configs (random weights, stand-in tokenizers of
the same kind as the hub's: tests/siglip_tokenizers.py), end to end.

Each is registered with ``python -m models register --random-init ARCH --tokenizer DIR`` and compiled (fp32 and
int8); its token ids and embeddings are held to open_clip's own, and it is served by ``bentoml serve`` on torch
and on the compiled int8 entry with torch blocked in every process of the server. Every route then answers with
768-wide rows and sigmoid probabilities made of the entry's own scale and bias.

Run by `make test-siglip` (tests/siglip/conftest.py); the measured cosines go to bench_results/siglip.json.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from bench.server import ROOT, Server
from clip_runner.compile.openvino_compiler import compile_entries
from clip_runner.preprocessing.hf_tokenizer import HFTextTokenizer
from clip_runner.preprocessing.images import PixelPipeline
from clip_runner.runtimes.encoder import token_counts
from clip_runner.runtimes.openvino_encoder import OpenVINOEncoder
from clip_runner.runtimes.torch_encoder import TorchEncoder
from clip_runner.serving.scoring import DEFAULT_TEMPLATES
from clip_runner.store.entries import open_entry
from clip_runner.store.weights import load_entry
from tests.conftest import PINNED_FP32, Reference, make_jpeg, open_clip_reference, unit_rows
from tests.e2e.conftest import start_server, stop_server
from tests.siglip_tokenizers import write_gemma_tokenizer, write_t5_tokenizer
from tests.unit.test_siglip import FIXED_TEXTS, random_texts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

WRITERS = {"ViT-B-16-SigLIP": write_t5_tokenizer, "ViT-B-16-SigLIP2": write_gemma_tokenizer}
WIDTH, CONTEXT = 768, 64  # both configs' embed_dim and context_length
NON_ENGLISH = ["猫の写真", "собака на столе", "صورة قطة", "桌子上的狗", "कुत्ते की तस्वीर"]
PARITY_TEXTS = ["a photo of a cat", "A Photo of a CAT!!", "un chat sur une table", *NON_ENGLISH, "🙂 emoji 🚀"]
REL = 1e-3  # on probabilities (random weights make them tiny: relative, not absolute)
FIGURES: dict[str, dict[str, Any]] = {}
_MODELS: dict[str, Model] = {}  # arch → measured figures, written to bench_results/siglip.json
# Started first in every Python process of the server (sitecustomize): any import of torch fails.
NO_TORCH = 'import sys\nsys.modules["torch"] = None\n'


class Model(NamedTuple):
    arch: str
    tag: str  # the torch entry
    compiled: dict[str, str]  # precision → compiled entry
    tokenizer: Path  # the stand-in folder it was registered with


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    out = ROOT / "bench_results" / "siglip.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="module", params=list(WRITERS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The model registered and compiled, once: pytest may set a parameter up again after another one."""
    arch = request.param
    if arch not in _MODELS:
        _MODELS[arch] = _register_and_compile(arch, tmp_path_factory)
    return _MODELS[arch]


def _register_and_compile(arch: str, tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = WRITERS[arch](tmp_path_factory.mktemp(f"{arch}-tokenizer"))
    command = [sys.executable, "-m", "models", "register", "--random-init", arch, "--tokenizer", str(folder)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    tag = done.stdout.split()[-1]
    compiled = {precision: compile_entries(tag, [precision], force=precision == "int8")[precision]
                for precision in ("fp32", "int8")}
    FIGURES[arch] = {"tag": tag, "compiled": compiled}
    return Model(arch, tag, compiled, folder)


@pytest.fixture(scope="module")
def theirs(model: Model) -> Reference:
    """The entry as plain open_clip loads it: its model, preprocess, and its tokenizer through transformers."""
    return open_clip_reference(open_entry(model.tag).path)


def _masks(reference: Reference, texts: list[str]) -> list[int]:
    """Tokens per text by the stand-in tokenizer itself (transformers' attention mask, after open_clip's cleaning)."""
    hf = reference.tokenizer
    cleaned = [hf.clean_fn(text) for text in texts]
    return [sum(mask) for mask in hf.tokenizer(cleaned, max_length=CONTEXT, padding="max_length",
                                              truncation=True).attention_mask]


def test_the_entry_has_the_configs_own_shape(model: Model) -> None:
    entry = open_entry(model.tag)
    assert entry.model_cfg["embed_dim"] == WIDTH and entry.model_cfg["text_cfg"]["context_length"] == CONTEXT
    assert entry.model_cfg["text_cfg"]["hf_tokenizer_name"] == f"timm/{model.arch}"
    assert entry.metadata["family"] == "sigmoid" and entry.hf_tokenizer
    for tag in model.compiled.values():
        assert open_entry(tag).metadata["family"] == "sigmoid"


def test_token_ids_equal_open_clips_in_every_script(model: Model, theirs: Reference) -> None:
    texts = FIXED_TEXTS + NON_ENGLISH + random_texts(400, seed=7)
    expected = theirs.tokenizer(texts).numpy()
    vocab_size = open_entry(model.tag).model_cfg["text_cfg"]["vocab_size"]
    assert expected.shape == (len(texts), CONTEXT) and expected.max() < vocab_size
    for tag in (model.tag, *model.compiled.values()):  # the compiled entries tokenize from their own copy
        entry = open_entry(tag)
        ours = HFTextTokenizer.for_model(entry.path, entry.model_cfg)
        ids = ours(texts)
        np.testing.assert_array_equal(ids, expected, err_msg=tag)
        assert token_counts(ids, *ours.padding) == _masks(theirs, texts)
    cat = expected[0]  # "a photo of a cat": no start token; ends with the end token, then padding
    if model.arch.endswith("SigLIP2"):
        assert cat[0] != 2 and 1 in cat and set(cat[list(cat).index(1) + 1:]) == {0}  # <eos>, then <pad>
    else:
        assert set(cat[list(cat).index(1):]) == {1}  # </s>, padded with </s>
    FIGURES[model.arch]["token_ids"] = {"texts": len(texts), "equal": True}


def _cosines(encoder, reference: Reference, preprocess_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the encoder's image and text rows to open_clip's own encode of the same inputs."""
    pipeline = PixelPipeline(preprocess_cfg)
    blobs = [make_jpeg(seed, size=(160 + seed * 23, 120)) for seed in range(4)]
    pixels = np.stack([pipeline(Image.open(io.BytesIO(blob)).convert("RGB")) for blob in blobs])
    return (np.sum(encoder.encode_pixels(pixels) * reference.images(blobs), axis=1),
            np.sum(encoder.encode_texts(PARITY_TEXTS) * reference.texts(PARITY_TEXTS), axis=1))


def _record(model: Model, key: str, image_cos: np.ndarray, text_cos: np.ndarray) -> None:
    FIGURES[model.arch][key] = {"image_min": float(image_cos.min()), "text_min": float(text_cos.min())}


def test_torch_fp32_matches_open_clip(model: Model, theirs: Reference) -> None:
    encoder = TorchEncoder(load_entry(model.tag, torch.device("cpu")), "fp32")
    image_cos, text_cos = _cosines(encoder, theirs, encoder.entry.preprocess_cfg)
    _record(model, "torch_fp32", image_cos, text_cos)
    assert image_cos.min() >= 0.9999 and text_cos.min() >= 0.9999


def test_compiled_fp32_matches_open_clip(model: Model, theirs: Reference) -> None:
    entry = open_entry(model.compiled["fp32"])
    encoder = OpenVINOEncoder(entry, 2)
    image_cos, text_cos = _cosines(encoder, theirs, entry.preprocess_cfg)
    _record(model, "openvino_fp32", image_cos, text_cos)
    assert image_cos.min() >= 0.9999 and text_cos.min() >= 0.9999


class Served(NamedTuple):
    srv: Server
    runtime: str
    tag: str


@pytest.fixture(scope="module", params=["openvino-int8", "torch"])
def served(request: pytest.FixtureRequest, model: Model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server per model and runtime; the compiled one starts with torch blocked in all its processes."""
    folder = tmp_path_factory.mktemp("serve")
    if request.param == "torch":
        tag, settings = model.tag, {"CLIP_RUNTIME": "torch", **PINNED_FP32}
    else:
        tag, blocker = model.compiled["int8"], folder / "no-torch"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(NO_TORCH)
        path = [str(blocker), str(ROOT), str(ROOT / "client")]
        settings = {"CLIP_RUNTIME": "openvino", "CLIP_DEVICE": "cpu", "PYTHONPATH": ":".join(path)}
    srv = start_server({"CLIP_MODEL_TAG": tag, "CLIP_BATCH_SIZE": "8", **settings}, folder / "serve.log", timeout=600)
    yield Served(srv, request.param, tag)
    stop_server(srv)


def _post(served: Served, path: str, **kwargs: Any) -> Any:
    response = httpx.post(f"{served.srv.url}{path}", timeout=300, **kwargs)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def _image(seed: int) -> tuple[bytes, dict]:
    data = make_jpeg(seed, size=(150, 110))
    return data, {"image": ("x.jpg", data, "image/jpeg")}


@pytest.fixture(scope="module")
def sigmoid(served: Served) -> Callable[[Any], np.ndarray]:
    """The probability of a cosine from the scale and bias the server reports: sigmoid(scale · cos + bias)."""
    scores = httpx.get(f"{served.srv.url}/health", timeout=10).json()["scores"]
    scale, bias = scores["logit_scale"], scores["logit_bias"]
    return lambda cos: 1.0 / (1.0 + np.exp(-(scale * np.asarray(cos, dtype=np.float64) + bias)))


def test_health_and_models_name_the_entry_its_runtime_and_its_scale_and_bias(served: Served) -> None:
    health = httpx.get(f"{served.srv.url}/health", timeout=10).json()
    metadata = open_entry(served.tag).metadata
    expected = {"family": "sigmoid", "logit_scale": pytest.approx(metadata["logit_scale"]),
                "logit_bias": pytest.approx(metadata["logit_bias"])}
    assert health["scores"] == expected and health["model"] == served.tag
    assert httpx.get(f"{served.srv.url}/v1/models", timeout=10).json()["data"][0]["scores"] == expected
    assert (health["runtime"], health["precision"]) == \
        (("torch", "fp32") if served.runtime == "torch" else ("openvino", "int8"))
    if served.runtime != "torch":  # the blocker was in force, and no process of the server holds torch
        workers = [served.srv.proc.pid, *(p.pid for p in psutil.Process(served.srv.proc.pid).children(recursive=True))]
        maps = [m.path for pid in workers for m in psutil.Process(pid).memory_maps()]
        assert maps and not any("libtorch" in path for path in maps)


def test_encode_routes_answer_768_wide_rows_in_any_script(served: Served, model: Model, theirs: Reference) -> None:
    image = _post(served, "/encode_image", files={"image": ("x.jpg", make_jpeg(1, size=(150, 110)))})
    assert len(image) == WIDTH
    rows = np.array(_post(served, "/encode_text", json={"text": ["a photo of a cat", *NON_ENGLISH]}))
    assert rows.shape == (1 + len(NON_ENGLISH), WIDTH) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-3)
    cos = np.sum(rows * theirs.texts(["a photo of a cat", *NON_ENGLISH]), axis=1)
    FIGURES[model.arch][f"served_{served.runtime}_text_min"] = float(cos.min())
    if served.runtime == "torch":
        assert cos.min() >= 0.9999


def test_similarity_probabilities_are_the_entrys_sigmoids(served: Served, sigmoid) -> None:
    texts = ["a photo of a cat", *NON_ENGLISH[:3]]
    data, files = _image(2)
    image = np.array(_post(served, "/encode_image", files={"image": ("x.jpg", data)}))
    cos = np.array(_post(served, "/encode_text", json={"text": texts})) @ image
    body = _post(served, "/similarity", files=files, data={"texts": texts})
    assert body["similarities"] == pytest.approx(cos.tolist(), abs=1e-4)
    assert body["probabilities"] == pytest.approx(sigmoid(body["similarities"]).tolist(), rel=REL)
    assert body["probabilities"] == pytest.approx(sigmoid(cos).tolist(), rel=1e-2)
    assert body["best_match"] == texts[int(np.argmax(body["probabilities"]))]


def test_classify_reports_each_labels_sigmoid(served: Served, sigmoid) -> None:
    labels = ["cat", "dog", "猫", "собака"]
    data, files = _image(3)
    image = np.array(_post(served, "/encode_image", files={"image": ("x.jpg", data)}))
    prompts = np.array(_post(served, "/encode_text", json={"text": [t.format(label) for label in labels
                                                                    for t in DEFAULT_TEMPLATES]}))
    rows = prompts.reshape(len(labels), len(DEFAULT_TEMPLATES), WIDTH).mean(axis=1)
    cos = unit_rows(torch.from_numpy(rows)) @ image
    body = _post(served, "/classify", files=files, data={"categories": ",".join(labels), "top_k": "4"})
    predictions = body["predictions"]
    assert sorted(p["category"] for p in predictions) == sorted(labels)
    by_label = {p["category"]: p for p in predictions}
    assert [by_label[label]["similarity"] for label in labels] == pytest.approx(cos.tolist(), abs=1e-4)
    for p in predictions:
        assert p["probability"] == pytest.approx(float(sigmoid(p["similarity"])), rel=REL)
    assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)


def test_analyze_compares_the_probability_with_even_odds(served: Served, sigmoid) -> None:
    data, files = _image(4)
    body = _post(served, "/analyze", files=files, data={"text": "собака на столе"})
    assert body["probability"] == pytest.approx(float(sigmoid(body["similarity"])), rel=REL)
    assert (body["threshold"], body["threshold_source"]) == (0.5, "default")
    assert body["is_mismatch"] is (body["probability"] < 0.5)
    above = _post(served, "/analyze", files=files, data={"text": "собака на столе",
                                                          "threshold": str(body["probability"] / 2)})
    assert above["is_mismatch"] is False  # the same pair against a bar under its probability


def test_embeddings_count_the_tokenizers_own_tokens(served: Served, theirs: Reference) -> None:
    texts = ["a photo of a cat", *NON_ENGLISH, "x" * 300]
    body = _post(served, "/v1/embeddings", json={"input": texts, "model": "clip"})
    assert [len(row["embedding"]) for row in body["data"]] == [WIDTH] * len(texts)
    assert body["usage"]["prompt_tokens"] == sum(_masks(theirs, texts))
