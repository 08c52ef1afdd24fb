"""Store entry → ready-to-run model, image preprocessing config and tokenizer."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import open_clip
import torch

from .errors import ModelNotAvailable
from .store import WEIGHTS_FILE, StoreEntry, open_entry, sha256_file

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
