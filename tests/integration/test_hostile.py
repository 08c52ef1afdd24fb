"""Hostile input over HTTP: every case gets a 4xx naming the problem; valid work is unharmed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_jpeg
from tests.payloads import BAD_IMAGES, GOOD_IMAGES, MULTIPART, chunked_upload, encode


@pytest.mark.parametrize(("case", "data", "status"), BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_is_refused_with_reason(client, case: str, data: bytes, status: int) -> None:
    resp = client.post("/encode_image", files={"image": ("upload", data, "application/octet-stream")})
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status and "image" in body["error"]


@pytest.mark.parametrize(("case", "data"), GOOD_IMAGES, ids=[c[0] for c in GOOD_IMAGES])
def test_unusual_but_valid_images_are_encoded(client, case: str, data: bytes) -> None:
    resp = client.post("/encode_image", files={"image": ("upload", data, "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()) == 32


def test_exif_rotation_is_applied(client) -> None:
    image = Image.new("RGB", (40, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated = encode(image, "JPEG", exif=exif)
    upright = encode(image.transpose(Image.Transpose.ROTATE_270), "JPEG")
    a = np.array(client.post("/encode_image", files={"image": ("a.jpg", rotated)}).json())
    b = np.array(client.post("/encode_image", files={"image": ("b.jpg", upright)}).json())
    assert float(a @ b) > 0.999


@pytest.mark.parametrize("text", ["😀🎉 emoji", "مرحبا بالعالم", "שלום עולם", "日本語のテキスト", "Ünïcödé ñ"])
def test_unicode_texts_are_encoded(client, text: str) -> None:
    resp = client.post("/encode_text", json={"text": text})
    assert resp.status_code == 200 and len(resp.json()) == 32


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"text": "nul\x00byte"}, "control"),
        ({"text": "   "}, "empty"),
        ({"text": "x" * 501}, "limit"),
        ({"text": {}}, "string"),
        ({"text": [1, 2]}, "string"),
        ({"text": None}, "string"),
        ({"text": []}, "at least one"),
        ({"text": ["ok"] * 65}, "limit"),
        ([], "'text' is required"),
        ("just a string", "'text' is required"),
    ],
)
def test_bad_texts_get_400(client, body, needle: str) -> None:
    resp = client.post("/encode_text", json=body)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


def test_too_many_items_get_400(client) -> None:
    files = [("images", (f"{i}.jpg", make_jpeg(i, size=(20, 20)))) for i in range(33)]
    resp = client.post("/encode_images", files=files)
    assert resp.status_code == 400 and "limit is 32" in resp.json()["error"]


def test_hostile_requests_do_not_disturb_valid_ones(client) -> None:
    good = make_jpeg(42)
    payloads = [data for _, data, _ in BAD_IMAGES] + [good] * 8

    def call(data: bytes):
        return client.post("/encode_image", files={"image": ("f", data)})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, payloads))
    good_rows = [np.array(r.json()) for r in responses[len(BAD_IMAGES):]]
    assert all(r.status_code == 200 for r in responses[len(BAD_IMAGES):])
    assert all(400 <= r.status_code < 500 for r in responses[: len(BAD_IMAGES)])
    assert all(np.allclose(g, good_rows[0], atol=1e-5) for g in good_rows)


def test_request_body_limit(client_with) -> None:
    client = client_with(max_request_bytes=5000)
    resp = client.post("/encode_image", files={"image": ("a.jpg", make_jpeg(0, size=(400, 400)))})
    assert resp.status_code == 413 and "CLIP_MAX_REQUEST_BYTES" in resp.json()["error"]

    streamed = client.post("/encode_image", content=chunked_upload(10_000), headers={"content-type": MULTIPART})
    assert streamed.status_code == 413
