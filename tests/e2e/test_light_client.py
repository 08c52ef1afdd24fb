"""clip-service-client on its own: a fresh venv with only the client and its few dependencies, against `bentoml serve`.

The venv is built offline: the client's wheel is installed with ``--no-index --no-deps``, and its
dependencies (httpx, numpy, tqdm and what they need) are made visible through a ``.pth`` file
that points at a private folder of links into this environment's site-packages. Nothing else of
this environment (torch, bentoml, open_clip, PIL, pydantic, the service's code) is reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clip_client import ClipClient
from packaging.requirements import Requirement

from tests.conftest import make_jpeg
from tests.e2e.conftest import ROOT, Server

pytestmark = pytest.mark.slow

CLIENT_DEPENDENCIES = ("httpx", "numpy", "tqdm")
SCRIPT = Path(__file__).with_name("light_client_script.py")


def _distributions(names: tuple[str, ...]) -> set[str]:
    """The named distributions and everything they require (extras left out), by name."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_dependencies(folder: Path) -> None:
    """Links in ``folder`` to the top-level files of the client's dependencies (and their metadata)."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for name in _distributions(CLIENT_DEPENDENCIES):
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = site / top
            if top not in ("..", "__pycache__") and source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)


def _run(*command: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "USE_LOCAL_CLIP",
                                                                     "LOCAL_CLIP_", "CLIP_"))}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding clip-service-client and nothing of the full install."""
    root = tmp_path_factory.mktemp("light")
    source = root / "client-src"  # built from a copy: a build writes its metadata beside the sources
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
         "-w", root / "wheels", source, cwd=root)
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=root)
    python = venv / "bin" / "python"
    wheel = next((root / "wheels").glob("clip_service_client-*.whl"))
    _run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel, cwd=root)
    _link_dependencies(root / "deps")
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip()
    (Path(site) / "clip_client_deps.pth").write_text(f"{root / 'deps'}\n")
    return python


def test_light_client_against_a_live_server(light_python: Path, server: Server, tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_jpeg(7, size=(160, 120)))
    out: dict[str, Any] = json.loads(_run(light_python, "-I", SCRIPT, server.url, image, cwd=tmp_path))

    assert out["missing"] == ["torch", "bentoml", "open_clip", "PIL", "pydantic", "clip_runner", "clip_http"]
    assert out["loaded"] == []
    with ClipClient(server.url) as full:  # the full install's client, same server, same file
        expected = full.encode_image(image)
        texts = full.encode_text(["a red shoe", "a blue bag"])
    for key in ("image", "async_image", "embedder_image"):
        np.testing.assert_allclose(np.asarray(out[key], dtype=np.float32), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["texts"], dtype=np.float32), texts, rtol=0, atol=1e-5)
    assert out["error"] == [400, "text"] and out["async_best"] in ("a photo", "a drawing")
    assert out["embedder_rows"] == 2 and out["embedder_dimension"] == expected.shape[0] == 32
    assert "full clip-service install" in out["in_process_error"] and "USE_LOCAL_CLIP=true" in out["in_process_error"]
