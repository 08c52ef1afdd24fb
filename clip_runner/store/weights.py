"""Store entries ↔ torch models: build an open_clip model, load an entry into one, save one as an entry.

The store's write side, and the one way any code (the torch encoder, registration, compiling,
training) turns an entry into a torch model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bentoml
import open_clip
import torch
from safetensors.torch import save_file

from ..errors import ModelNotAvailable
from ..preprocessing.hf_tokenizer import HF_TOKENIZER_FILES, HFTextTokenizer, hf_tokenizer_name
from .entries import CONFIG_FILE, SOURCES, WEIGHTS_FILE, StoreEntry, open_entry, sha256_file, verify_files

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


def plain_config(cfg: Any) -> dict[str, Any]:
    """JSON-friendly copy of an open_clip config (tuples → lists), as store entries keep them."""
    return json.loads(json.dumps(dict(cfg)))


def create_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """``open_clip.create_model`` on CPU; a failure is a :class:`ModelNotAvailable` naming the model."""
    try:
        return open_clip.create_model(name, device="cpu", **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        raise ModelNotAvailable(f"could not build {name}: {exc}") from exc


def build_from_config(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], weights: Path | None = None,
                      tokenizer_dir: Path | None = None) -> tuple[torch.nn.Module, Tokenizer]:
    """(model, tokenizer) from configs (+ weights, else random init; + a Hugging Face tokenizer folder for a
    model that needs one) through the loader that reads store entries."""
    tokenizer_files(model_cfg, tokenizer_dir)  # a model that needs a tokenizer folder is refused without one
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        if weights is not None:
            (folder / weights.name).symlink_to(weights.resolve())
        return create_model(f"local-dir:{folder}"), text_tokenizer(tokenizer_dir or folder, model_cfg)


def text_tokenizer(folder: Path, model_cfg: dict[str, Any]) -> Tokenizer:
    """The model's tokenizer as torch code calls it: open_clip's CLIP BPE, or the Hugging Face tokenizer
    whose files are in ``folder``, run by :class:`HFTextTokenizer` (as every runtime runs it)."""
    if hf_tokenizer_name(model_cfg) is None:
        return open_clip.get_tokenizer(f"local-dir:{folder}")
    return TorchIds.for_model(folder, model_cfg)


class TorchIds(HFTextTokenizer):
    """The torch-free tokenizer, its ids as a tensor, as open_clip's tokenizers give them."""

    def __call__(self, texts: list[str]) -> torch.Tensor:  # type: ignore[override]
        return torch.from_numpy(super().__call__(texts))


def load_entry(entry: StoreEntry | str, device: torch.device, dtype: torch.dtype = torch.float32, *,
               verify: bool = True) -> LoadedModel:
    """Load a store entry onto ``device`` in eval mode, built in ``dtype`` and filled one tensor at a time (so
    serving bf16 never holds an fp32 copy: ViT-B-32 peaks at 0.3 GB instead of 1.2 GB)."""
    if isinstance(entry, str):
        entry = open_entry(entry)
    start = time.perf_counter()
    if verify:
        verify_files(entry)
    try:
        # local-dir: reads open_clip_config.json; the safetensors file is read below (no pickle).
        with _building_empty(dtype):
            model = open_clip.create_model(entry.local_dir_name, load_weights=False, device="cpu")
        _copy_weights(model, entry.path / WEIGHTS_FILE)
        tokenizer = text_tokenizer(entry.path, entry.model_cfg)
    except Exception as exc:  # open_clip raises many types; the message is what matters here
        raise ModelNotAvailable(f"store entry {entry.tag} could not be loaded: {exc}") from exc
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    seconds = time.perf_counter() - start
    logger.debug("loaded %s on %s as %s in %.2fs", entry.tag, device, str(dtype).removeprefix("torch."), seconds)
    return LoadedModel(entry, model, tokenizer, device, seconds)


@contextlib.contextmanager
def _building_empty(dtype: torch.dtype) -> Iterator[None]:
    """Models built in ``dtype``, without open_clip's warning that a model built without weights is random:
    ours are copied in next."""
    previous = torch.get_default_dtype()
    quiet = logging.Filter()
    quiet.filter = lambda record: "No pretrained weights loaded" not in record.getMessage()  # type: ignore[method-assign]
    torch.set_default_dtype(dtype)
    logging.root.addFilter(quiet)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
        logging.root.removeFilter(quiet)


def _copy_weights(model: torch.nn.Module, weights: Path) -> None:
    """Copy a safetensors file into ``model``'s tensors one at a time, cast on the way. Plain reads, not a
    memory map, whose pages would count in the worker's RSS on top of the model (0.6 GB for ViT-B-32)."""
    targets = model.state_dict()
    with weights.open("rb") as stored:
        header_size = int.from_bytes(stored.read(8), "little")
        header = json.loads(stored.read(header_size))
        header.pop("__metadata__", None)
        if set(header) != set(targets):
            missing, extra = sorted(set(targets) - set(header))[:5], sorted(set(header) - set(targets))[:5]
            raise ValueError(f"{weights.name} does not fit the model config (missing {missing}, unexpected {extra})")
        for key, info in header.items():
            start, end = info["data_offsets"]
            stored.seek(8 + header_size + start)
            data = bytearray(end - start)
            stored.readinto(data)
            tensor = torch.frombuffer(data, dtype=SAFETENSORS_DTYPES[info["dtype"]]) if data else torch.empty(0)
            targets[key].copy_(tensor.reshape(info["shape"]))


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def logit_bias(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's logit bias, which only a sigmoid model (SigLIP) has: each pair's probability stands alone."""
    return getattr(model, "logit_bias", None)


def write_model_files(folder: Path, model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                      tokenizer: list[Path]) -> Path:
    """open_clip's local-dir layout in ``folder``: config, weights (the path returned) and ``tokenizer`` files."""
    (folder / CONFIG_FILE).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
    # safetensors refuses shared storage (e.g. tied weights); clone makes each tensor own its data.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()},
              str(folder / WEIGHTS_FILE))
    for file in tokenizer:
        shutil.copy(file, folder / file.name)
    return folder / WEIGHTS_FILE


def describe(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
    """Metadata derived from a model and its configs."""
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
        **({"family": "sigmoid", "logit_bias": float(bias.detach().item())}
           if (bias := logit_bias(model)) is not None else {"family": "softmax"}),
        "open_clip_version": open_clip.__version__,
    }


def save_entry(model: torch.nn.Module, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], *, name: str,
               arch: str, pretrained: str, source: str, extra_metadata: dict[str, Any] | None = None,
               tokenizer_dir: Path | None = None) -> str:
    """Write a model into the store as a new version; returns the tag string. A model with a Hugging Face
    tokenizer needs ``tokenizer_dir``: its files are kept in the entry, so that it serves offline."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    kept = tokenizer_files(model_cfg, tokenizer_dir)
    metadata = describe(model, model_cfg, preprocess_cfg)
    metadata.update(extra_metadata or {})
    labels = {"arch": arch, "pretrained": pretrained, "source": source}
    if kept:
        labels["tokenizer"] = hf_tokenizer_name(model_cfg)
    with bentoml.models.create(name, labels=labels, metadata=metadata) as ref:
        out = Path(ref.path)
        weights = write_model_files(out, model, model_cfg, preprocess_cfg, kept)
        # The hashes let a server refuse a tampered or half-copied entry at startup.
        ref.info.metadata["weights_sha256"] = sha256_file(weights)
        ref.info.metadata["weights_bytes"] = weights.stat().st_size
        if kept:
            ref.info.metadata["tokenizer_sha256"] = {file.name: sha256_file(out / file.name) for file in kept}
    return str(ref.tag)


def tokenizer_files(model_cfg: dict[str, Any], folder: Path | None) -> list[Path]:
    """The Hugging Face tokenizer files an entry of ``model_cfg`` keeps (none for CLIP BPE)."""
    if (name := hf_tokenizer_name(model_cfg)) is None:
        return []
    if folder is None:
        raise ModelNotAvailable(f"this model tokenizes with the Hugging Face tokenizer {name!r}: give its folder "
                                "(`--tokenizer DIR` on the command line)")
    HFTextTokenizer.for_model(folder, model_cfg)  # refuses a folder it cannot serve, before anything is written
    return [folder / file for file in HF_TOKENIZER_FILES if (folder / file).is_file()]
