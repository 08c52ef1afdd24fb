"""Load test for clip-service: one locust user class per public route.

    make loadtest                                        # headless, all routes, CSV + HTML report
    LOADTEST_TAGS=image make loadtest                    # only the image routes
    .venv/bin/locust -f locustfile.py --host http://localhost:3000   # interactive web UI

Scenarios are locust tags, chosen with ``--tags`` (or ``LOADTEST_TAGS`` for ``make loadtest``):

* ``image`` — ``/encode_image``, ``/encode_images``
* ``text`` — ``/encode_text``
* ``mixed`` — routes that take an image and texts: ``/similarity``, ``/analyze``,
  ``/analyze_batch``, ``/classify``
* ``openai`` — ``/v1/embeddings``: texts, or photos as base64 items of ``input``
* one tag per route, named after it without the slash (``encode_image``, ``classify``, ...;
  ``v1_embeddings``)

Users loop without think time: the point is throughput. Any 4xx/5xx, and any 200 whose body
does not have the documented shape, counts as a failure; the payloads are always valid.

Payloads are made once at startup, seeded (``LOADTEST_SEED``, default 0): photo-like JPEGs of
about 0.3, 2 and 12 megapixels (picked 50 / 35 / 15 %), and 1..16 product texts per text
request. Requests carrying several images use only the ≤ 2 MP photos, so that a request stays
a realistic upload. ``LOADTEST_IMAGES=dir`` uses the JPEG/PNG/WebP files in ``dir`` instead.
``CLIP_API_KEY``, when set, is sent as ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import base64
import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, constant, events, tag, task
from locust.runners import MasterRunner

from bench import PHOTO_SIZES, photo_jpeg

#: Share of requests per photo size (single-image requests).
SIZE_WEIGHTS: dict[str, float] = {"0.3MP": 0.50, "2MP": 0.35, "12MP": 0.15}
PHOTOS_PER_SIZE = 3
MAX_TEXTS = 16
MAX_IMAGES_PER_REQUEST = 4
#: Multi-image requests stay under this many pixels per image (see the module docstring).
BATCH_IMAGE_MAX_PIXELS = 2_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

COLOURS = ("red", "black", "white", "navy blue", "beige", "green", "brown", "grey", "pink", "yellow")
MATERIALS = ("leather", "cotton", "denim", "wool", "suede", "canvas", "silk", "linen", "nylon", "rubber")
PRODUCTS = ("sneakers", "ankle boots", "sandals", "t-shirt", "summer dress", "jeans", "rain jacket",
            "handbag", "backpack", "wristwatch", "sunglasses", "baseball cap", "scarf", "belt")
TEMPLATES = ("a photo of {c} {m} {p}", "{c} {p}", "{m} {p} for women", "men's {c} {m} {p}",
             "{p} in {c}, {m}", "a close-up product shot of a {c} {p}")


@dataclass(frozen=True)
class Photo:
    """One upload: its name, bytes and pixel count."""

    name: str
    data: bytes
    pixels: int

    @functools.cached_property
    def base64(self) -> str:
        """The bytes as a JSON body carries them (encoded once, not per request)."""
        return base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class Payloads:
    """Everything the users send, made once per process."""

    photos: tuple[Photo, ...]
    weights: tuple[float, ...]

    @property
    def small_photos(self) -> tuple[Photo, ...]:
        """Photos for multi-image requests (all of them when none is small enough)."""
        small = tuple(p for p in self.photos if p.pixels <= BATCH_IMAGE_MAX_PIXELS)
        return small or self.photos


def _generated_photos(seed: int) -> tuple[tuple[Photo, ...], tuple[float, ...]]:
    photos, weights = [], []
    for label, (width, height) in PHOTO_SIZES.items():
        for i in range(PHOTOS_PER_SIZE):
            data = photo_jpeg(seed * 1000 + len(photos), (width, height))
            photos.append(Photo(f"{label}-{i}.jpg", data, width * height))
            weights.append(SIZE_WEIGHTS[label] / PHOTOS_PER_SIZE)
    return tuple(photos), tuple(weights)


def _folder_photos(folder: Path) -> tuple[tuple[Photo, ...], tuple[float, ...]]:
    from PIL import Image

    if not folder.is_dir():
        raise SystemExit(f"LOADTEST_IMAGES={folder}: not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"LOADTEST_IMAGES={folder}: no {'/'.join(IMAGE_SUFFIXES)} files there")
    photos = []
    for path in files:
        with Image.open(path) as image:
            pixels = image.width * image.height
        photos.append(Photo(path.name, path.read_bytes(), pixels))
    return tuple(photos), tuple(1.0 for _ in photos)


@functools.cache
def payloads() -> Payloads:
    """The process's payloads: ``LOADTEST_IMAGES`` if set, else generated photos."""
    folder = os.environ.get("LOADTEST_IMAGES")
    if folder:
        photos, weights = _folder_photos(Path(folder))
    else:
        photos, weights = _generated_photos(int(os.environ.get("LOADTEST_SEED", "0")))
    return Payloads(photos, weights)


def product_texts(rng: random.Random, n: int) -> list[str]:
    """``n`` short product descriptions, like those shops send."""
    return [rng.choice(TEMPLATES).format(c=rng.choice(COLOURS), m=rng.choice(MATERIALS), p=rng.choice(PRODUCTS))
            for _ in range(n)]


def auth_headers() -> dict[str, str]:
    """The bearer header when ``CLIP_API_KEY`` is set."""
    key = os.environ.get("CLIP_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


# ---- response shape checks: a 200 with the wrong body is a failure too ----------------------

def _is_vector(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, float) for x in value)


def _is_vectors(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(_is_vector(v) for v in value)


def _has_keys(*keys: str) -> Callable[[Any], bool]:
    return lambda body: isinstance(body, dict) and all(k in body for k in keys)


# ---- users ------------------------------------------------------------------------------------

class ClipUser(HttpUser):
    """Shared plumbing: payload choice, auth header and response checking."""

    abstract = True
    wait_time = constant(0)  # closed loop: each user sends its next request at once

    def on_start(self) -> None:
        seed = int(os.environ.get("LOADTEST_SEED", "0"))
        self.rng = random.Random(f"{seed}-{type(self).__name__}-{id(self)}")
        self.data = payloads()

    def photo(self) -> Photo:
        return self.rng.choices(self.data.photos, weights=self.data.weights)[0]

    def photos(self) -> list[Photo]:
        return self.rng.choices(self.data.small_photos, k=self.rng.randint(1, MAX_IMAGES_PER_REQUEST))

    def texts(self) -> list[str]:
        return product_texts(self.rng, self.rng.randint(1, MAX_TEXTS))

    def post(self, route: str, check: Callable[[Any], bool], **kwargs: Any) -> None:
        """POST and mark the request failed unless it is a 2xx whose JSON body passes ``check``."""
        with self.client.post(route, name=route, headers=auth_headers(), catch_response=True, **kwargs) as resp:
            if not resp.ok:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            try:
                body = resp.json()
            except ValueError:
                resp.failure("response is not JSON")
                return
            if not check(body):
                resp.failure(f"unexpected response shape: {resp.text[:200]}")


def _file(field: str, photo: Photo) -> tuple[str, tuple[str, bytes, str]]:
    return field, (photo.name, photo.data, "image/jpeg" if photo.name.endswith((".jpg", ".jpeg")) else "")


class EncodeImageUser(ClipUser):
    """``POST /encode_image``: one photo."""

    @tag("image", "encode_image")
    @task
    def encode_image(self) -> None:
        self.post("/encode_image", _is_vector, files=[_file("image", self.photo())])


class EncodeImagesUser(ClipUser):
    """``POST /encode_images``: 1..4 photos in one request."""

    @tag("image", "encode_images")
    @task
    def encode_images(self) -> None:
        photos = self.photos()
        self.post("/encode_images", lambda b: _has_keys("embeddings", "errors")(b)
                  and _is_vectors(b["embeddings"], len(photos)),
                  files=[_file("images", p) for p in photos])


class EncodeTextUser(ClipUser):
    """``POST /encode_text``: 1..16 texts (one text is sent as a string, as clients do)."""

    @tag("text", "encode_text")
    @task
    def encode_text(self) -> None:
        texts = self.texts()
        if len(texts) == 1:
            self.post("/encode_text", _is_vector, json={"text": texts[0]})
        else:
            self.post("/encode_text", lambda b: _is_vectors(b, len(texts)), json={"text": texts})


class SimilarityUser(ClipUser):
    """``POST /similarity``: one photo against 1..16 texts."""

    @tag("mixed", "similarity")
    @task
    def similarity(self) -> None:
        self.post("/similarity", _has_keys("results", "similarities", "best_match"),
                  files=[_file("image", self.photo())], data={"texts": self.texts()})


class AnalyzeUser(ClipUser):
    """``POST /analyze``: one photo and its listing text."""

    @tag("mixed", "analyze")
    @task
    def analyze(self) -> None:
        self.post("/analyze", _has_keys("similarity", "is_mismatch", "threshold"),
                  files=[_file("image", self.photo())], data={"text": product_texts(self.rng, 1)[0]})


class AnalyzeBatchUser(ClipUser):
    """``POST /analyze_batch``: 1..4 photos, each paired with a text."""

    @tag("mixed", "analyze_batch")
    @task
    def analyze_batch(self) -> None:
        photos = self.photos()
        self.post("/analyze_batch", lambda b: _has_keys("results")(b) and len(b["results"]) == len(photos),
                  files=[_file("images", p) for p in photos], data={"texts": product_texts(self.rng, len(photos))})


class ClassifyUser(ClipUser):
    """``POST /classify``: half over the default categories, half over 2..16 given ones."""

    @tag("mixed", "classify")
    @task
    def classify(self) -> None:
        data: dict[str, Any] = {"top_k": "5"}
        if self.rng.random() < 0.5:
            data["categories"] = self.rng.sample(PRODUCTS, self.rng.randint(2, len(PRODUCTS)))
        self.post("/classify", _has_keys("predictions", "top_category"),
                  files=[_file("image", self.photo())], data=data)


class OpenAIEmbeddingsUser(ClipUser):
    """``POST /v1/embeddings``: half 1..16 texts, half 1..4 photos as base64 ``{"image"}`` items."""

    @tag("openai", "v1_embeddings")
    @task
    def embeddings(self) -> None:
        items: list[Any] = self.texts() if self.rng.random() < 0.5 else [{"image": p.base64} for p in self.photos()]
        self.post("/v1/embeddings", lambda b: _has_keys("data", "usage")(b) and _is_vectors(
            [d["embedding"] for d in b["data"]], len(items)), json={"model": "clip", "input": items})


USER_CLASSES: tuple[type[ClipUser], ...] = (EncodeImageUser, EncodeImagesUser, EncodeTextUser, SimilarityUser,
                                            AnalyzeUser, AnalyzeBatchUser, ClassifyUser, OpenAIEmbeddingsUser)


@events.init.add_listener
def _make_payloads(environment: Any, **_: Any) -> None:
    # Before the clock starts: generating the 12 MP photos takes seconds of CPU.
    if not isinstance(environment.runner, MasterRunner):
        payloads()
        # gevent's loop caches its clock; refresh it so that --run-time does not count the
        # seconds spent above.
        gevent.get_hub().loop.update_now()


@events.test_start.add_listener
def _drop_users_without_tasks(environment: Any, **_: Any) -> None:
    # With --tags, users of the other routes have no task left; locust would still spawn them
    # and they would fail. Keep only users that have something to do.
    keep = [u for u in environment.user_classes if u.tasks]
    if keep and len(keep) < len(environment.user_classes):
        environment.user_classes[:] = keep
