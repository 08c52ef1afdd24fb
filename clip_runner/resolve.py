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


DEMO_NAME = "demo"


@dataclasses.dataclass(frozen=True)
class Resolution:
    """The tag to serve and why it was chosen (shown by /health and the startup log)."""

    tag: str
    reason: str
    registered: bool = False
    fallback: bool = False
    hardware: dict | None = None


def parse_model_name(name: str, pretrained: str | None) -> ModelRef:
    """Accept open_clip names, OpenAI ``ViT-B/32`` style, OpenAI/HF ids and ``hf-hub:org/repo``."""
    from .registry import OPENAI_IDS

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
    architecture); else ``CLIP_MODEL_NAME`` (+ ``CLIP_PRETRAINED``; ``demo`` is the bundled demo
    model); else the hardware-aware default. A missing entry is registered (downloaded) when
    allowed. When nothing was configured and the default cannot be had, the bundled demo model
    serves instead, loudly, unless ``CLIP_STRICT_MODEL`` forbids it.
    """
    if settings.model_tag:
        entry = open_entry(settings.model_tag)
        return Resolution(entry.tag, "CLIP_MODEL_TAG")
    if settings.model_name.strip().lower() == DEMO_NAME:
        return Resolution(_register_demo(), "CLIP_MODEL_NAME=demo (bundled demo model)")
    ref = parse_model_name(settings.model_name, settings.pretrained)
    if settings.model_path:
        return _resolve_checkpoint(Path(settings.model_path), ref, register_missing)
    if settings.model_configured:
        return _resolve_named(ref, f"CLIP_MODEL_NAME={settings.model_name}", settings, register_missing)
    return _resolve_default(settings, register_missing)


def _resolve_named(ref: ModelRef, why: str, settings: ClipSettings, register_missing: bool) -> Resolution:
    if (tag := latest_tag(ref.store_name)) is not None:
        return Resolution(tag, f"{why} (found in store)")
    if not (register_missing and settings.allow_download):
        raise ModelNotAvailable(
            f"{ref.store_name} is not in the model store and downloading is disabled. Register "
            f"it with `python -m models register {ref.hub_repo and HF_HUB_PREFIX + ref.hub_repo or ref.arch}"
            f"{'' if ref.hub_repo else ' --pretrained ' + str(ref.pretrained)}` or set CLIP_MODEL_TAG."
        )
    logger.warning("%s not in the model store: downloading and registering it", ref.store_name)
    from .registry import register_hub_repo, register_pretrained

    if ref.hub_repo:
        tag = register_hub_repo(ref.hub_repo)
    else:
        tag = register_pretrained(ref.arch, ref.pretrained or DEFAULT_PRETRAINED)
    return Resolution(tag, f"{why} (registered now)", registered=True)


def _resolve_default(settings: ClipSettings, register_missing: bool) -> Resolution:
    """Hardware-aware default, falling back to the demo model when it cannot be had."""
    from .hardware import choose_default_model, detect_hardware, record_decision

    choice = choose_default_model(detect_hardware(settings.device))
    ref = ModelRef(arch=choice.arch, pretrained=choice.pretrained)
    why = f"default for this hardware: {choice.rule}"
    try:
        if latest_tag(ref.store_name) is None and settings.allow_download:
            from .download import hub_unreachable_reason

            if reason := hub_unreachable_reason():
                raise ModelNotAvailable(f"{ref.store_name} is not in the store and the hub is unreachable: {reason}")
        resolution = _resolve_named(ref, why, settings, register_missing)
    except ModelNotAvailable as exc:
        if settings.strict_model:
            raise ModelNotAvailable(
                f"the default model {choice.arch}/{choice.pretrained} is unavailable and "
                f"CLIP_STRICT_MODEL forbids the demo fallback: {exc}"
            ) from exc
        logger.warning(
            "\n%s\nFALLING BACK TO THE BUNDLED DEMO MODEL: %s/%s could not be loaded or downloaded.\n"
            "Reason: %s\nThe demo model only knows simple shapes and colours. To serve a real model, "
            "make the hub reachable (or set HF_ENDPOINT to a mirror), register one with "
            "`python -m models register ...` and set CLIP_MODEL_TAG; set CLIP_STRICT_MODEL=true to "
            "refuse this fallback.\n%s", "=" * 78, choice.arch, choice.pretrained, exc, "=" * 78,
        )
        resolution = Resolution(
            _register_demo(), f"fallback to the demo model: {choice.arch}/{choice.pretrained} "
            f"unavailable ({_first_line(exc)})", fallback=True)
    resolution = dataclasses.replace(resolution, hardware=choice.to_dict())
    from .store import store_home

    record_decision(choice, Path(store_home()).parent, served_tag=resolution.tag)
    return resolution


def _register_demo() -> str:
    from .demo import register_demo

    return register_demo()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _resolve_checkpoint(path: Path, ref: ModelRef, register_missing: bool) -> Resolution:
    from .registry import checkpoint_store_name, register_checkpoint

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
