"""Store entry → ready-to-run model, image preprocessing config and tokenizer."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch

from .errors import ModelNotAvailable
from .store import CONFIG_FILE, WEIGHTS_FILE, StoreEntry, open_entry, sha256_file

logger = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclasses.dataclass
class LoadedModel:
    """A model in eval mode on its device, with what is needed to feed it."""

    entry: StoreEntry
    model: torch.nn.Module
    tokenizer: Tokenizer
    device: torch.device
    load_seconds: float

    @property
    def embedding_size(self) -> int:
        return self.entry.embedding_size


def verify_weights(entry: StoreEntry) -> None:
    """Refuse an entry whose weights file does not match the sha256 recorded at registration."""
    expected = entry.metadata.get("weights_sha256")
    if not expected:
        logger.warning("store entry %s records no weights hash; integrity not checked", entry.tag)
        return
    actual = sha256_file(entry.path / WEIGHTS_FILE)
    if actual != expected:
        raise ModelNotAvailable(
            f"store entry {entry.tag}: {WEIGHTS_FILE} sha256 {actual[:12]}… does not match the "
            f"recorded {expected[:12]}… — the entry is corrupt or was modified. Delete it "
            f"(`bentoml models delete {entry.tag}`) and register the model again."
        )


def plain_config(cfg: Any) -> dict[str, Any]:
    """JSON-friendly copy of an open_clip config (tuples → lists), as store entries keep them."""
    return json.loads(json.dumps(dict(cfg)))


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """``open_clip.create_model`` on CPU; a failure is a :class:`ModelNotAvailable` naming the model."""
    try:
        return open_clip.create_model(name, device="cpu", **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise ModelNotAvailable(f"could not build {name}: {exc}") from exc


def build_from_config(
    model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], weights: Path | None = None
) -> tuple[torch.nn.Module, Tokenizer]:
    """(model, tokenizer) from configs (+ weights), through open_clip's local-dir loader.

    The same loader reads store entries, so a model built here is built exactly as it will be
    served. Without ``weights`` the model has open_clip's random initialisation.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        if weights is not None:
            (folder / weights.name).symlink_to(weights.resolve())
        name = f"local-dir:{folder}"
        return create_model(name), open_clip.get_tokenizer(name)


def load_entry(entry: StoreEntry | str, device: torch.device, *, verify: bool = True) -> LoadedModel:
    """Load a store entry onto ``device`` in eval mode (fp32 weights; autocast is the encoder's job)."""
    if isinstance(entry, str):
        entry = open_entry(entry)
    start = time.perf_counter()
    if verify:
        verify_weights(entry)
    try:
        # local-dir: reads open_clip_config.json + the safetensors file (no pickle involved).
        model = open_clip.create_model(entry.local_dir_name, device=device)
        tokenizer = open_clip.get_tokenizer(entry.local_dir_name)
    except Exception as exc:  # open_clip raises many types; the message is what matters here
        raise ModelNotAvailable(f"store entry {entry.tag} could not be loaded: {exc}") from exc
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    seconds = time.perf_counter() - start
    logger.info("loaded %s on %s in %.2fs", entry.tag, device, seconds)
    return LoadedModel(entry, model, tokenizer, device, seconds)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    """Facts about the served model, for /health and logs."""
    entry = loaded.entry
    return {
        "model": entry.tag,
        "arch": entry.labels.get("arch"),
        "pretrained": entry.labels.get("pretrained"),
        "source": entry.labels.get("source"),
        "device": loaded.device.type,
        "device_name": str(loaded.device),
        "embedding_size": entry.embedding_size,
        "load_seconds": round(loaded.load_seconds, 3),
    }
