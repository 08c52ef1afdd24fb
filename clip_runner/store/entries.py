"""The model store's read side: what an entry holds, read without torch.

An entry is a directory in open_clip's hub layout, loadable with open_clip's ``local-dir:`` schema; a
compiled entry holds the config, each tower as OpenVINO ``.xml``/``.bin`` and ``tokenizer.json``. A model
with a Hugging Face tokenizer (SigLIP) keeps its files in both kinds. Labels say where it came from;
metadata holds what a server needs without loading the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import bentoml
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer

from ..errors import ModelNotAvailable
from ..preprocessing.hf_tokenizer import hf_tokenizer_name
from ..preprocessing.images import input_size

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"  # the open_clip hub layout's names, in the store as on the hub
WEIGHTS_FILE = "open_clip_model.safetensors"
TOKENIZER_FILE = "tokenizer.json"  # a compiled entry's torch-free tokenizer
SOURCES = ("hub", "checkpoint", "random-init", "finetune", "demo", "compiled")
COMPILED_FILES = ("image.xml", "image.bin", "text.xml", "text.bin")
OPENVINO = "openvino"  # the ``runtime`` label of compiled entries
PRECISIONS = ("fp32", "bf16", "int8")  # of compiled entries
#: Least mean cosine, per tower, between a compiled entry's embeddings and its parent's torch
#: fp32 ones on the parity set: under it a compile refuses to register (unless forced).
PARITY_BAR = 0.99


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
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input pixels."""
        return input_size(self.preprocess_cfg)

    @property
    def hf_tokenizer(self) -> bool:
        """Whether the model tokenizes with a Hugging Face tokenizer kept in the entry (SigLIP), not CLIP BPE."""
        return hf_tokenizer_name(self.model_cfg) is not None

    @property
    def runtime(self) -> str:
        """``torch`` (open_clip weights) or the runtime a compiled entry was compiled for."""
        return self.labels.get("runtime", "torch")

    @property
    def model_files(self) -> tuple[str, ...]:
        """The files that hold the model: the weights, or a compiled entry's towers (and a Hugging Face tokenizer)."""
        files = (WEIGHTS_FILE,) if self.runtime == "torch" else COMPILED_FILES
        return (*files, TOKENIZER_FILE) if self.hf_tokenizer else files


class MetadataRecord:
    """Base of the dataclasses of figures kept in store metadata (calibration, evaluation, epochs)."""

    DIGITS: ClassVar[int] = 6

    def to_json(self) -> dict[str, Any]:
        """The fields, floats rounded to ``DIGITS`` places, empty ones left out (metadata holds no nulls)."""
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: (round(v, self.DIGITS) if isinstance(v, float) else v) for k, v in fields.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Parity(MetadataRecord):
    """Cosine of each tower's output to the parent's torch fp32 output, over the parity set."""

    image_mean: float
    image_min: float
    text_mean: float
    text_min: float

    @classmethod
    def between(cls, ref: tuple[np.ndarray, np.ndarray], ours: tuple[np.ndarray, np.ndarray]) -> Parity:
        """Parity of (image rows, text rows) ``ours`` to ``ref``; all rows unit-length."""
        image, text = (np.einsum("nd,nd->n", r, o) for r, o in zip(ref, ours, strict=True))
        return cls(float(image.mean()), float(image.min()), float(text.mean()), float(text.min()))

    @property
    def worst_mean(self) -> float:
        """The worse tower's mean cosine: what :data:`PARITY_BAR` is held against."""
        return min(self.image_mean, self.text_mean)

    @property
    def worst_min(self) -> float:
        """The single least-alike row of either tower."""
        return min(self.image_min, self.text_min)


def store_name(arch: str, pretrained: str | None) -> str:
    """Store name for an architecture + weights tag, e.g. ``clip-vit-b-32-openai``."""
    raw = f"clip-{arch}-{pretrained}" if pretrained else f"clip-{arch}"
    # BentoML names: lowercase alphanumerics, '-', '_' and '.'.
    return re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-.")


def hub_store_name(repo_id: str) -> str:
    """Store name of an open_clip hub repo, e.g. ``clip-hf-org-repo``."""
    return store_name(f"hf-{repo_id.replace('/', '-')}", None)


def checkpoint_store_name(arch: str, digest: str) -> str:
    """Store name for a checkpoint: derived from its content hash, so re-registering is a no-op."""
    return store_name(arch, f"ckpt-{digest[:12]}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_files(entry: StoreEntry) -> None:
    """Refuse an entry whose model files do not match the sha256 recorded when it was written."""
    if entry.runtime == "torch":
        weights = entry.metadata.get("weights_sha256")
        expected = {WEIGHTS_FILE: weights, **entry.metadata.get("tokenizer_sha256", {})} if weights else {}
    else:
        expected = dict(entry.metadata.get("files_sha256") or {})
    if not expected:
        logger.warning("store entry %s records no file hashes; integrity not checked", entry.tag)
        return
    for name, digest in expected.items():
        if sha256_file(entry.path / name) != digest:
            raise ModelNotAvailable(f"store entry {entry.tag}: {name} does not match its recorded sha256; "
                                    f"delete it (`bentoml models delete {entry.tag}`) and register it again")


def open_entry(tag: str) -> StoreEntry:
    """Read an entry's configs, labels and metadata; raises ModelNotAvailable if absent."""
    try:
        ref = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise ModelNotAvailable(f"model {tag!r} is not in the model store ({store_home()}); "
                                "register it with `python -m models register`") from exc
    path = Path(ref.path)
    config_path = path / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
        model_cfg, preprocess_cfg = config["model_cfg"], config.get("preprocess_cfg", {})
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailable(f"store entry {ref.tag}: {CONFIG_FILE} is missing or not valid ({exc}); "
                                f"delete it (`bentoml models delete {ref.tag}`) and register it again") from exc
    entry = StoreEntry(tag=str(ref.tag), path=path, labels=dict(ref.info.labels), metadata=dict(ref.info.metadata),
                       model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)
    if missing := [name for name in entry.model_files if not (path / name).is_file()]:
        raise ModelNotAvailable(f"store entry {ref.tag} is incomplete ({', '.join(missing)} missing); "
                                f"delete it (`bentoml models delete {ref.tag}`) and register it again")
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


def find_compiled(parent_tag: str, precision: str) -> StoreEntry | None:
    """The newest compiled entry of ``parent_tag`` at ``precision`` in the store, or None."""
    wanted = (parent_tag, OPENVINO, precision)
    return next((entry for entry in list_entries()  # newest first
                 if tuple(entry.labels.get(k) for k in ("parent", "runtime", "precision")) == wanted), None)


def store_home() -> str:
    """Where the model store lives (BENTOML_HOME/models)."""
    return str(Path(BentoMLContainer.bentoml_home.get()) / "models")


def beside_store(name: str) -> Path:
    """A file of this service's own beside the model store (``$BENTOML_HOME/NAME``)."""
    return Path(store_home()).parent / name


def read_beside_store(name: str) -> dict[str, Any]:
    """The JSON object kept in :func:`beside_store` ``name`` (empty when absent or unreadable)."""
    try:
        return json.loads(beside_store(name).read_text())
    except (OSError, ValueError):
        return {}


def write_beside_store(name: str, body: dict[str, Any]) -> None:
    """Keep ``body`` as JSON beside the store; a read-only store is logged, never fatal."""
    path = beside_store(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2))
    except OSError as exc:
        logger.warning("could not write %s: %s", path, exc)
