"""The three bentos pin the project's own versions; the slim CPU bento packs no torch."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TORCH_STACK = {"torch", "torchvision", "open_clip_torch", "timm"}


def _pins(requirements: list[str]) -> dict[str, str]:
    return dict(re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", r.split("#")[0].strip()).groups() for r in requirements)


def _bento(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_bentos_pin_the_projects_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = _pins(project["dependencies"]) | _pins(project["optional-dependencies"]["openvino"])
    serving = {name for name in _pins(project["dependencies"]) if name not in TORCH_STACK}
    packages = {f: _pins(_bento(f)["python"]["packages"]) for f in
                ("bentofile.yaml", "bentofile.full.yaml", "bentofile.cuda.yaml")}
    for name, pins in packages.items():
        assert {p: pinned[p] for p in pins} == pins, name  # the versions tests run against
        assert serving <= set(pins), name
    assert set(packages["bentofile.yaml"]) == serving | {"openvino", "tokenizers"}  # slim: nothing else
    assert set(packages["bentofile.full.yaml"]) == set(pinned)  # full: torch, OpenVINO and NNCF
    assert set(packages["bentofile.cuda.yaml"]) == serving | TORCH_STACK


def test_cpu_bentos_build_on_the_projects_base_image() -> None:
    from deploy.container import BASE_IMAGE

    for name in ("bentofile.yaml", "bentofile.full.yaml"):
        assert _bento(name)["docker"]["base_image"] == BASE_IMAGE
