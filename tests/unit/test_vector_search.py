"""The vector search example: embedded Qdrant, the in-process backend and the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clip_client import CLIPEmbedder
from PIL import Image
from qdrant_client import QdrantClient

from clip_runner.settings import ClipSettings
from examples.vector_search import ImageIndex, main, point_id
from tests.conftest import make_jpeg

SIZE = 96


def _pattern(kind: str, colour: tuple[int, int, int]) -> Image.Image:
    """Distinct test pictures: solid, stripes, checks, a gradient, noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    masks = {
        "solid": np.ones((SIZE, SIZE), bool),
        "stripes": (yy // 12) % 2 == 0,
        "checks": ((yy // 16) + (xx // 16)) % 2 == 0,
        "diagonal": xx > yy,
    }
    if kind == "gradient":
        ramp = (xx / (SIZE - 1))[..., None]
        return Image.fromarray((ramp * np.array(colour)).astype(np.uint8))
    if kind == "noise":
        return Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[masks[kind]] = colour
    return Image.fromarray(pixels)


PICTURES = {
    "red.png": ("solid", (220, 30, 30)),
    "blue_stripes.png": ("stripes", (30, 60, 220)),
    "green_checks.png": ("checks", (40, 200, 60)),
    "yellow_diagonal.png": ("diagonal", (240, 220, 20)),
    "purple_gradient.png": ("gradient", (160, 40, 200)),
    "noise.png": ("noise", (0, 0, 0)),
}


@pytest.fixture(scope="module")
def embedder(tiny_tag: str) -> Iterator[CLIPEmbedder]:
    # Module-scoped, so built before the per-test environment cleanup: clear the variables here.
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(("CLIP_", "USE_LOCAL_CLIP", "LOCAL_CLIP_"))]:
            mp.delenv(name)
        emb = CLIPEmbedder(settings=ClipSettings(model_tag=tiny_tag, runtime="torch"))
    yield emb
    emb.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    for i, (name, (kind, colour)) in enumerate(PICTURES.items()):
        target = root / "nested" / name if i == 5 else root / name
        _pattern(kind, colour).save(target)
    (root / "notes.txt").write_text("not an image, not indexed")
    return root


@pytest.fixture
def index(embedder: CLIPEmbedder, tmp_path: Path) -> Iterator[ImageIndex]:
    qdrant = QdrantClient(path=str(tmp_path / "qdrant"))
    yield ImageIndex(embedder, qdrant, "test-images")
    qdrant.close()


def _names(paths: list[str]) -> set[str]:
    return {Path(p).name for p in paths}


async def test_index_then_query_by_image_finds_itself(index: ImageIndex, folder: Path) -> None:
    report = await index.index_folder(folder, batch_size=4, show_progress=False)
    assert _names(report.indexed) == set(PICTURES) and not report.skipped and not report.failed
    for name in ("red.png", "green_checks.png", "noise.png"):
        query = next(folder.rglob(name))
        hits = await index.search_image(query, limit=3)
        assert Path(hits[0].path) == query.resolve() and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert len(hits) == 3 and hits[1].score < hits[0].score


async def test_reindex_skips_unchanged_and_redoes_changed(index: ImageIndex, folder: Path) -> None:
    await index.index_folder(folder, show_progress=False)
    again = await index.index_folder(folder, show_progress=False)
    assert _names(again.skipped) == set(PICTURES) and not again.indexed

    changed, touched, gone = folder / "red.png", folder / "blue_stripes.png", folder / "yellow_diagonal.png"
    changed.write_bytes(make_jpeg(42))
    # Later mtimes, set explicitly: a rewrite within one filesystem timestamp tick must still count.
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, new mtime
    gone.unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")

    third = await index.index_folder(folder, show_progress=False)
    assert _names(third.indexed) == {"red.png"} and _names(third.failed) == {"broken.jpg"}
    assert _names(third.removed) == {"yellow_diagonal.png"}
    assert _names(third.skipped) == set(PICTURES) - {"red.png", "yellow_diagonal.png"}
    hits = await index.search_image(changed, limit=1)
    assert Path(hits[0].path) == changed.resolve() and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert not index.qdrant.retrieve(index.collection, [point_id(gone)])
    fourth = await index.index_folder(folder, show_progress=False)
    assert not fourth.indexed and len(fourth.skipped) == len(PICTURES) - 1


async def test_text_query_returns_ranked_paths(index: ImageIndex, folder: Path) -> None:
    await index.index_folder(folder, show_progress=False)
    hits = await index.search_text("a red square", limit=4)
    assert len(hits) == 4 and len({h.path for h in hits}) == 4
    assert all(Path(h.path).is_relative_to(folder.resolve()) and -1.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    everything = await index.search_text("a red square", limit=50)
    assert len(everything) == len(PICTURES)


async def test_search_before_index_is_a_clear_error(index: ImageIndex) -> None:
    with pytest.raises(LookupError, match="run 'index FOLDER' first"):
        await index.search_text("anything")


def test_cli(folder: Path, tmp_path: Path, tiny_tag: str, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("USE_LOCAL_CLIP", raising=False)  # in-process, whatever the shell says
    monkeypatch.setenv("CLIP_MODEL_TAG", tiny_tag)  # the CLI's embedder reads its model from CLIP_*
    store = ["--qdrant-path", str(tmp_path / "cli-qdrant"), "--collection", "cli"]
    assert main(["index", str(folder), *store]) == 0
    assert "indexed 6, skipped 0" in capsys.readouterr().out
    assert main(["index", str(folder), *store]) == 0
    assert "indexed 0, skipped 6" in capsys.readouterr().out
    assert main(["search", "--image", str(folder / "red.png"), "--limit", "2", *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith(str((folder / "red.png").resolve()))
    assert main(["search", "a red square", *store]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(PICTURES)
    with pytest.raises(SystemExit):
        main(["search", *store])  # neither a text nor --image


@pytest.mark.skipif(not (Path(__file__).parents[2] / "models/demo/open_clip_model.safetensors").is_file(),
                    reason="demo model not built (make demo)")
async def test_caption_finds_its_image_with_the_demo_model(tmp_path: Path) -> None:
    """With a model that means something, a caption's own image comes back first."""
    from clip_runner import synthetic_images
    from clip_runner.store.registration import register_demo

    root = tmp_path / "shapes"
    root.mkdir()
    seen: dict[str, str] = {}
    for index_no, (scene, image) in enumerate(synthetic_images.generate(200, seed=777)):
        if scene.category not in seen and len(seen) < 8:  # 8 images of 8 different categories
            name = f"{index_no:03d}.png"
            image.save(root / name)
            seen[scene.category] = name
    emb = CLIPEmbedder(settings=ClipSettings(model_tag=register_demo()))
    qdrant = QdrantClient(path=str(tmp_path / "qdrant"))
    try:
        index = ImageIndex(emb, qdrant, "shapes")
        await index.index_folder(root, show_progress=False)
        right = 0
        for category, name in seen.items():
            hits = await index.search_text(f"a picture of a {category}", limit=3)
            right += Path(hits[0].path).name == name
        assert right >= 7, f"{right}/8 captions found their image first"
    finally:
        qdrant.close()
        emb.close()
