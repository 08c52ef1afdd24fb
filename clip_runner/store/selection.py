"""Settings → the model-store tag to serve, registering the model on first use, in the order the
README's "Which model serves" gives. The default's decision is kept in ``clip_hardware.json``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from huggingface_hub import constants as hf_constants

from ..errors import ModelNotAvailable
from ..hardware import HardwareFacts, detect_hardware
from ..settings import DEFAULT_PRETRAINED, ClipSettings
from . import entries

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
DEMO_NAME = "demo"
DECISION_FILE = "clip_hardware.json"
# OpenAI / Hugging Face transformers ids that existing deployments use, mapped to open_clip.
OPENAI_IDS: dict[str, tuple[str, str]] = {
    "openai/clip-vit-base-patch32": ("ViT-B-32", "openai"),
    "openai/clip-vit-base-patch16": ("ViT-B-16", "openai"),
    "openai/clip-vit-large-patch14": ("ViT-L-14", "openai"),
    "openai/clip-vit-large-patch14-336": ("ViT-L-14-336", "openai"),
}
# (minimum free VRAM in GiB, architecture, pretrained tag), largest first.
TIERS: tuple[tuple[float, str, str], ...] = ((8.0, "ViT-L-14", "openai"), (4.0, "ViT-B-16", "openai"),
                                             (0.0, "ViT-B-32", "openai"))


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as configured: an open_clip arch + pretrained tag, or an hf-hub repo."""

    arch: str
    pretrained: str | None = None
    hub_repo: str | None = None

    @property
    def store_name(self) -> str:
        if self.hub_repo:
            return entries.hub_store_name(self.hub_repo)
        return entries.store_name(self.arch, self.pretrained)


@dataclasses.dataclass(frozen=True)
class DefaultChoice:
    """The hardware-aware default and the rule that chose it."""

    arch: str
    pretrained: str
    rule: str
    facts: HardwareFacts


@dataclasses.dataclass(frozen=True)
class Selection:
    """The tag to serve and why it was chosen (shown by /health and the start-up log)."""

    tag: str
    reason: str
    fallback: bool = False
    hardware: dict | None = None


def parse_model_name(name: str, pretrained: str | None) -> ModelRef:
    """Accept open_clip names, OpenAI ``ViT-B/32`` style, OpenAI/HF ids and ``hf-hub:org/repo``."""
    name = name.strip()
    if name.startswith(HF_HUB_PREFIX):
        return ModelRef(arch=name, hub_repo=name[len(HF_HUB_PREFIX):])
    if name.lower() in OPENAI_IDS:
        arch, tag = OPENAI_IDS[name.lower()]
        return ModelRef(arch=arch, pretrained=pretrained or tag)
    if "/" in name and not name.upper().startswith(("VIT-", "RN")):
        return ModelRef(arch=name, hub_repo=name)  # an open_clip-format repo on the hub
    return ModelRef(arch=name.replace("/", "-"), pretrained=pretrained or DEFAULT_PRETRAINED)


def choose_default_model(facts: HardwareFacts) -> DefaultChoice:
    """≥ 8 GiB free VRAM → ViT-L-14, 4–8 GiB → ViT-B-16, otherwise (or CPU) → ViT-B-32."""
    if not facts.cuda_available or facts.free_vram_gib is None:
        return DefaultChoice("ViT-B-32", "openai", "no CUDA device: ViT-B-32", facts)
    minimum, arch, pretrained = next(tier for tier in TIERS if facts.free_vram_gib >= tier[0])
    return DefaultChoice(arch, pretrained, f"{facts.free_vram_gib:.1f} GiB free VRAM >= {minimum:g} GiB: {arch}", facts)


def select_model(settings: ClipSettings) -> Selection:
    """Decide which store entry to serve (see the module docstring)."""
    if settings.model_tag:
        return Selection(entries.open_entry(settings.model_tag).tag, "CLIP_MODEL_TAG")
    if settings.model_name.strip().lower() == DEMO_NAME:
        return Selection(_store().register_demo(), "CLIP_MODEL_NAME=demo (bundled demo model)")
    ref = parse_model_name(settings.model_name, settings.pretrained)
    if settings.model_path:
        return _select_checkpoint(Path(settings.model_path), ref)
    if settings.model_configured:
        return _select_named(ref, f"CLIP_MODEL_NAME={settings.model_name}", settings)
    return _select_default(settings)


def _store() -> ModuleType:
    """The store's write side: registering builds torch models, so it is imported only to register."""
    from . import registration  # torch boundary: registration (and download) only when a model must be added

    return registration


def _select_named(ref: ModelRef, why: str, settings: ClipSettings) -> Selection:
    if (tag := entries.latest_tag(ref.store_name)) is not None:
        return Selection(tag, f"{why} (found in store)")
    if not settings.allow_download:
        model = f"{HF_HUB_PREFIX}{ref.hub_repo}" if ref.hub_repo else f"{ref.arch} --pretrained {ref.pretrained}"
        raise ModelNotAvailable(f"{ref.store_name} is not in the model store and downloading is disabled; "
                                f"register it with `python -m models register {model}`")
    logger.warning("%s not in the model store: downloading and registering it", ref.store_name)
    registration = _store()
    if ref.hub_repo:
        tag = registration.register_hub_repo(ref.hub_repo)
    else:
        tag = registration.register_pretrained(ref.arch, ref.pretrained or DEFAULT_PRETRAINED)
    return Selection(tag, f"{why} (registered now)")


def _select_default(settings: ClipSettings) -> Selection:
    """Hardware-aware default, falling back to the demo model when it cannot be had."""
    choice = choose_default_model(detect_hardware(settings.device))
    ref = ModelRef(arch=choice.arch, pretrained=choice.pretrained)
    try:
        if entries.latest_tag(ref.store_name) is None and settings.allow_download:
            if reason := hub_unreachable_reason():
                raise ModelNotAvailable(f"{ref.store_name} is not in the store and the hub is unreachable: {reason}")
        selection = _select_named(ref, f"default for this hardware: {choice.rule}", settings)
    except ModelNotAvailable as exc:
        if settings.strict_model:
            raise ModelNotAvailable(f"the default model {choice.arch}/{choice.pretrained} is unavailable and "
                                    f"CLIP_STRICT_MODEL forbids the demo fallback: {exc}") from exc
        logger.warning("FALLING BACK TO THE BUNDLED DEMO MODEL (it knows only coloured shapes): %s/%s is "
                       "unavailable: %s; docs/troubleshooting.md says how to serve a real model",
                       choice.arch, choice.pretrained, _first_line(exc))
        selection = Selection(_store().register_demo(), f"fallback to the demo model: {choice.arch}/"
                              f"{choice.pretrained} unavailable ({_first_line(exc)})", fallback=True)
    selection = dataclasses.replace(selection, hardware=dataclasses.asdict(choice))
    entries.write_beside_store(DECISION_FILE, {**selection.hardware, "served_tag": selection.tag,
                                               "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    return selection


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _select_checkpoint(path: Path, ref: ModelRef) -> Selection:
    if not path.exists():
        raise ModelNotAvailable(f"CLIP_MODEL_PATH={path} does not exist")
    digest = entries.sha256_file(path / "open_clip_config.json" if path.is_dir() else path)
    name = entries.checkpoint_store_name(ref.arch, digest)
    if (tag := entries.latest_tag(name)) is not None:
        return Selection(tag, f"CLIP_MODEL_PATH={path} (found in store)")
    tag = _store().register_checkpoint(path, ref.arch, name=name)
    return Selection(tag, f"CLIP_MODEL_PATH={path} (registered now)")


def hub_unreachable_reason(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached now, or None: a quick probe before an implicit default download, whose
    retries would otherwise hold the demo fallback back for tens of seconds."""
    if hf_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(hf_constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {hf_constants.ENDPOINT} ({exc})"
