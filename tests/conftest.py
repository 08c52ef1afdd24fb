"""Shared fixtures: a private model store with a tiny real open_clip model, and test images."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

# The model store location must be fixed before bentoml is imported anywhere.
_HOME = tempfile.mkdtemp(prefix="clip-test-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CONFIG = FIXTURES / "tiny_clip.json"


@pytest.fixture(autouse=True)
def _clean_clip_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from default settings, whatever CLIP_* variables the shell has."""
    for name in [n for n in os.environ if n.startswith("CLIP_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def bentoml_home() -> str:
    return _HOME


@pytest.fixture(scope="session")
def tiny_tag() -> str:
    """A tiny random open_clip model registered in the test store (real code path, ~14 MB)."""
    from clip_runner.registry import register_random

    return register_random(str(TINY_CONFIG), seed=0)


@pytest.fixture(scope="module")
def reference(tiny_tag: str):
    """The tiny model as plain open_clip loads it, with open_clip's own preprocess and tokenizer."""
    import open_clip

    from clip_runner.store import open_entry

    name = open_entry(tiny_tag).local_dir_name
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def unit_rows(x) -> np.ndarray:
    """L2-normalised float32 rows of a torch tensor."""
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1).detach().numpy()


def make_jpeg(seed: int = 0, size: tuple[int, int] = (96, 80), quality: int = 90) -> bytes:
    """A real JPEG with random smooth content (different per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_png(seed: int = 0, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8), mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def jpeg_bytes() -> bytes:
    return make_jpeg(0)
