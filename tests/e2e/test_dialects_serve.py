"""The dialects against a real `bentoml serve`: the official openai SDK, JSON images, image URLs from an
allow-listed local server, and hostile inputs sent while good requests are in flight."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import PINNED_FP32, assert_same, make_jpeg
from tests.e2e.conftest import Server, start_server, stop_server, wait_for
from tests.image_server import IMAGE, ImageServer

pytestmark = pytest.mark.slow

KEY = "sk-e2e-0123"
MAX_IMAGE_BYTES = 300_000
URL_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def url_server(tiny_tag: str, image_server: ImageServer, tmp_path_factory) -> Iterator[Server]:
    """API key on, image URLs on, only the tests' local image server allow-listed."""
    settings = {"CLIP_MODEL_TAG": tiny_tag, **PINNED_FP32, "CLIP_API_KEY": KEY, "CLIP_ALLOW_IMAGE_URLS": "true",
                "CLIP_IMAGE_URL_HOSTS": image_server.host, "CLIP_IMAGE_URL_TIMEOUT": str(URL_TIMEOUT_S),
                "CLIP_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES)}
    srv = start_server(settings, tmp_path_factory.mktemp("dialects") / "serve.log")
    yield srv
    stop_server(srv)


@pytest.fixture
def http(url_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


@pytest.fixture
def sdk(url_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url_server.url}/v1", api_key=KEY, max_retries=0)


def _uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def _image(http: httpx.Client, data: bytes) -> np.ndarray:
    resp = http.post("/encode_image", files={"image": ("a.jpg", data, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    return np.array(resp.json(), dtype=np.float32)


def test_the_openai_sdk_embeds_texts_as_encode_text_does(sdk: openai.OpenAI, http: httpx.Client) -> None:
    texts = ["a photo of a cat", "a diagram of a bridge"]
    expected = np.array(http.post("/encode_text", json={"text": texts}).json(), dtype=np.float32)
    floats = sdk.embeddings.create(model="clip", input=texts, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in floats.data], expected, atol=1e-5)
    packed = sdk.embeddings.create(model="clip", input=texts, encoding_format="base64")  # handed over as sent
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data]
    np.testing.assert_allclose(decoded, expected, atol=1e-5)
    default = sdk.embeddings.create(model="clip", input=texts)  # the SDK asks for base64 and decodes it
    np.testing.assert_allclose([d.embedding for d in default.data], expected, atol=1e-5)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 4
    (card,) = sdk.models.list().data
    assert default.model == card.id and card.embedding_size == 32  # extra fields ride along
    with pytest.raises(openai.NotFoundError, match="is not served"):
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=sdk.base_url, api_key="wrong", max_retries=0).embeddings.create(model="clip", input="x")


def test_the_openai_sdk_embeds_images_through_extra_body(sdk: openai.OpenAI, http: httpx.Client) -> None:
    data = make_jpeg(31, size=(150, 110))
    expected = _image(http, data)
    items = sdk.embeddings.create(model="clip", input=[], extra_body={"input": [{"image": _uri(data)}]})
    np.testing.assert_allclose(items.data[0].embedding, expected, atol=1e-5)
    assert items.usage.prompt_tokens == 0  # images count no tokens
    chat = sdk.embeddings.create(model="clip", input=[], extra_body={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _uri(data)}}]}]})
    np.testing.assert_allclose(chat.data[0].embedding, expected, atol=1e-5)


def test_an_allow_listed_url_equals_the_upload(sdk: openai.OpenAI, http: httpx.Client,
                                               image_server: ImageServer) -> None:
    expected = _image(http, IMAGE)
    url = image_server.url("/cat.jpg")
    np.testing.assert_allclose(http.post("/encode_image", json={"image": url}).json(), expected, atol=1e-5)
    answer = sdk.embeddings.create(model="clip", input=[], extra_body={"input": [{"image": url}]})
    np.testing.assert_allclose(answer.data[0].embedding, expected, atol=1e-5)
    metrics = httpx.get(f"{http.base_url}/metrics", timeout=10).text
    assert 'endpoint="/v1/embeddings"' in metrics and "clip_inference_ms" in metrics


def test_hostile_inputs_are_refused_while_good_requests_run(http: httpx.Client, image_server: ImageServer) -> None:
    url = image_server.url
    loopback = f"http://localhost:{image_server.port}/cat.jpg"
    hostile = {  # name → (JSON image, status, words the error must hold)
        "malformed base64": ("%%% not base64 %%%", 400, "not valid base64"),
        "non-image data URI": ("data:text/html;base64,PGh0bWw+", 415, "text/html"),
        "base64 over the limit": ("A" * (MAX_IMAGE_BYTES * 2), 413, "CLIP_MAX_IMAGE_BYTES"),
        "loopback": (loopback, 403, "not in CLIP_IMAGE_URL_HOSTS"),
        "metadata address": ("http://169.254.169.254/latest/meta-data/", 403, "169.254.169.254"),
        "private range": ("http://10.0.0.1/cat.jpg", 403, "10.0.0.1"),
        "redirect to loopback": (url(f"/redirect?to={loopback}"), 403, "localhost"),
        "endless body": (url("/endless"), 413, "CLIP_MAX_IMAGE_BYTES"),
        "slow drip": (url("/drip"), 400, "CLIP_IMAGE_URL_TIMEOUT"),
        "non-image content type": (url("/html"), 415, "text/html"),
    }
    good = make_jpeg(41)
    expected = _image(http, good)
    with ThreadPoolExecutor(len(hostile) + 4) as pool:
        drip = pool.submit(http.post, "/encode_image", json={"image": url("/drip")})
        wait_for(lambda: image_server.hits["/drip"] >= 1, "the slow drip to start")
        refused = {name: pool.submit(http.post, "/encode_image", json={"image": image})
                   for name, (image, _, _) in hostile.items() if name != "slow drip"}
        served = [pool.submit(http.post, "/encode_image", json={"image": _uri(good)}) for _ in range(3)]
        for future in served:
            assert future.result().status_code == 200
            np.testing.assert_allclose(future.result().json(), expected, atol=1e-5)
        assert not drip.done()  # good requests finished while a fetch was still dripping
        refused["slow drip"] = drip
        for name, future in refused.items():
            _, status, words = hostile[name]
            resp = future.result()
            assert resp.status_code == status, (name, resp.text)
            assert resp.json()["field"] == "image" and words in resp.json()["error"], (name, resp.text)
    np.testing.assert_allclose(_image(http, good), expected, atol=1e-5)


def test_urls_are_off_by_default_and_the_error_says_how_to_turn_them_on(server: Server) -> None:
    resp = httpx.post(f"{server.url}/encode_image", json={"image": "https://example.com/cat.jpg"}, timeout=30)
    assert resp.status_code == 400 and "CLIP_ALLOW_IMAGE_URLS=true" in resp.json()["error"]
    v1 = httpx.post(f"{server.url}/v1/embeddings", json={"input": [{"image": "https://example.com/cat.jpg"}]},
                    timeout=30)
    assert v1.status_code == 400 and v1.json()["error"]["param"] == "input[0].image"


class _Recording(httpx.AsyncHTTPTransport):
    """The content type of every request the client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.kinds.append(request.headers.get("content-type", "").split(";")[0])
        return await super().handle_async_request(request)


def test_the_clients_send_json_images_and_urls(url_server: Server, image_server: ImageServer, tmp_path) -> None:
    from clip_client import ClipClient
    from clip_client.embedder import CLIPEmbedder

    images = [make_jpeg(51), make_jpeg(52, size=(70, 120))]
    recording = _Recording()
    with ClipClient(url_server.url, api_key=KEY) as forms, \
            ClipClient(url_server.url, api_key=KEY, json_images=True, transport=recording) as as_json:
        calls = [("encode_image", (images[0],)), ("similarity", (images[0], ["a cat", "a car"])),
                 ("analyze", (images[1], "a cat", 0.2)), ("classify", (images[1], ["cat", "dog"], 1)),
                 ("analyze_batch", (images, ["one", "two"]))]
        for name, args in calls:
            assert_same(getattr(as_json, name)(*args), getattr(forms, name)(*args))
        both = as_json.encode_images(images)
        np.testing.assert_allclose(both.embeddings, forms.encode_images(images).embeddings, atol=1e-5)
        assert set(recording.kinds) == {"application/json"} and len(recording.kinds) == len(calls) + 1
        url = image_server.url("/cat.jpg")
        np.testing.assert_allclose(forms.encode_image(url), forms.encode_image(IMAGE), atol=1e-5)
        path = tmp_path / "cat.jpg"
        path.write_bytes(IMAGE)
        embedder = CLIPEmbedder(backend=forms)
        by_path, by_url = asyncio.run(embedder.generate_embeddings_batch([path, url], show_progress=False))
        np.testing.assert_allclose(by_path, by_url, atol=1e-5)
