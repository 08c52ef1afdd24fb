"""Route scores against reference cosines: open_clip's own embeddings, scored here with CLIP's formulas.

The service runs at fp32 on CPU (the in-process fixture pins it). Measured over 8 images there:
its cosines equal the reference's exactly, its probabilities differ by at most 1.5e-8 and its
embeddings by 1.4e-7 in cosine; SCORE_TOL leaves a wide margin over that while still catching a
wrong formula, logit scale, template set or ordering.
"""

from __future__ import annotations

import numpy as np
import pytest

from clip_runner.serving.scoring import DEFAULT_CATEGORIES, DEFAULT_TEMPLATES
from tests.conftest import Reference, make_jpeg

SCORE_TOL = 1e-5  # on cosines and probabilities
TEXTS = ["a red square", "a photo of a dog", "an old bicycle", "blue sky over the sea"]


def _softmax(cosines: np.ndarray, logit_scale: float) -> np.ndarray:
    logits = logit_scale * np.asarray(cosines, dtype=np.float64)
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def _label_rows(reference: Reference, labels: list[str]) -> np.ndarray:
    """Zero-shot label embeddings: each label's prompt embeddings averaged, then normalised."""
    rows = reference.texts([t.format(label) for label in labels for t in DEFAULT_TEMPLATES])
    mean = rows.reshape(len(labels), len(DEFAULT_TEMPLATES), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _distinct(values: np.ndarray) -> None:
    """Reference values further apart than two tolerances: answers within SCORE_TOL must rank as they do."""
    ordered = np.sort(np.asarray(values))
    assert np.all(np.diff(ordered) > 2 * SCORE_TOL), f"reference values too close to rank: {ordered}"


def test_similarity_scores_probabilities_and_best_match(client, reference: Reference) -> None:
    data = make_jpeg(3)
    cos = reference.texts(TEXTS) @ reference.images([data])[0]
    _distinct(cos)
    resp = client.post("/similarity", files={"image": ("x.jpg", data, "image/jpeg")}, data={"texts": TEXTS})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["similarities"] == pytest.approx(cos.tolist(), abs=SCORE_TOL)
    assert body["probabilities"] == pytest.approx(_softmax(cos, reference.logit_scale).tolist(), abs=SCORE_TOL)
    assert body["best_match"] == TEXTS[int(np.argmax(cos))]
    assert [(r["text"], r["similarity"], r["probability"]) for r in body["results"]] == list(
        zip(TEXTS, body["similarities"], body["probabilities"], strict=True))


@pytest.mark.parametrize(("path", "field"), [("/analyze", "image"), ("/clip/analyze", "file")])
def test_analyze_similarity_verdict_and_margin(client, reference: Reference, path: str, field: str) -> None:
    data, text = make_jpeg(4), "red leather handbag"
    cos = float(reference.texts([text])[0] @ reference.images([data])[0])

    def analyze(**form: str) -> dict:
        resp = client.post(path, files={field: ("x.jpg", data, "image/jpeg")}, data={"text": text, **form})
        assert resp.status_code == 200, resp.text
        return resp.json()

    default = analyze()
    assert default["similarity"] == pytest.approx(cos, abs=SCORE_TOL)
    assert default["threshold"] == 0.25 and default["is_mismatch"] == (cos < 0.25)
    assert default["margin"] == pytest.approx(cos - 0.25, abs=SCORE_TOL)
    # A threshold just either side of the reference cosine decides the verdict both ways.
    below, above = analyze(threshold=str(cos - 0.01)), analyze(threshold=str(cos + 0.01))
    assert below["is_mismatch"] is False and below["margin"] == pytest.approx(0.01, abs=SCORE_TOL)
    assert above["is_mismatch"] is True and above["margin"] == pytest.approx(-0.01, abs=SCORE_TOL)


def test_analyze_batch_scores_each_pair(client, reference: Reference) -> None:
    blobs = [make_jpeg(20 + i) for i in range(len(TEXTS))]
    cos = np.sum(reference.images(blobs) * reference.texts(TEXTS), axis=1)
    _distinct(cos)
    threshold = float(np.median(cos))  # half the pairs on each side
    files = [("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
    resp = client.post("/analyze_batch", files=files, data={"texts": TEXTS, "threshold": str(threshold)})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["text"] for r in results] == TEXTS
    assert [r["similarity"] for r in results] == pytest.approx(cos.tolist(), abs=SCORE_TOL)
    assert [r["is_mismatch"] for r in results] == [bool(c < threshold) for c in cos]
    assert [r["is_mismatch"] for r in results].count(True) == 2


def _check_ranking(body: dict, labels: list[str], label_rows: np.ndarray, image: np.ndarray,
                   logit_scale: float, top_k: int) -> None:
    cos = label_rows @ image
    probs = _softmax(cos, logit_scale)
    _distinct(probs[np.argsort(-probs)[: top_k + 1]])  # the ranks checked (and the next) are clear
    order = np.argsort(-probs)[:top_k]
    assert [p["category"] for p in body["predictions"]] == [labels[i] for i in order]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(probs[order].tolist(), abs=SCORE_TOL)
    assert [p["similarity"] for p in body["predictions"]] == pytest.approx(cos[order].tolist(), abs=SCORE_TOL)
    assert body["top_category"] == labels[order[0]]


def test_classify_ranks_the_given_categories(client, reference: Reference) -> None:
    data, labels = make_jpeg(6), ["cat", "dog", "car", "boat", "lamp"]
    resp = client.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")},
                       data={"categories": ", ".join(labels), "top_k": str(len(labels))})
    assert resp.status_code == 200, resp.text
    image = reference.images([data])[0]
    _check_ranking(resp.json(), labels, _label_rows(reference, labels), image, reference.logit_scale, len(labels))


def test_classify_default_categories_top_k(client, reference: Reference) -> None:
    data, labels = make_jpeg(8), list(DEFAULT_CATEGORIES)
    resp = client.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")}, data={"top_k": "5"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["categories_source"] == "default" and body["num_categories"] == len(labels)
    image = reference.images([data])[0]
    _check_ranking(body, labels, _label_rows(reference, labels), image, reference.logit_scale, 5)
