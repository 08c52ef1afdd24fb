"""Hostile input against a real `bentoml serve` with an API key: each is refused with its status, and
a good request on the same server succeeds right after it. The server is started while the shell
exports hostile CLIP_* settings, which must not reach it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from clip_runner.settings import CPU_BATCH_SIZE
from tests.conftest import make_jpeg
from tests.e2e.conftest import Server, start_server, stop_server
from tests.payloads import BAD_IMAGES, BOMB, MULTIPART, chunked_upload

pytestmark = pytest.mark.slow

KEY = "test-key-0123"
MAX_REQUEST_BYTES = 200_000
# Exported by the shell when the server starts; each would show in /health or in behaviour.
SHELL = {"CLIP_MAX_TEXTS": "1", "CLIP_SIMILARITY_THRESHOLD": "0.9", "CLIP_BATCH_SIZE": "3",
         "CLIP_MAX_IMAGE_PIXELS": "1"}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def hostile_server(tiny_tag: str, tmp_path_factory) -> Iterator[Server]:
    settings = {"CLIP_MODEL_TAG": tiny_tag, "CLIP_API_KEY": KEY, "CLIP_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)}
    with pytest.MonkeyPatch.context() as shell:
        for name, value in SHELL.items():
            shell.setenv(name, value)
        srv = start_server(settings, tmp_path_factory.mktemp("hostile") / "serve.log")
    yield srv
    stop_server(srv)


@pytest.fixture
def client(hostile_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.url, headers=AUTH, timeout=60) as c:
        yield c


def _still_serves(client: httpx.Client) -> None:
    resp = client.post("/encode_image", files={"image": ("ok.jpg", make_jpeg(5), "image/jpeg")})
    assert resp.status_code == 200 and len(resp.json()) == 32, resp.text


def test_the_shells_clip_variables_never_reach_the_server(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["batching"]["max_batch_size"] == CPU_BATCH_SIZE  # the default, not the shell's 3
    assert (health["threshold"], health["threshold_source"]) == (0.25, "default")
    assert client.post("/encode_text", json={"text": ["a", "b"]}).status_code == 200
    _still_serves(client)  # 5 000 pixels: over the shell's CLIP_MAX_IMAGE_PIXELS


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    # A generator body goes out with Transfer-Encoding: chunked and no Content-Length.
    resp = client.post("/encode_image", content=chunked_upload(2 * MAX_REQUEST_BYTES),
                       headers={"content-type": MULTIPART})
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert resp.status_code == 413 and "CLIP_MAX_REQUEST_BYTES" in resp.json()["error"]
    _still_serves(client)


def test_declared_body_over_the_limit_is_413(client: httpx.Client) -> None:
    resp = client.post("/encode_image", files={"image": ("big.jpg", b"\xff" * (MAX_REQUEST_BYTES + 1))})
    assert resp.status_code == 413 and "CLIP_MAX_REQUEST_BYTES" in resp.json()["error"]
    _still_serves(client)


def test_decompression_bomb_is_413_before_decoding(client: httpx.Client) -> None:
    # 10^10 pixels declared in a 57-byte file: refused from the header alone, no pixel decoded.
    resp = client.post("/encode_image", files={"image": ("bomb.png", BOMB, "image/png")})
    assert resp.status_code == 413 and "image" in resp.json()["error"], resp.text
    _still_serves(client)


@pytest.mark.parametrize(("case", "data", "status"), BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_is_refused_with_reason(client: httpx.Client, case: str, data: bytes, status: int) -> None:
    resp = client.post("/encode_image", files={"image": ("upload", data, "application/octet-stream")})
    assert resp.status_code == status, resp.text
    assert resp.json()["status"] == status and "image" in resp.json()["error"]
    _still_serves(client)


def test_api_key(hostile_server: Server) -> None:
    url, body = f"{hostile_server.url}/encode_text", {"text": "hi"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        resp = httpx.post(url, json=body, headers=headers, timeout=30)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["WWW-Authenticate"] == "Bearer" and "API key" in resp.json()["error"]
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 200, headers
    for path in ("/health", "/clip/health"):  # open, so probes need no key
        assert httpx.get(f"{hostile_server.url}{path}", timeout=10).status_code == 200
