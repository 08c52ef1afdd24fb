"""A sigmoid (SigLIP-style) model through every route: probabilities computed here from the entry's own
logit scale and bias over open_clip's own cosines, and token counts from transformers' tokenizer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from clip_http.local import local_app
from clip_runner.serving.scoring import DEFAULT_TEMPLATES
from clip_runner.settings import ClipSettings
from clip_runner.store.entries import open_entry
from tests.conftest import Reference, make_jpeg

REL = 1e-3  # on probabilities (random weights make them small: relative, not absolute)
TEXTS = ["a photo of a cat", "un chat sur une table", "猫の写真", "собака на столе"]


@pytest.fixture(scope="module")
def siglip(tiny_siglip_tag: str) -> Iterator[TestClient]:
    local = local_app(ClipSettings(model_tag=tiny_siglip_tag, device="cpu", precision="fp32", runtime="torch"))
    with TestClient(local.app, raise_server_exceptions=False) as client:
        yield client
    local.close()


@pytest.fixture(scope="module")
def sigmoid(tiny_siglip_tag: str):
    """The entry's own probability of a cosine: sigmoid(logit_scale · cos + logit_bias)."""
    metadata = open_entry(tiny_siglip_tag).metadata
    scale, bias = metadata["logit_scale"], metadata["logit_bias"]
    return lambda cos: 1.0 / (1.0 + np.exp(-(scale * np.asarray(cos, dtype=np.float64) + bias)))


def _image(seed: int) -> tuple[bytes, dict]:
    data = make_jpeg(seed)
    return data, {"image": ("x.jpg", data, "image/jpeg")}


def test_similarity_probabilities_are_per_text_sigmoids(siglip: TestClient, siglip_reference: Reference,
                                                       sigmoid) -> None:
    data, files = _image(1)
    cos = siglip_reference.texts(TEXTS) @ siglip_reference.images([data])[0]
    body = siglip.post("/similarity", files=files, data={"texts": TEXTS}).json()
    assert body["similarities"] == pytest.approx(cos.tolist(), abs=1e-5)
    assert body["probabilities"] == pytest.approx(sigmoid(cos).tolist(), rel=REL)
    assert sum(body["probabilities"]) != pytest.approx(1.0)
    assert body["best_match"] == TEXTS[int(np.argmax(sigmoid(cos)))]
    alone = siglip.post("/similarity", files=files, data={"texts": TEXTS[:1]}).json()
    assert alone["probabilities"][0] == pytest.approx(body["probabilities"][0], rel=REL)  # no other text matters


def test_classify_ranks_and_reports_the_sigmoid(siglip: TestClient, siglip_reference: Reference, sigmoid) -> None:
    labels = ["cat", "dog", "table", "park"]
    data, files = _image(2)
    prompts = siglip_reference.texts([t.format(label) for label in labels for t in DEFAULT_TEMPLATES])
    rows = prompts.reshape(len(labels), len(DEFAULT_TEMPLATES), -1).mean(axis=1)
    cos = (rows / np.linalg.norm(rows, axis=1, keepdims=True)) @ siglip_reference.images([data])[0]
    body = siglip.post("/classify", files=files, data={"categories": ",".join(labels), "top_k": "4"}).json()
    order = np.argsort(-cos)
    assert [p["category"] for p in body["predictions"]] == [labels[i] for i in order]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(sigmoid(cos[order]).tolist(), rel=REL)


def test_analyze_flags_by_probability_against_even_odds(siglip: TestClient, siglip_reference: Reference,
                                                         sigmoid) -> None:
    data, files = _image(3)
    cos = siglip_reference.texts(TEXTS[:2]) @ siglip_reference.images([data])[0]
    probability = sigmoid(cos)
    body = siglip.post("/analyze", files=files, data={"text": TEXTS[0]}).json()
    assert body["probability"] == pytest.approx(probability[0], rel=REL)
    assert (body["threshold"], body["threshold_source"]) == (0.5, "default")
    assert body["is_mismatch"] is bool(probability[0] < 0.5)
    middle = float(probability.mean())  # between the two pairs' probabilities: one each side
    answers = [siglip.post("/analyze", files=files, data={"text": text, "threshold": str(middle)}).json()
               for text in TEXTS[:2]]
    verdicts = [answer["is_mismatch"] for answer in answers]
    assert verdicts == [bool(p < middle) for p in probability] and len(set(verdicts)) == 2
    refused = siglip.post("/analyze", files=files, data={"text": TEXTS[0], "threshold": "-0.2"})
    assert refused.status_code == 400 and "between 0 and 1" in refused.json()["error"]


def test_health_and_models_name_the_family_and_its_scale_and_bias(siglip: TestClient, tiny_siglip_tag: str) -> None:
    metadata = open_entry(tiny_siglip_tag).metadata
    expected = {"family": "sigmoid", "logit_scale": pytest.approx(metadata["logit_scale"]),
                "logit_bias": pytest.approx(metadata["logit_bias"])}
    assert siglip.get("/health").json()["scores"] == expected
    assert siglip.get("/v1/models").json()["data"][0]["scores"] == expected


def test_embeddings_count_the_models_own_tokens(siglip: TestClient, siglip_reference: Reference) -> None:
    texts = ["a photo of a cat", "猫の写真", "x" * 200]
    body = siglip.post("/v1/embeddings", json={"input": texts, "model": "clip"}).json()
    theirs = siglip_reference.tokenizer
    masks = theirs.tokenizer([theirs.clean_fn(t) for t in texts], max_length=16, padding="max_length",
                             truncation=True).attention_mask
    assert body["usage"]["prompt_tokens"] == sum(sum(mask) for mask in masks)
    assert [len(row["embedding"]) for row in body["data"]] == [32, 32, 32]
