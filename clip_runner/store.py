"""The BentoML model-store side of a CLIP model: what an entry holds and how it is written/read.

An entry is a directory with the open_clip hub layout, so ``open_clip`` can load it directly
with its ``local-dir:`` schema:

* ``open_clip_config.json`` — ``{"model_cfg": ..., "preprocess_cfg": ...}``
* ``open_clip_model.safetensors`` — the weights (never a pickle)

A compiled entry (``python -m models compile``, :mod:`clip_runner.compiled`) holds the same
config file and, instead of the weights, each tower as an OpenVINO model (``image.xml/.bin``,
``text.xml/.bin``); its labels add ``runtime``, ``precision`` and ``parent``.

Labels carry ``arch``, ``pretrained`` and ``source``; metadata carries everything a server
needs without loading the weights (embedding size, image size, mean/std, context length,
logit scale, open_clip version, weights sha256, and a calibrated threshold when one exists).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import bentoml

from .errors import ModelNotAvailable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
SOURCES = ("hub", "checkpoint", "random-init", "finetune", "demo", "compiled")
COMPILED_FILES = ("image.xml", "image.bin", "text.xml", "text.bin")


@dataclasses.dataclass(frozen=True)
class StoreEntry:
    """A model-store entry, read without loading its weights."""

    tag: str
    path: Path
    labels: dict[str, str]
    metadata: dict[str, Any]
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]

    @property
    def local_dir_name(self) -> str:
        """The open_clip model name that loads this entry."""
        return f"local-dir:{self.path}"

    @property
    def embedding_size(self) -> int:
        return int(self.metadata["embedding_size"])

    @property
    def runtime(self) -> str:
        """``torch`` (open_clip weights) or the runtime a compiled entry was compiled for."""
        return self.labels.get("runtime", "torch")

    @property
    def model_files(self) -> tuple[str, ...]:
        """The files that hold the model: the weights, or a compiled entry's towers."""
        return (WEIGHTS_FILE,) if self.runtime == "torch" else COMPILED_FILES


class MetadataRecord:
    """Base of the dataclasses of figures kept in store metadata (calibration, evaluation, epochs)."""

    DIGITS: ClassVar[int] = 6

    def to_json(self) -> dict[str, Any]:
        """The fields, floats rounded to ``DIGITS`` places, empty ones left out (metadata holds no nulls)."""
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: (round(v, self.DIGITS) if isinstance(v, float) else v) for k, v in fields.items() if v is not None}


def store_name(arch: str, pretrained: str | None) -> str:
    """Store name for an architecture + weights tag, e.g. ``clip-vit-b-32-openai``."""
    raw = f"clip-{arch}-{pretrained}" if pretrained else f"clip-{arch}"
    # BentoML names: lowercase alphanumerics, '-', '_' and '.'.
    return re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-.")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def recorded_hashes(entry: StoreEntry) -> dict[str, str]:
    """The sha256 of each model file as recorded when the entry was written (empty: none recorded)."""
    if entry.runtime == "torch":
        digest = entry.metadata.get("weights_sha256")
        return {WEIGHTS_FILE: digest} if digest else {}
    return dict(entry.metadata.get("files_sha256") or {})


def verify_files(entry: StoreEntry) -> None:
    """Refuse an entry whose model files do not match the sha256 recorded when it was written."""
    expected = recorded_hashes(entry)
    if not expected:
        logger.warning("store entry %s records no file hashes; integrity not checked", entry.tag)
        return
    for name, digest in expected.items():
        actual = sha256_file(entry.path / name)
        if actual != digest:
            raise ModelNotAvailable(
                f"store entry {entry.tag}: {name} sha256 {actual[:12]}… does not match the recorded "
                f"{digest[:12]}… — the entry is corrupt or was modified. Delete it "
                f"(`bentoml models delete {entry.tag}`) and register or compile it again."
            )


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors on CPU, each owning its storage, as safetensors needs them."""
    # safetensors refuses shared storage (e.g. tied weights); clone makes each tensor own its data.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def describe(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
    """Metadata derived from a model and its configs."""
    import open_clip
    size = preprocess_cfg.get("size", model_cfg["vision_cfg"].get("image_size", 224))
    return {
        "embedding_size": int(model_cfg["embed_dim"]),
        "image_size": size if isinstance(size, int) else list(size),
        "mean": list(preprocess_cfg.get("mean", ())),
        "std": list(preprocess_cfg.get("std", ())),
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "resize_mode": preprocess_cfg.get("resize_mode", "shortest"),
        "context_length": int(model_cfg["text_cfg"].get("context_length", 77)),
        "logit_scale": float(model.logit_scale.detach().exp().item()),
        "open_clip_version": open_clip.__version__,
    }


def save_entry(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    *,
    name: str,
    arch: str,
    pretrained: str,
    source: str,
    extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Write a model into the store as a new version; returns the tag string."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    metadata = describe(model, model_cfg, preprocess_cfg)
    metadata.update(extra_metadata or {})
    labels = {"arch": arch, "pretrained": pretrained, "source": source}
    from safetensors.torch import save_file

    with bentoml.models.create(name, labels=labels, metadata=metadata) as ref:
        out = Path(ref.path)
        weights = out / WEIGHTS_FILE
        save_file(cpu_state_dict(model), str(weights))
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        # The hash lets a server refuse a tampered or half-copied entry at startup.
        ref.info.metadata["weights_sha256"] = sha256_file(weights)
        ref.info.metadata["weights_bytes"] = weights.stat().st_size
    return str(ref.tag)


def open_entry(tag: str) -> StoreEntry:
    """Read an entry's configs, labels and metadata; raises ModelNotAvailable if absent."""
    try:
        ref = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise ModelNotAvailable(
            f"model {tag!r} is not in the model store ({store_home()}). "
            "Register it with `python -m models register ...` or list entries with "
            "`python -m models list`."
        ) from exc
    path = Path(ref.path)
    config_path = path / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg", {})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailable(f"store entry {ref.tag}: {CONFIG_FILE} is missing or not valid ({exc}). "
                                f"Delete it (`bentoml models delete {ref.tag}`) and register again.") from exc
    entry = StoreEntry(tag=str(ref.tag), path=path, labels=dict(ref.info.labels), metadata=dict(ref.info.metadata),
                       model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)
    if missing := [name for name in entry.model_files if not (path / name).is_file()]:
        raise ModelNotAvailable(
            f"store entry {ref.tag} at {path} is incomplete: {', '.join(missing)} missing. "
            f"Delete it (`bentoml models delete {ref.tag}`) and register or compile it again."
        )
    return entry


def latest_tag(name: str) -> str | None:
    """Tag of the newest version of ``name`` in the store, or None."""
    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def list_entries() -> list[StoreEntry]:
    """All CLIP entries in the store (those with our config file), newest first."""
    entries = []
    for ref in bentoml.models.list():
        if (Path(ref.path) / CONFIG_FILE).is_file():
            try:
                entries.append(open_entry(str(ref.tag)))
            except ModelNotAvailable:
                continue
    return entries


def store_home() -> str:
    """Where the model store lives (BENTOML_HOME/models)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return str(Path(BentoMLContainer.bentoml_home.get()) / "models")
