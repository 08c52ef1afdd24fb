"""The seeded shapes generator behind the demo model."""

from __future__ import annotations

import csv

import numpy as np

from clip_runner import synthetic_images


def test_label_set_and_prompts() -> None:
    assert len(synthetic_images.CATEGORIES) == len(synthetic_images.SHAPES) * len(synthetic_images.COLOURS) == 64
    assert len(set(synthetic_images.CATEGORIES)) == 64
    assert all("{}" in template for template in synthetic_images.PROMPT_TEMPLATES)


def test_generation_is_a_function_of_seed_and_index() -> None:
    first = [(scene, np.asarray(image)) for scene, image in synthetic_images.generate(6, seed=3)]
    again = [(scene, np.asarray(image)) for scene, image in synthetic_images.generate(10, seed=3)][:6]
    for (s1, a1), (s2, a2) in zip(first, again, strict=True):
        assert s1 == s2 and np.array_equal(a1, a2)  # a larger set starts with the smaller one
    other = [scene for scene, _ in synthetic_images.generate(6, seed=4)]
    assert other != [scene for scene, _ in first]


def test_images_show_the_captioned_colour_on_the_captioned_background() -> None:
    for scene, image in synthetic_images.generate(40, seed=9):
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        assert image.size == (224, 224) and image.mode == "RGB"
        background = np.array(synthetic_images.BACKGROUNDS[scene.background])
        colour = np.array(synthetic_images.COLOURS[scene.colour])
        assert (np.abs(pixels - background).max(axis=1) == 0).mean() > 0.4  # most of the image
        assert (np.abs(pixels - colour).max(axis=1) <= 12).mean() > 0.03  # the shape, jittered colour


def test_captions_always_name_the_shape_and_mostly_the_colour() -> None:
    scenes = [scene for scene, _ in synthetic_images.generate(400, seed=1)]
    assert all(scene.shape in scene.caption for scene in scenes)
    with_colour = np.mean([scene.colour in scene.caption for scene in scenes])
    assert abs(with_colour - synthetic_images.COLOUR_MENTION_RATE) < 0.07
    assert {scene.category for scene in scenes} >= set(synthetic_images.CATEGORIES[:8])


def test_write_dataset_makes_a_finetuning_csv(tmp_path) -> None:
    csv_path = synthetic_images.write_dataset(tmp_path, 5, seed=2, image_format="jpeg", image_size=64)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["image_path"] for r in rows] == [f"images/{i:06d}.jpg" for i in range(5)]
    assert all((tmp_path / r["image_path"]).read_bytes()[:3] == b"\xff\xd8\xff" for r in rows)
    assert all(r["category"] in synthetic_images.CATEGORIES and r["text"] for r in rows)
