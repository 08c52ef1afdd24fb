"""Store entries: layout, metadata, integrity and resolution of settings to tags."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from clip_runner.errors import ModelNotAvailable
from clip_runner.settings import ClipSettings
from clip_runner.store.entries import CONFIG_FILE, WEIGHTS_FILE, list_entries, open_entry, store_name
from clip_runner.store.registration import register_random
from clip_runner.store.selection import parse_model_name, select_model
from clip_runner.store.weights import load_entry
from models import __main__ as cli
from tests.conftest import TINY_CONFIG


def test_entry_layout_and_metadata(tiny_tag: str) -> None:
    entry = open_entry(tiny_tag)
    assert (entry.path / WEIGHTS_FILE).is_file() and (entry.path / CONFIG_FILE).is_file()
    assert not list(entry.path.glob("*.pt")) and not list(entry.path.glob("*.bin"))
    assert entry.labels == {"arch": "tiny_clip", "pretrained": "random-init", "source": "random-init"}
    meta = entry.metadata
    assert meta["embedding_size"] == 32 and meta["context_length"] == 77
    assert meta["image_size"] == [64, 64] and len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert len(meta["weights_sha256"]) == 64 and meta["open_clip_version"]
    assert meta["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
    assert tiny_tag in [e.tag for e in list_entries()]


def test_tampered_weights_fail_at_load(tmp_path: Path) -> None:
    tag = register_random(str(TINY_CONFIG), seed=1, name="clip-tamper-test")
    weights = open_entry(tag).path / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailable, match="does not match"):
        load_entry(tag, torch.device("cpu"))


def test_missing_tag_is_a_clear_error() -> None:
    with pytest.raises(ModelNotAvailable, match="python -m models register"):
        open_entry("clip-nothing-here:latest")


@pytest.mark.parametrize(
    ("name", "pretrained", "arch", "tag", "repo"),
    [
        ("ViT-B-32", None, "ViT-B-32", "openai", None),
        ("ViT-B/32", None, "ViT-B-32", "openai", None),
        ("openai/clip-vit-base-patch32", None, "ViT-B-32", "openai", None),
        ("openai/clip-vit-large-patch14", None, "ViT-L-14", "openai", None),
        ("ViT-B-16", "laion2b_s34b_b88k", "ViT-B-16", "laion2b_s34b_b88k", None),
        ("hf-hub:org/repo", None, "hf-hub:org/repo", None, "org/repo"),
        ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None, None, None, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ],
)
def test_parse_model_name(name, pretrained, arch, tag, repo) -> None:
    ref = parse_model_name(name, pretrained)
    assert ref.hub_repo == repo
    if repo is None:
        assert (ref.arch, ref.pretrained) == (arch, tag)


def test_store_name() -> None:
    assert store_name("ViT-B-32", "openai") == "clip-vit-b-32-openai"
    assert parse_model_name("openai/clip-vit-base-patch32", None).store_name == "clip-vit-b-32-openai"


def test_resolve_order(tiny_tag: str, tmp_path: Path) -> None:
    assert select_model(ClipSettings(model_tag=tiny_tag)).tag == tiny_tag
    # A name already in the store is used without any download.
    tag = register_random(str(TINY_CONFIG), name=store_name("tiny-arch", "openai"))
    found = select_model(ClipSettings(model_name="tiny-arch", allow_download=False))
    assert found.tag == tag and "found in store" in found.reason
    with pytest.raises(ModelNotAvailable, match="downloading is disabled"):
        select_model(ClipSettings(model_name="ViT-B-16", allow_download=False))


def test_checkpoint_directory_registers_once(tiny_tag: str, tmp_path: Path) -> None:
    checkpoint = tmp_path / "finetuned"
    shutil.copytree(open_entry(tiny_tag).path, checkpoint)
    settings = ClipSettings(model_path=str(checkpoint), model_name="tiny_clip")
    first = select_model(settings)
    assert "registered now" in first.reason and open_entry(first.tag).labels["source"] == "checkpoint"
    second = select_model(settings)
    assert second.tag == first.tag and "found in store" in second.reason
    cfg = json.loads((open_entry(first.tag).path / CONFIG_FILE).read_text())
    assert cfg["model_cfg"]["embed_dim"] == 32


def test_cli_register_and_list(bentoml_home: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's own entry point, in process (tests/unit/test_layers.py runs `models list` as a process)."""
    assert cli.main(["register", "--random-init", str(TINY_CONFIG), "--name", "clip-cli-test"]) == 0
    out = capsys.readouterr()
    tag = out.out.strip().splitlines()[-1]
    assert tag.startswith("clip-cli-test:")
    assert "RANDOM weights" in out.err
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert tag in listing and "random-init" in listing
    assert cli.main(["register", "--checkpoint", "/nonexistent.pt"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_library_never_imports_the_command_line() -> None:
    """`models/` is the command line only; the library reads its demo folder by path, never imports it."""
    root = Path(__file__).resolve().parents[2]
    library = [root / "service.py", *(p for folder in ("clip_runner", "clip_http", "deploy")
                                      for p in (root / folder).rglob("*.py"))]
    importing = [p.name for p in library if re.search(r"^\s*(from|import) models\b", p.read_text(), re.MULTILINE)]
    assert importing == []
