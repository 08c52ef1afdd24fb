"""Shared fixtures: a private model store with a tiny real open_clip model, and test images."""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

# The model store location must be fixed before bentoml is imported anywhere.
_HOME = tempfile.mkdtemp(prefix="clip-test-bentoml-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # each run's store is hundreds of MB
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from bench.tokenizer_files import write_siglip_tokenizer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CONFIG = FIXTURES / "tiny_clip.json"
TINY_SIGLIP_CONFIG = FIXTURES / "tiny_siglip.json"  # a sigmoid model with a Hugging Face tokenizer
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"  # the bundled demo model's files


# What parity is measured at: fp32 on CPU, whatever the machine's fastest precision would be.
PINNED_FP32 = {"CLIP_DEVICE": "cpu", "CLIP_PRECISION": "fp32"}
# bf16 keeps 8 bits of mantissa. Measured worst cosine to the fp32 reference over 16 images and
# 8 texts: 0.99996 (images 0.99998, texts 0.99996); the bound allows 12x that distance from 1.
BF16_PARITY = 0.9995
# fp32 sits at 1 - 1.4e-7 at worst: anything closer than this was not served at bf16.
NOT_FP32 = 0.99999
# Tests serve through torch unless they name a runtime: CLIP_RUNTIME=auto would compile the
# model at every server start (tests/unit/test_compiled.py and tests/e2e/test_compiled.py test that).
TEST_DEFAULTS = {"CLIP_RUNTIME": "torch"}


def server_env(settings: Mapping[str, str]) -> dict[str, str]:
    """The environment for a test's server: the shell's, minus every ``CLIP_*`` variable, plus ``settings``.

    A fixture's server runs the settings its test names, never what the shell happens to export.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}
    return {**inherited, **TEST_DEFAULTS, **settings}


@contextlib.contextmanager
def clip_env(settings: Mapping[str, str]) -> Iterator[None]:
    """Within the block, the process's ``CLIP_*`` variables are exactly ``settings`` (restored after)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("CLIP_")}
    for name in saved:
        del os.environ[name]
    os.environ.update({**TEST_DEFAULTS, **settings})
    try:
        yield
    finally:
        for name in [n for n in os.environ if n.startswith("CLIP_")]:
            del os.environ[name]
        os.environ.update(saved)


# Parallel runs (pytest-xdist, `-n 2 --dist loadscope` in pyproject.toml): a test file runs whole on one
# worker, so its module-scoped server starts once. Files that share a costly session fixture run on
# the same worker (it is built once per worker); the longest groups are handed out first, so that
# none of them is left to run alone at the end.
XDIST_GROUPS = {
    "tests/e2e/test_loadtest.py": "bench",  # `bench.run --quick`: minutes of servers, one after another
    "tests/unit/test_compiled.py": "compiled",  # these three use compiled_tiny (three OpenVINO compiles)
    "tests/e2e/test_compiled_serve.py": "compiled",
    "tests/e2e/test_deploy.py": "compiled",
}
FIRST_GROUPS = ("bench", "compiled")


def xdist_group(nodeid: str) -> str:
    """The unit of work a test belongs to: its file, or the shared group above."""
    path = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(path, path)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling with :func:`xdist_group` as the scope. (Its ``xdist_group`` marks rename
    node ids, which pytest 9.2 no longer lets a plugin do: the marks are silently ignored.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long groups go first (the scheduler hands out units in collection order)."""
    rank = {name: i for i, name in enumerate(FIRST_GROUPS)}
    items.sort(key=lambda item: rank.get(xdist_group(item.nodeid), len(rank)))  # stable: otherwise as collected


def skip_unless_asked(items: list[pytest.Item], folder: str, variable: str, reason: str) -> None:
    """Skip the tests under ``folder`` unless ``variable`` is 1 (set by the make target that runs them)."""
    if os.environ.get(variable) == "1":
        return
    for item in (item for item in items if folder in item.nodeid):
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _clean_clip_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from default settings (and TEST_DEFAULTS), whatever CLIP_* variables the shell has."""
    for name in [n for n in os.environ if n.startswith("CLIP_")]:
        monkeypatch.delenv(name)
    for name, value in TEST_DEFAULTS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def bentoml_home() -> str:
    return _HOME


@pytest.fixture(scope="session")
def tiny_tag() -> str:
    """A tiny random open_clip model registered in the test store (real code path, ~14 MB)."""
    from clip_runner.store.registration import register_random

    return register_random(str(TINY_CONFIG), seed=0)


class Reference(NamedTuple):
    """A model as plain open_clip loads it, with open_clip's own preprocess and tokenizer.

    What the service's answers are checked against: nothing of the service's own pipeline.
    """

    model: Any
    preprocess: Any
    tokenizer: Any

    def images(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Unit image embeddings (N, D), fp32, of the files as PIL opens them."""
        import torch

        pixels = torch.stack([self.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
        with torch.no_grad():
            return unit_rows(self.model.encode_image(pixels))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text embeddings (N, D), fp32."""
        import torch

        with torch.no_grad():
            return unit_rows(self.model.encode_text(self.tokenizer(list(texts))))

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax temperature, as CLIP applies it (exp of the stored log)."""
        return float(self.model.logit_scale.detach().exp())


def open_clip_reference(model_dir: Path) -> Reference:
    """The open_clip model stored in ``model_dir`` (open_clip_config.json + weights), loaded by open_clip."""
    import open_clip

    name = f"local-dir:{model_dir}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return Reference(model.eval(), preprocess, open_clip.get_tokenizer(name))


@pytest.fixture(scope="module")
def reference(tiny_tag: str) -> Reference:
    """The tiny model as plain open_clip loads it from its store entry."""
    import bentoml

    return open_clip_reference(Path(bentoml.models.get(tiny_tag).path))


@pytest.fixture(scope="session")
def siglip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face tokenizer folder (what ``--tokenizer DIR`` takes)."""
    return write_siglip_tokenizer(tmp_path_factory.mktemp("siglip-tokenizer"))


@pytest.fixture(scope="session")
def tiny_siglip_tag(siglip_tokenizer: Path) -> str:
    """A tiny random sigmoid (SigLIP-style) model with its tokenizer, registered in the test store."""
    from clip_runner.store.registration import register_random

    return register_random(str(TINY_SIGLIP_CONFIG), seed=0, tokenizer=siglip_tokenizer)


@pytest.fixture(scope="module")
def siglip_reference(tiny_siglip_tag: str) -> Reference:
    """The tiny SigLIP as plain open_clip loads it from its store entry (its tokenizer through transformers)."""
    import bentoml

    return open_clip_reference(Path(bentoml.models.get(tiny_siglip_tag).path))


@pytest.fixture(scope="session")
def demo_tag() -> str:
    """The bundled demo model (models/demo/), registered in the test store."""
    from clip_runner.store.registration import register_demo

    return register_demo()


@pytest.fixture(scope="session")
def demo_reference() -> Reference:
    """The bundled demo model as plain open_clip loads it from its files."""
    return open_clip_reference(DEMO_DIR)


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


def assert_same(a: Any, b: Any, path: str = "body") -> None:
    """Equal JSON (or arrays), floats to 1e-5 (a batch's composition may move the last bits)."""
    a, b = (x.tolist() if isinstance(x, np.ndarray) else x for x in (a, b))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture
def jpeg_bytes() -> bytes:
    return make_jpeg(0)


@pytest.fixture(scope="session")
def compiled_tiny(tiny_tag: str) -> dict[str, str]:
    """The tiny model compiled for OpenVINO at each precision this CPU has (bf16 only where native): precision → tag."""
    from clip_runner.compile.openvino_compiler import compile_entries
    from clip_runner.runtimes.choice import candidate_precisions

    return compile_entries(tiny_tag, candidate_precisions("auto"), threads=2)


@pytest.fixture(scope="session")
def image_server() -> Iterator[Any]:
    """A local HTTP server with an image and hostile answers (tests.image_server)."""
    from tests.image_server import ImageServer

    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch, image_server: Any) -> Any:
    """The simulated internet of tests.image_server, for this test; gives the image server."""
    from tests.image_server import simulate_internet

    simulate_internet(monkeypatch, image_server)
    return image_server
