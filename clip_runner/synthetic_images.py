"""Seeded generator of captioned shape images, the training and evaluation data of the demo model
(docs/demo-and-finetuning.md). Each image is a pure function of the seed and its index."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
# No colour starts with a vowel, so "a {colour} {shape}" is always grammatical.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (40, 170, 60), "blue": (35, 75, 225), "yellow": (245, 215, 30),
    "purple": (135, 55, 190), "pink": (250, 135, 190), "cyan": (50, 210, 225), "brown": (125, 75, 35),
}
# Shape size as a fraction of the image side (the diameter of its bounding circle).
SIZES: dict[str, float] = {"small": 0.36, "medium": 0.5, "large": 0.64}
# Centre of the shape as fractions of (width, height), with the caption phrase.
POSITIONS: dict[str, tuple[float, float, str]] = {
    "top left": (0.32, 0.32, "at the top left"), "top": (0.5, 0.32, "at the top"),
    "top right": (0.68, 0.32, "at the top right"), "left": (0.32, 0.5, "on the left"),
    "center": (0.5, 0.5, "in the center"), "right": (0.68, 0.5, "on the right"),
    "bottom left": (0.32, 0.68, "at the bottom left"), "bottom": (0.5, 0.68, "at the bottom"),
    "bottom right": (0.68, 0.68, "at the bottom right"),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "beige": (225, 210, 175),
}
CAPTION_PREFIXES: tuple[str, ...] = ("a", "a picture of a", "a drawing of a")
# Zero-shot prompts: the same phrasings the captions use.
PROMPT_TEMPLATES: tuple[str, ...] = tuple(f"{prefix} {{}}" for prefix in CAPTION_PREFIXES)
CATEGORIES: tuple[str, ...] = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)

IMAGE_SIZE = 224
COLOUR_MENTION_RATE = 0.75
_COLOUR_JITTER = 12  # per channel, so colour names cover a small range rather than one value
_POSITION_JITTER = 0.02  # of the image side
_MAX_ROTATION_DEG = 10.0


@dataclasses.dataclass(frozen=True)
class ShapeScene:
    """What one generated image shows, and the caption that describes it."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    caption: str

    @property
    def category(self) -> str:
        """The zero-shot label, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"


def sample_scene(rng: np.random.Generator) -> ShapeScene:
    """Draw the attributes of one image uniformly, and a caption for them."""
    drawn_from = (SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS)  # in this order: the seeds' streams depend on it
    attributes = [list(options)[rng.integers(len(options))] for options in drawn_from]
    return ShapeScene(*attributes, caption=_caption(rng, *attributes))


def _caption(rng: np.random.Generator, shape: str, colour: str, size: str, position: str, background: str) -> str:
    # The shape is always named; size, position and background half of the time each. The
    # colour is left out of a quarter of the captions: colour alone is so easy to see that with
    # it in every caption training stalls on colour, and captions that can only be matched by
    # shape are what teach both towers to tell shapes apart.
    with_size, with_position, with_background = rng.random(3) < 0.5
    with_colour = rng.random() < COLOUR_MENTION_RATE
    words = [CAPTION_PREFIXES[rng.integers(len(CAPTION_PREFIXES))]]
    if with_size:
        words.append(size)
    words += [colour, shape] if with_colour else [shape]
    if with_position:
        words.append(POSITIONS[position][2])
    if with_background:
        words.append(f"on a {background} background")
    return " ".join(words)


def render(scene: ShapeScene, rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image (colour, position and rotation jittered by ``rng``)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    fx, fy, _ = POSITIONS[scene.position]
    cx, cy = (np.array([fx, fy]) + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, 2)) * image_size
    radius = SIZES[scene.size] * image_size / 2
    angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[scene.colour]) + jitter, 0, 255))
    draw = ImageDraw.Draw(image)
    if scene.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
                      for x, y in _OUTLINES[scene.shape]], fill=fill)
    return image


def _regular(sides: int, start_deg: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / sides
    start = math.radians(start_deg)
    return [(math.cos(start + i * step), math.sin(start + i * step)) for i in range(sides)]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    radii_angles = [(1.0 if i % 2 == 0 else inner, -math.pi / 2 + i * math.pi / points) for i in range(2 * points)]
    return [(r * math.cos(a), r * math.sin(a)) for r, a in radii_angles]


def _cross(arm: float = 0.33) -> list[tuple[float, float]]:
    a, b = arm, 0.9
    return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]


def _heart(steps: int = 48) -> list[tuple[float, float]]:
    # The classic parametric heart, scaled into the unit circle (y grows downwards in images).
    ts = [2 * math.pi * i / steps for i in range(steps)]
    ys = [13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t) for t in ts]
    return [(16 * math.sin(t) ** 3 / 17.0, -(y + 2.5) / 17.0) for t, y in zip(ts, ys, strict=True)]


# Outlines in unit coordinates (radius 1 around the centre), drawn scaled to the shape size.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(x * 0.75, y * 0.75) for x, y in ((-1, -1), (1, -1), (1, 1), (-1, 1))],
    "triangle": _regular(3, -90),
    "star": _star(),
    "cross": _cross(),
    "diamond": [(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)],
    "hexagon": _regular(6, 0),
    "heart": _heart(),
}


def generate(count: int, seed: int, image_size: int = IMAGE_SIZE) -> Iterator[tuple[ShapeScene, Image.Image]]:
    """``count`` (scene, image) pairs of the set ``seed``."""
    for index in range(count):
        rng = np.random.default_rng([seed, index])  # image ``index``'s own stream
        scene = sample_scene(rng)
        yield scene, render(scene, rng, image_size)


def write_dataset(out_dir: str | Path, count: int, seed: int, *, image_format: str = "png",
                  image_size: int = IMAGE_SIZE) -> Path:
    """Write ``count`` images and ``captions.csv`` (image_path relative to ``out_dir``, text, category) into
    ``out_dir``; returns the CSV path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    suffix = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}[image_format.lower()]
    options = {"format": "PNG", "optimize": False} if suffix == "png" else {"format": "JPEG", "quality": 92}
    csv_path = out / "captions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_path", "text", "category"])
        for index, (scene, image) in enumerate(generate(count, seed, image_size)):
            relative = f"images/{index:06d}.{suffix}"
            image.save(out / relative, **options)
            writer.writerow([relative, scene.caption, scene.category])
    return csv_path


def photo_like(seed: int, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Image.Image:
    """An RGB image of ``size`` (width, height) with a photo's statistics, a pure function of ``seed``: a smooth
    colour field, mid-frequency detail and a little sensor grain. It compresses and decodes like a camera JPEG,
    and its activations look more like a photo's than a flat shape's do (compiling calibrates on such images)."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = _upsampled(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), size)
    detail = _upsampled(rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8), size)
    pixels = np.asarray(Image.blend(base, detail, 0.25), dtype=np.int16)
    pixels += rng.integers(-5, 6, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _upsampled(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)
