"""Hostile and unusual request payloads, shared by the in-process and the real-server tests."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
from PIL import Image

from tests.conftest import make_jpeg


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels but carries no image data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    """``image`` saved in ``fmt``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


BOMB = png_header_only(100_000, 100_000)

# (case, bytes, expected status) — all of them must be refused cleanly.
BAD_IMAGES = [
    ("zero bytes", b"", 400),
    ("random bytes", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), 415),
    ("truncated jpeg", make_jpeg(1, size=(300, 300))[:400], 400),
    ("truncated png", encode(Image.new("RGB", (300, 300), "red"), "PNG")[:60], 400),
    ("png declaring 100000x100000", BOMB, 413),
    ("svg", b"<svg xmlns='http://www.w3.org/2000/svg'><rect width='9' height='9'/></svg>", 415),
    ("html", b"<!DOCTYPE html><html><body>hi</body></html>", 415),
    ("jpeg+html polyglot", b"<html>" + make_jpeg(2), 415),
    ("url in the file", b"https://example.com/cat.jpg", 415),
    ("server path in the file", b"/etc/passwd", 415),
    ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\n", 415),
]

GOOD_IMAGES = [
    ("cmyk jpeg", encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")),
    ("progressive jpeg", encode(Image.new("RGB", (64, 48), "blue"), "JPEG", progressive=True)),
    ("16-bit png", encode(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG")),
    ("palette+alpha png", encode(Image.new("RGBA", (20, 20), (255, 0, 0, 0)).convert("P"), "PNG")),
    ("animated gif", encode(Image.new("RGB", (16, 16), "red"), "GIF", save_all=True,
                            append_images=[Image.new("RGB", (16, 16), "blue")])),
    ("animated webp", encode(Image.new("RGB", (16, 16), "red"), "WEBP", save_all=True,
                             append_images=[Image.new("RGB", (16, 16), "blue")])),
]

BOUNDARY = "x"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def part_header(field: str = "image", filename: str = "a.jpg") -> bytes:
    """The opening of a multipart body whose first part is the file ``field``."""
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()


def chunked_upload(total_bytes: int, chunk: int = 1000) -> Iterator[bytes]:
    """A multipart body streamed in chunks (sent with Transfer-Encoding: chunked, no Content-Length)."""
    yield part_header()
    for start in range(0, total_bytes, chunk):
        yield b"\xff" * min(chunk, total_bytes - start)


def part_end() -> bytes:
    """The close of the multipart body :func:`part_header` opened."""
    return f"\r\n--{BOUNDARY}--\r\n".encode()


def held_upload(url: str, image: bytes, release: threading.Event, timeout_s: float = 120,
                headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``image`` to ``url``/encode_image, holding the body back until ``release`` is set.

    The server has the request (headers and the first part) and waits for the rest: a request
    known to be in flight for exactly as long as the test decides.
    """
    def body() -> Iterator[bytes]:
        yield part_header()
        if not release.wait(timeout_s):
            raise TimeoutError("the held upload was never released")
        yield image + part_end()

    return httpx.post(f"{url}/encode_image", content=body(), headers={"content-type": MULTIPART, **(headers or {})},
                      timeout=timeout_s)
