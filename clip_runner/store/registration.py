"""Put CLIP models into the BentoML model store: from the hub, a local checkpoint, random init, or
the bundled demo model (``models/demo/``, trained by :mod:`clip_runner.training.demo`)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg

from ..errors import ModelNotAvailable
from ..preprocessing.hf_tokenizer import hf_tokenizer_name
from .download import download_hub_repo, download_pretrained, download_tokenizer
from .entries import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_store_name,
    hub_store_name,
    latest_tag,
    open_entry,
    sha256_file,
    store_name,
)
from .weights import build_from_config, create_model, plain_config, save_entry

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
# The bundle is data shipped beside the command line (models/demo/), read by path.
DEMO_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
DEMO_STORE_NAME = "clip-demo"
CARD_FILE = "demo.json"


def model_config(arch: str) -> dict[str, Any]:
    """open_clip's built-in config for ``arch``, or a clear error listing close names."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        close = [m for m in open_clip.list_models() if arch.split("-")[0].lower() in m.lower()]
        raise ModelNotAvailable(f"unknown open_clip architecture {arch!r}; e.g. {', '.join(close[:8]) or 'ViT-B-32'}")
    return copy.deepcopy(cfg)


def register_pretrained(arch: str, pretrained: str, *, retries: int = 3) -> str:
    """Download open_clip weights ``arch``/``pretrained`` (and a Hugging Face tokenizer the model needs) and
    store them; returns the tag."""
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    model_cfg = model_config(arch)
    weights = download_pretrained(arch, pretrained, retries=retries)
    tokenizer = _download_tokenizer(model_cfg, retries)
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if quick_gelu:
        model_cfg["quick_gelu"] = True  # the weights were trained with QuickGELU
    model = create_model(arch, pretrained=str(weights), force_quick_gelu=quick_gelu)
    return save_entry(model, model_cfg, _preprocess_cfg(model, cfg), name=store_name(arch, pretrained), arch=arch,
                      pretrained=pretrained, source="hub", extra_metadata={"origin": cfg.get("hf_hub", "")},
                      tokenizer_dir=tokenizer)


def _preprocess_cfg(model: torch.nn.Module, pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """The model's preprocessing, with what its pretrained weights were trained on (SigLIP: mean and std
    0.5, squashed) taking precedence."""
    preprocess_cfg = dict(get_model_preprocess_cfg(model))
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if pretrained_cfg.get(key) is not None:
            preprocess_cfg[key] = pretrained_cfg[key]
    return plain_config(preprocess_cfg)


def _download_tokenizer(model_cfg: dict[str, Any], retries: int) -> Path | None:
    """The folder of the Hugging Face tokenizer ``model_cfg`` names, downloaded; None for CLIP BPE."""
    name = hf_tokenizer_name(model_cfg)
    return download_tokenizer(name, retries=retries) if name else None


def register_hub_repo(repo_id: str, *, retries: int = 3) -> str:
    """Download an open_clip-format hub repo (``hf-hub:org/repo``) and store it; returns the tag."""
    files = download_hub_repo(repo_id, retries=retries)
    if files.config_path is None:
        raise ModelNotAvailable(f"hub repo {repo_id} has no {CONFIG_FILE}; it is not an open_clip model")
    config = json.loads(Path(files.config_path).read_text())
    model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg", {})
    tokenizer = _download_tokenizer(model_cfg, retries)
    model = build_from_config(model_cfg, preprocess_cfg, Path(files.weights_path), tokenizer)[0]
    return save_entry(model, model_cfg, _preprocess_cfg(model, {}), name=hub_store_name(repo_id), arch=repo_id,
                      pretrained="hf-hub", source="hub", extra_metadata={"origin": f"hf-hub:{repo_id}"},
                      tokenizer_dir=tokenizer)


def register_checkpoint(path: str | Path, arch: str, *, name: str | None = None, tokenizer: Path | None = None) -> str:
    """Store a local checkpoint of architecture ``arch`` (state dict, safetensors or open_clip dir; a model with a
    Hugging Face tokenizer takes its files from ``tokenizer``, else from the open_clip dir)."""
    path = Path(path).expanduser()
    if path.is_dir():
        tokenizer = tokenizer or path
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise ModelNotAvailable(f"checkpoint directory {path} has no {CONFIG_FILE}")
        model = create_model(f"local-dir:{path}")
        model_cfg = json.loads(config_path.read_text())["model_cfg"]
        digest = sha256_file(config_path)
    elif path.is_file():
        model_cfg = model_config(arch)
        # open_clip loads .safetensors without pickle and .pt/.bin with weights_only=True.
        model = create_model(arch, pretrained=str(path))
        digest = sha256_file(path)
    else:
        raise ModelNotAvailable(f"checkpoint {path} does not exist")
    return save_entry(model, model_cfg, _preprocess_cfg(model, {}), name=name or checkpoint_store_name(arch, digest),
                      arch=arch, pretrained="checkpoint", source="checkpoint", tokenizer_dir=tokenizer,
                      extra_metadata={"origin": str(path.resolve()), "checkpoint_sha256": digest})


def register_random(arch_or_config: str, *, seed: int = 0, name: str | None = None,
                    tokenizer: Path | None = None) -> str:
    """Store a randomly initialised model (benchmarks and tests only; labelled as such) of ``arch_or_config``: an
    open_clip architecture (with the preprocessing of its first pretrained weights) or a model-config JSON file.
    A model with a Hugging Face tokenizer (SigLIP) takes it from the local folder ``tokenizer``."""
    torch.manual_seed(seed)
    config_file = Path(arch_or_config)
    if config_file.suffix == ".json" and config_file.is_file():
        model_cfg = json.loads(config_file.read_text())
        arch = config_file.stem
        model = build_from_config(model_cfg, {"size": model_cfg["vision_cfg"]["image_size"]}, None, tokenizer)[0]
        preprocess_cfg = _preprocess_cfg(model, {})
    else:
        arch = arch_or_config
        model_cfg = model_config(arch)
        model = create_model(arch)
        tags = open_clip.list_pretrained_tags_by_model(arch)
        preprocess_cfg = _preprocess_cfg(model, open_clip.get_pretrained_cfg(arch, tags[0]) if tags else {})
    return save_entry(model, model_cfg, preprocess_cfg, name=name or store_name(arch, RANDOM_INIT), arch=arch,
                      pretrained=RANDOM_INIT, source="random-init", tokenizer_dir=tokenizer,
                      extra_metadata={"seed": seed, "warning": "random weights: embeddings carry no meaning"})


def read_card(folder: Path) -> dict[str, Any]:
    """``demo.json`` of a demo folder; a clear error when the bundle is missing."""
    needed = [folder / name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)]
    if missing := [p.name for p in needed if not p.is_file()]:
        raise ModelNotAvailable(f"the bundled demo model is incomplete ({', '.join(missing)} missing in {folder}); "
                                "rebuild it with `make demo`")
    return json.loads((folder / CARD_FILE).read_text())


def register_demo(folder: Path | None = None) -> str:
    """Store tag of the bundled demo model, registering it when the store lacks these weights."""
    folder = folder or DEMO_DIR
    card = read_card(folder)
    digest = sha256_file(folder / WEIGHTS_FILE)
    if (tag := latest_tag(DEMO_STORE_NAME)) is not None and open_entry(tag).metadata.get("bundle_sha256") == digest:
        return tag
    config = json.loads((folder / CONFIG_FILE).read_text())
    model, _ = build_from_config(config["model_cfg"], config["preprocess_cfg"], folder / WEIGHTS_FILE)
    metadata = {**card.get("metadata", {}), "bundle_sha256": digest, "origin": "bundled demo model"}
    tag = save_entry(model.eval(), config["model_cfg"], config["preprocess_cfg"], name=DEMO_STORE_NAME,
                     arch=DEMO_STORE_NAME, pretrained="shapes", source="demo", extra_metadata=metadata)
    logger.info("registered the bundled demo model as %s", tag)
    return tag
