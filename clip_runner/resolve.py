"""Settings → the model-store tag to serve, registering the model on first use."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .errors import ModelNotAvailable
from .settings import DEFAULT_PRETRAINED, ClipSettings
from .store import latest_tag, open_entry, sha256_file, store_name

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as configured: an open_clip arch + pretrained tag, or an hf-hub repo."""

    arch: str
    pretrained: str | None = None
    hub_repo: str | None = None

    @property
    def store_name(self) -> str:
        if self.hub_repo:
            return store_name(f"hf-{self.hub_repo.replace('/', '-')}", None)
        return store_name(self.arch, self.pretrained)


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The tag to serve and why it was chosen (shown by /health and the startup log)."""

    tag: str
    reason: str
    registered: bool = False


def parse_model_name(name: str, pretrained: str | None) -> ModelRef:
    """Accept open_clip names, OpenAI ``ViT-B/32`` style, OpenAI/HF ids and ``hf-hub:org/repo``."""
    from models.register import OPENAI_IDS

    name = name.strip()
    if name.startswith(HF_HUB_PREFIX):
        return ModelRef(arch=name, hub_repo=name[len(HF_HUB_PREFIX):])
    if name.lower() in OPENAI_IDS:
        arch, tag = OPENAI_IDS[name.lower()]
        return ModelRef(arch=arch, pretrained=pretrained or tag)
    if "/" in name and not name.upper().startswith(("VIT-", "RN")):
        return ModelRef(arch=name, hub_repo=name)  # an open_clip-format repo on the hub
    return ModelRef(arch=name.replace("/", "-"), pretrained=pretrained or DEFAULT_PRETRAINED)


def resolve_model(settings: ClipSettings, *, register_missing: bool = True) -> Resolution:
    """Decide which store entry to serve.

    Order: ``CLIP_MODEL_TAG``; else ``CLIP_MODEL_PATH`` (a checkpoint of ``CLIP_MODEL_NAME``'s
    architecture); else ``CLIP_MODEL_NAME`` + ``CLIP_PRETRAINED``. A missing entry is registered
    (downloaded) when allowed, otherwise a ModelNotAvailable says how to register it.
    """
    if settings.model_tag:
        entry = open_entry(settings.model_tag)
        return Resolution(entry.tag, "CLIP_MODEL_TAG")
    ref = parse_model_name(settings.model_name, settings.pretrained)
    if settings.model_path:
        return _resolve_checkpoint(Path(settings.model_path), ref, register_missing)
    if (tag := latest_tag(ref.store_name)) is not None:
        return Resolution(tag, f"CLIP_MODEL_NAME={settings.model_name} (found in store)")
    if not (register_missing and settings.allow_download):
        raise ModelNotAvailable(
            f"{ref.store_name} is not in the model store and downloading is disabled. Register "
            f"it with `python -m models register {settings.model_name}` or set CLIP_MODEL_TAG."
        )
    logger.warning("%s not in the model store: downloading and registering it", ref.store_name)
    from models.register import register_hub_repo, register_pretrained

    if ref.hub_repo:
        tag = register_hub_repo(ref.hub_repo)
    else:
        tag = register_pretrained(ref.arch, ref.pretrained or DEFAULT_PRETRAINED)
    return Resolution(tag, f"CLIP_MODEL_NAME={settings.model_name} (registered now)", True)


def _resolve_checkpoint(path: Path, ref: ModelRef, register_missing: bool) -> Resolution:
    from models.register import checkpoint_store_name, register_checkpoint

    if not path.exists():
        raise ModelNotAvailable(f"CLIP_MODEL_PATH={path} does not exist")
    digest = sha256_file(path / "open_clip_config.json" if path.is_dir() else path)
    name = checkpoint_store_name(ref.arch, digest)
    if (tag := latest_tag(name)) is not None:
        return Resolution(tag, f"CLIP_MODEL_PATH={path} (found in store)")
    if not register_missing:
        raise ModelNotAvailable(f"checkpoint {path} is not registered yet")
    tag = register_checkpoint(path, ref.arch, name=name)
    return Resolution(tag, f"CLIP_MODEL_PATH={path} (registered now)", True)
