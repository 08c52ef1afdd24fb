"""The other dialects, in process: JSON bodies with base64 or URL images on every image route (the
same answers as the multipart forms), OpenAI's /v1/embeddings and /v1/models, and hostile inputs."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from tests.conftest import assert_same, make_jpeg
from tests.image_server import ImageServer

IMAGES = [make_jpeg(21, size=(120, 90)), make_jpeg(22, size=(64, 100))]


def b64(data: bytes, uri: bool = False) -> str:
    text = base64.b64encode(data).decode()
    return f"data:image/jpeg;base64,{text}" if uri else text


# (path, image fields: name → one image or a list, other fields as a form sends them, as JSON sends them)
ROUTES = [
    ("/encode_image", {"image": IMAGES[0]}, {}, {}),
    ("/encode_images", {"images": IMAGES}, {}, {}),
    ("/similarity", {"image": IMAGES[0]}, {"texts": ["a red square", "a dog"]}, {"texts": ["a red square", "a dog"]}),
    ("/analyze", {"image": IMAGES[0]}, {"text": "a red square", "threshold": "0.1"},
     {"text": "a red square", "threshold": 0.1}),
    ("/analyze_batch", {"images": IMAGES}, {"texts": ["one", "two"]}, {"texts": ["one", "two"]}),
    ("/classify", {"image": IMAGES[1]}, {"categories": ["cat", "dog", "car"], "top_k": "2"},
     {"categories": ["cat", "dog", "car"], "top_k": 2}),
    ("/clip/analyze", {"file": IMAGES[0]}, {"text": "a car"}, {"text": "a car"}),
    ("/clip/analyze-batch", {"file": IMAGES}, {"text": ["one", "two"]}, {"text": ["one", "two"]}),
    ("/clip/classify", {"file": IMAGES[1]}, {}, {}),
]


def _multipart(images: dict[str, Any]) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = []
    for name, value in images.items():
        for i, data in enumerate(value if isinstance(value, list) else [value]):
            files.append((name, (f"{i}.jpg", data, "image/jpeg")))
    return files


def _as_text(images: dict[str, Any], encode) -> dict[str, Any]:
    return {name: [encode(d) for d in value] if isinstance(value, list) else encode(value)
            for name, value in images.items()}


@pytest.mark.parametrize(("path", "images", "form", "fields"), ROUTES, ids=[r[0] for r in ROUTES])
def test_json_and_multipart_give_the_same_answer(client, path: str, images: dict, form: dict, fields: dict) -> None:
    multipart = client.post(path, files=_multipart(images), data=form)
    assert multipart.status_code == 200, multipart.text
    for encode in (b64, lambda d: b64(d, uri=True)):
        as_json = client.post(path, json={**_as_text(images, encode), **fields})
        assert as_json.status_code == 200, as_json.text
        assert_same(as_json.json(), multipart.json())
        assert as_json.headers["X-Batch-Size"] and "infer;dur=" in as_json.headers["Server-Timing"]
    # A multipart text field may carry the image as text too.
    as_text = client.post(path, data={**_as_text(images, b64), **form}, files=[("unused", ("u", b"", "text/plain"))])
    assert as_text.status_code == 200, as_text.text
    assert_same(as_text.json(), multipart.json())


def test_openapi_documents_both_forms_of_every_image_route(client) -> None:
    paths = client.get("/docs.json").json()["paths"]  # the service's OpenAPI document, as BentoML serves it
    for path, images, _, _ in ROUTES:
        content = paths[path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}, path
        for name in images:
            assert name in content["application/json"]["schema"]["properties"], (path, name)
            assert "base64" in str(content["application/json"]["schema"]["properties"][name]), (path, name)
    assert "application/json" in paths["/v1/embeddings"]["post"]["requestBody"]["content"]


# ---- OpenAI's dialect -----------------------------------------------------------------------


def _embeddings(client, **body) -> Any:
    return client.post("/v1/embeddings", json={"model": "clip", **body})


def _rows(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def test_v1_text_embeddings_equal_encode_text_in_both_formats(client) -> None:
    texts = ["a photo of a dog", "two red squares on a table"]
    expected = np.array(client.post("/encode_text", json={"text": texts}).json(), dtype=np.float32)
    floats = _embeddings(client, input=texts)
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_allclose(_rows(body), expected, atol=1e-5)
    packed = _embeddings(client, input=texts, encoding_format="base64").json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed["data"]])
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    single = _embeddings(client, input=texts[0]).json()
    np.testing.assert_allclose(_rows(single)[0], expected[0], atol=1e-5)
    assert floats.headers["X-Batch-Size"] and "infer;dur=" in floats.headers["Server-Timing"]


def test_v1_usage_counts_the_clip_tokenizers_tokens(client) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    texts = ["a dog", "Ünïcode &amp; HTML,   spaced   out!", "word " * 100]
    bpe = SimpleTokenizer()
    expected = [min(len(bpe.encode(t)) + 2, 77) for t in texts]  # start and end tokens; cut at 77
    body = _embeddings(client, input=[*texts, {"image": b64(IMAGES[0])}]).json()
    assert body["usage"] == {"prompt_tokens": sum(expected), "total_tokens": sum(expected)}


def test_v1_images_equal_encode_image_in_every_shape(client) -> None:
    expected = np.array(client.post("/encode_image", files={"image": ("a.jpg", IMAGES[0], "image/jpeg")}).json())
    text = np.array(client.post("/encode_text", json={"text": "a red square"}).json())
    mixed = _embeddings(client, input=[{"image": b64(IMAGES[0])}, {"text": "a red square"},
                                       {"image": b64(IMAGES[0], uri=True)}, "a red square"])
    assert mixed.status_code == 200, mixed.text
    np.testing.assert_allclose(_rows(mixed.json()), [expected, text, expected, text], atol=1e-5)
    vllm = _embeddings(client, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": b64(IMAGES[0], uri=True)}}]}])
    assert vllm.status_code == 200, vllm.text
    np.testing.assert_allclose(_rows(vllm.json())[0], expected, atol=1e-5)
    chat_text = _embeddings(client, messages=[{"role": "user", "content": "a red square"}])
    np.testing.assert_allclose(_rows(chat_text.json())[0], text, atol=1e-5)


def test_v1_models_lists_the_served_model_and_every_alias_is_accepted(client) -> None:
    health = client.get("/health").json()
    listing = client.get("/v1/models")
    assert listing.status_code == 200
    (card,) = listing.json()["data"]
    assert listing.json()["object"] == "list" and card["object"] == "model"
    assert (card["embedding_size"], card["context_length"]) == (32, 77) and card["image_size"] in (64, [64, 64])
    assert card["id"] == health["model"].split(":")[0] and health["model"] in card["aliases"]
    assert "clip" in card["aliases"] and isinstance(card["created"], int)
    for name in [card["id"], *card["aliases"]]:
        answer = client.post("/v1/embeddings", json={"model": name, "input": "x"})
        assert answer.status_code == 200 and answer.json()["model"] == card["id"], name
        assert client.get(f"/v1/models/{name}").json()["id"] == card["id"]


def _openai_error(resp, status: int, param: str | None, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param and all(w in error["message"] for w in words), error
    return error


def test_v1_errors_come_in_openais_shape(client) -> None:
    unknown = _openai_error(_embeddings(client, model="text-embedding-3-small", input="x"), 404, "model",
                            "text-embedding-3-small", "is not served")
    assert unknown["code"] == "model_not_found" and unknown["type"] == "invalid_request_error"
    _openai_error(client.get("/v1/models/nope"), 404, "model", "nope")
    _openai_error(_embeddings(client, input="x", dimensions=64), 400, "dimensions", "32")
    assert _embeddings(client, input="x", dimensions=32).status_code == 200
    _openai_error(_embeddings(client, input=[[101, 102]]), 400, "input[0]", "check_embedding_ctx_length=False")
    _openai_error(_embeddings(client, input="x", encoding_format="int8"), 400, "encoding_format")
    _openai_error(_embeddings(client, input=[]), 400, "input", "empty")
    _openai_error(_embeddings(client), 400, "input")
    _openai_error(_embeddings(client, input="x", messages=[]), 400, "input")
    two_parts = [{"role": "user", "content": [{"type": "text", "text": "a"},
                                              {"type": "image_url", "image_url": {"url": b64(IMAGES[0])}}]}]
    _openai_error(_embeddings(client, messages=two_parts), 400, "messages", "2 content parts")
    _openai_error(_embeddings(client, input=[{"image": "bm90IGFuIGltYWdl"}]), 415, "input[0].image")
    _openai_error(_embeddings(client, input=["ok", ""]), 400, "input[1]", "empty")
    _openai_error(_embeddings(client, input=["x"] * 65), 400, "input", "CLIP_MAX_TEXTS")
    _openai_error(client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}),
                  400, None, "not valid JSON")
    _openai_error(client.post("/v1/chat/completions", json={}), 404, None, "POST /v1/embeddings")
    wrong_method = _openai_error(client.get("/v1/embeddings"), 405, None, "takes POST")
    assert wrong_method["code"] == "method_not_allowed"


def test_v1_api_key_is_the_sdks_bearer_token(client_with, tiny_tag: str) -> None:
    guarded = client_with(model_tag=tiny_tag, api_key="sk-test")
    error = _openai_error(guarded.post("/v1/embeddings", json={"input": "x"}), 401, None, "API key")
    assert error["type"] == "authentication_error"
    ok = guarded.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer sk-test"})
    assert ok.status_code == 200
    assert "status" in guarded.post("/encode_text", json={"text": "x"}).json()  # our own shape off /v1


def test_a_browser_page_may_call_from_an_allowed_origin(client_with, tiny_tag: str) -> None:
    browser = client_with(model_tag=tiny_tag, api_key="k", cors_origins="https://app.example")
    preflight = browser.options("/v1/embeddings", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200  # no API key on a preflight
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    call = browser.post("/encode_image", json={"image": b64(IMAGES[0])},
                        headers={"Origin": "https://app.example", "Authorization": "Bearer k"})
    assert call.status_code == 200 and call.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Batch-Size" in call.headers["access-control-expose-headers"]
    other = browser.post("/encode_text", json={"text": "x"}, headers={"Origin": "https://evil.example",
                                                                       "Authorization": "Bearer k"})
    assert "access-control-allow-origin" not in other.headers


# ---- hostile image fields -------------------------------------------------------------------


def _error(resp, status: int, field: str, *words: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["field"] == field and f"'{field}'" in body["error"], body
    assert all(w in body["error"] for w in words), body


def test_hostile_base64_is_refused_naming_field_and_reason(client_with, tiny_tag: str) -> None:
    client = client_with(model_tag=tiny_tag, max_image_bytes=20_000)
    _error(client.post("/encode_image", json={"image": "%%% not base64 %%%"}), 400, "image", "not valid base64")
    _error(client.post("/encode_image", json={"image": "data:text/html;base64,PGh0bWw+"}), 415, "image",
           "text/html", "not an image")
    _error(client.post("/encode_image", json={"image": "A" * 40_000}), 413, "image", "CLIP_MAX_IMAGE_BYTES")
    _error(client.post("/encode_image", json={"image": "https://example.com/cat.jpg"}), 400, "image",
           "CLIP_ALLOW_IMAGE_URLS=true")
    _error(client.post("/encode_images", json={"images": [b64(IMAGES[0]), "@@"]}), 400, "images[1]", "base64")
    _error(client.post("/encode_image", json={"image": b64(b"just some text, not an image")}), 415, "image")
    _error(client.post("/similarity", json={"image": ["a", "b"], "texts": ["x"]}), 400, "image", "string")
    _error(client.post("/clip/analyze-batch", json={"items": [{"image_path": "/etc/passwd", "text": "x"}]}),
           400, "items", "never read")
    for top_k in (float("inf"), True, 2.5, "x"):  # JSON Infinity, true, a fraction: not a count
        bad_k = client.post("/classify", content=json.dumps({"image": b64(IMAGES[0]), "top_k": top_k}),
                            headers={"content-type": "application/json"})
        _error(bad_k, 400, "top_k", "integer")
    wrong_type = client.post("/encode_image", content=b"abc", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["error"]
    not_object = client.post("/encode_image", json=["a"])
    assert not_object.status_code == 400 and "object" in not_object.json()["error"]
    # One image that reads but does not decode fails only its own item.
    mixed = client.post("/encode_images", json={"images": [b64(IMAGES[0]), b64(b"\xff\xd8\xff broken")]})
    assert mixed.status_code == 200 and mixed.json()["errors"][0] is None and mixed.json()["errors"][1]


def test_image_urls_give_the_same_answer_as_uploads(client_with, tiny_tag: str, image_server: ImageServer) -> None:
    client = client_with(model_tag=tiny_tag, allow_image_urls=True, image_url_hosts=image_server.host)
    assert client.get("/health").json()["image_urls"] == image_server.host
    assert client_with(model_tag=tiny_tag).get("/health").json()["image_urls"] == "off"
    upload = client.post("/encode_image", files={"image": ("a.jpg", image_server.image, "image/jpeg")}).json()
    url = image_server.url("/cat.jpg")
    assert_same(client.post("/encode_image", json={"image": url}).json(), upload)
    assert_same(client.post("/encode_image", data={"image": url}).json(), upload)
    many = client.post("/encode_images", json={"images": [url, image_server.url("/octet")]}).json()
    assert_same(many["embeddings"], [upload, upload])
    v1 = client.post("/v1/embeddings", json={"input": [{"image": url}], "model": "clip"}).json()
    assert_same(v1["data"][0]["embedding"], upload)
    chat = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}).json()
    assert_same(chat["data"][0]["embedding"], upload)


def test_hostile_urls_are_refused_naming_field_and_reason(client_with, tiny_tag: str, internet: ImageServer) -> None:
    listed = client_with(model_tag=tiny_tag, allow_image_urls=True, image_url_hosts=internet.host,
                         max_image_bytes=100_000, image_url_timeout=1.0)
    public_only = client_with(model_tag=tiny_tag, allow_image_urls=True)
    loopback = f"http://127.0.0.1:{internet.port}/cat.jpg"
    cases = [
        (public_only, loopback, 403, "is not public"),
        (public_only, f"http://localhost:{internet.port}/cat.jpg", 403, "is not public"),
        (public_only, "http://169.254.169.254/latest/meta-data/", 403, "169.254.169.254"),
        (public_only, "http://10.1.2.3/cat.jpg", 403, "10.1.2.3"),
        (public_only, "http://intranet.example/cat.jpg", 403, "is not public"),
        (public_only, f"http://images.example/redirect?to={loopback}", 403, "127.0.0.1"),
        (listed, f"http://localhost:{internet.port}/cat.jpg", 403, "CLIP_IMAGE_URL_HOSTS"),
        (listed, internet.url("/endless"), 413, "CLIP_MAX_IMAGE_BYTES"),
        (listed, internet.url("/drip"), 400, "CLIP_IMAGE_URL_TIMEOUT"),
        (listed, internet.url("/html"), 415, "text/html"),
        (listed, internet.url("/missing"), 400, "HTTP 404"),
        (listed, "gopher://example.com/x", 400, "only http and https"),
    ]
    for client, url, status, reason in cases:
        _error(client.post("/encode_image", json={"image": url}), status, "image", reason)
        _openai_error(client.post("/v1/embeddings", json={"input": [{"image": url}]}), status, "input[0].image", reason)
    assert public_only.post("/encode_image", json={"image": "http://images.example/cat.jpg"}).status_code == 200
    hits = sum(internet.hits.values())
    unpaired = listed.post("/analyze_batch", json={"images": [internet.url("/cat.jpg")] * 2, "texts": ["one"]})
    assert unpaired.status_code == 400 and "one text per image" in unpaired.json()["error"]
    assert sum(internet.hits.values()) == hits  # refused before anything was fetched
    budget = client_with(model_tag=tiny_tag, allow_image_urls=True, image_url_hosts=internet.host,
                         max_request_bytes=int(len(internet.image) * 2.5))
    # The fetches run concurrently, so any of them may cross the line: the 413 names the list, the
    # same field whichever finished first (in both dialects).
    three = [internet.url("/cat.jpg")] * 3
    _error(budget.post("/encode_images", json={"images": three}), 413, "images", "CLIP_MAX_REQUEST_BYTES")
    _openai_error(budget.post("/v1/embeddings", json={"input": [{"image": url} for url in three]}), 413, "input",
                  "CLIP_MAX_REQUEST_BYTES")
