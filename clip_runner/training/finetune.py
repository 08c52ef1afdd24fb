"""Contrastive fine-tuning of a CLIP model on image–caption pairs listed in a CSV.

open_clip's ``ClipLoss``, AdamW, and a cosine schedule with warmup; every epoch is validated and
checkpointed (resumable), and the result is registered as a new store version.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.loss import SigLipLoss
from open_clip.model import get_model_preprocess_cfg
from tqdm.auto import tqdm

from ..errors import FinetuneError
from ..runtimes.torch_encoder import normalize, pick_device
from ..settings import ClipSettings
from ..store.entries import CONFIG_FILE, WEIGHTS_FILE, MetadataRecord, store_name
from ..store.registration import model_config as builtin_model_config
from ..store.weights import (
    build_from_config,
    create_model,
    load_entry,
    logit_bias,
    plain_config,
    save_entry,
    text_tokenizer,
    tokenizer_files,
    write_model_files,
)
from .pairs import PairSet, load_pairs

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.pt"
# Metadata a fine-tuned model inherits from its base: they describe its use, not its weights.
INHERITED_METADATA = ("categories", "prompt_templates")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides its data and starting model."""

    batch_size: int
    learning_rate: float
    epochs: int
    checkpoint_dir: Path
    val_fraction: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        if self.batch_size < 2:
            raise FinetuneError("batch size must be at least 2: contrastive training needs negatives")
        if not 0 <= self.val_fraction < 1:
            raise FinetuneError("the validation fraction must be in [0, 1)")

    @classmethod
    def from_settings(cls, settings: ClipSettings | None = None, **overrides: Any) -> TrainConfig:
        """Defaults from ``CLIP_TRAIN_*`` and ``CLIP_CHECKPOINT_DIR``, then any override that is not None."""
        s = settings or ClipSettings()
        values = {"batch_size": s.train_batch_size, "learning_rate": s.train_learning_rate,
                  "epochs": s.train_epochs, "checkpoint_dir": s.checkpoint_dir}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (for checkpoints and store metadata)."""
        return {**dataclasses.asdict(self), "checkpoint_dir": str(self.checkpoint_dir)}


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine decay to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) split of ``range(count)``; at least 2 rows stay for training."""
    order = np.random.default_rng(seed).permutation(count)
    # 2 or more held out once there are 4 rows: recall over fewer than 2 texts says nothing.
    n_val = max(0, min(count - 2, max(2 if count >= 4 else 0, round(count * val_fraction)))) if val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclasses.dataclass
class TrainableModel:
    """A model in training mode with its configs, tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: Any
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    arch: str
    origin: dict[str, Any]
    inherited: dict[str, Any]
    tokenizer_dir: Path | None = None  # where a Hugging Face tokenizer's files are, for a model that has one (SigLIP)


def init_model(*, tag: str | None = None, arch: str | None = None, model_config: str | Path | None = None,
               seed: int = 0) -> TrainableModel:
    """The starting model: a store entry (``tag``), or random weights for ``arch`` / ``model_config``."""
    if sum(x is not None for x in (tag, arch, model_config)) != 1:
        raise FinetuneError("give exactly one starting model: a store tag, an architecture or a model-config JSON")
    torch.manual_seed(seed)  # random init (and nothing else) depends on it
    if tag is not None:
        loaded = load_entry(tag, torch.device("cpu"))
        entry = loaded.entry
        inherited = {k: entry.metadata[k] for k in INHERITED_METADATA if k in entry.metadata}
        return TrainableModel(loaded.model, loaded.tokenizer, entry.model_cfg, entry.preprocess_cfg,
                              entry.labels.get("arch", entry.tag.split(":")[0]), {"base_tag": entry.tag}, inherited,
                              entry.path)
    if arch is not None:
        model_cfg = builtin_model_config(arch)
        model, tokenizer = build_from_config(model_cfg, {})
        origin = {"arch": arch, "init": "random", "seed": seed}
    else:
        path = Path(model_config)  # type: ignore[arg-type]
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise FinetuneError(f"cannot read model config {path}: {exc}") from exc
        model_cfg = raw.get("model_cfg", raw)
        model, tokenizer = build_from_config(model_cfg, raw.get("preprocess_cfg", {}))
        arch, origin = path.stem, {"model_config": str(path), "init": "random", "seed": seed}
    preprocess_cfg = plain_config(get_model_preprocess_cfg(model))
    return TrainableModel(model, tokenizer, plain_config(model_cfg), preprocess_cfg, arch, origin, {})


def _adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # As in CLIP training: no decay on gains, biases and the temperature.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        param.requires_grad_(True)
        skip = param.ndim < 2 or "bias" in name or "ln" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": config.weight_decay}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def save_checkpoint(folder: Path, trainable: TrainableModel, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> Path:
    """Write a resumable checkpoint folder (open_clip local-dir layout + state + optimizer)."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model_files(tmp, trainable.model, trainable.model_cfg, trainable.preprocess_cfg,
                      tokenizer_files(trainable.model_cfg, trainable.tokenizer_dir))
    # Tensors and plain containers only, so torch.load(..., weights_only=True) reads it back.
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # a crash mid-write never leaves a checkpoint that looks complete
    return folder


def read_checkpoint(folder: str | Path) -> tuple[TrainableModel, dict[str, Any], dict[str, Any]]:
    """(model with the checkpoint's weights, train state, optimizer state) of a checkpoint folder."""
    folder = Path(folder)
    if missing := [name for name in (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, OPTIMIZER_FILE)
                   if not (folder / name).is_file()]:
        raise FinetuneError(f"{folder} is not a complete checkpoint; missing {', '.join(missing)}")
    state = json.loads((folder / STATE_FILE).read_text())
    config = json.loads((folder / CONFIG_FILE).read_text())
    model, tokenizer = create_model(f"local-dir:{folder}"), text_tokenizer(folder, config["model_cfg"])
    optimizer_state = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    trainable = TrainableModel(model, tokenizer, config["model_cfg"], config["preprocess_cfg"],
                               state["arch"], state["origin"], state.get("inherited", {}), folder)
    return trainable, state, optimizer_state


@dataclasses.dataclass
class EpochMetrics(MetadataRecord):
    """What one epoch did. Epoch 0 is the model before training (no train loss)."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_recall_at_1: float | None
    learning_rate: float
    seconds: float


@dataclasses.dataclass
class _Run:
    """A training run in progress: model, optimizer, progress so far and where it checkpoints."""

    trainable: TrainableModel
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    run_dir: Path
    name: str
    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: Path | None = None

    def state(self) -> dict[str, Any]:
        """The JSON that a checkpoint stores and a resumed run starts from."""
        return {"epoch": self.epoch, "global_step": self.global_step, "history": self.history,
                "config": self.config.to_json(), "arch": self.trainable.arch, "origin": self.trainable.origin,
                "inherited": self.trainable.inherited, "name": self.name}


class _Trainer:
    """Batches, optimizer steps and validation for one run over one split of the data."""

    def __init__(self, run: _Run, pairs: PairSet, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
        self.run, self.pairs, self.train_idx, self.val_idx = run, pairs, train_idx, val_idx
        self.device = pick_device(run.config.device)
        self.model = run.trainable.model.to(self.device)
        # The loss the model was trained with: SigLIP's sigmoid per pair (with its bias), else CLIP's softmax.
        self.bias = () if (bias := logit_bias(self.model)) is None else (bias,)  # SigLipLoss takes it, ClipLoss not
        self.loss = SigLipLoss() if self.bias else open_clip.ClipLoss()
        self.steps_per_epoch = len(self.batches(1))
        self.total_steps = self.steps_per_epoch * run.config.epochs
        self.warmup_steps = int(round(run.config.warmup_fraction * self.total_steps))

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This epoch's batches: a seeded shuffle, so a resumed run sees the same order."""
        order = np.random.default_rng([self.run.config.seed, epoch]).permutation(self.train_idx)
        size = self.run.config.batch_size
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        return [c for c in chunks if len(c) >= 2]  # a batch of one has no negatives

    def _features(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pipeline = self.pairs.prepare.pipeline
        images = normalize(self.pairs.batch_pixels(indices), pipeline.mean, pipeline.std, self.device)
        tokens = self.run.trainable.tokenizer([self.pairs.rows[i].text for i in indices]).to(self.device)
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    def step(self, indices: np.ndarray) -> tuple[float, float]:
        """One optimizer step on one batch; returns (loss, learning rate)."""
        lr = lr_at(self.run.global_step, self.total_steps, self.warmup_steps, self.run.config.learning_rate)
        for group in self.run.optimizer.param_groups:
            group["lr"] = lr
        image_features, text_features = self._features(indices)
        loss = self._loss(image_features, text_features)
        self.run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.config.max_grad_norm)
        self.run.optimizer.step()
        with torch.no_grad():  # CLIP caps the temperature at 100 to keep the logits stable
            self.model.logit_scale.clamp_(0, math.log(100))
        self.run.global_step += 1
        return float(loss.item()), lr

    def _loss(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.loss(image_features, text_features, self.model.logit_scale.exp(), *self.bias)

    def train_epoch(self, epoch: int) -> EpochMetrics:
        """One pass over the training split, then validation."""
        start = time.perf_counter()
        self.model.train()
        losses, lr = [], 0.0
        with tqdm(self.batches(epoch), desc=f"epoch {epoch}/{self.run.config.epochs}", unit="batch",
                  disable=not self.run.config.progress) as bar:
            for indices in bar:
                loss, lr = self.step(indices)
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        val_loss, recall = self.validate()
        return EpochMetrics(epoch, float(np.mean(losses)), val_loss, recall, lr, time.perf_counter() - start)

    @torch.no_grad()
    def validate(self) -> tuple[float | None, float | None]:
        """(contrastive loss in training-size batches, image→text recall@1) on the held-out split."""
        if len(self.val_idx) < 2:
            return None, None
        self.model.eval()
        size = self.run.config.batch_size
        chunks = [self._features(self.val_idx[i : i + size]) for i in range(0, len(self.val_idx), size)]
        losses = [float(self._loss(img, txt)) for img, txt in chunks if len(img) >= 2]
        images, texts = (torch.cat(towers) for towers in zip(*chunks, strict=True))
        self.model.train()
        return float(np.mean(losses)), recall_at_1(images, texts, [self.pairs.rows[i].text for i in self.val_idx])


def recall_at_1(image_features: torch.Tensor, text_features: torch.Tensor, texts: Sequence[str]) -> float:
    """Share of images whose most similar text is their own caption (identical captions count as hits)."""
    best = (image_features @ text_features.T).argmax(dim=1).tolist()
    return float(np.mean([texts[j] == texts[i] for i, j in enumerate(best)]))


@dataclasses.dataclass
class FinetuneResult:
    """A finished run: the registered tag (None when not registered), metrics and last checkpoint."""

    tag: str | None
    history: list[dict[str, Any]]
    data: dict[str, Any]
    checkpoint: Path | None
    seconds: float


def _resumed_run(folder: str | Path, config: TrainConfig) -> _Run:
    trainable, state, optimizer_state = read_checkpoint(folder)
    saved = TrainConfig(**{**state["config"], "checkpoint_dir": Path(state["config"]["checkpoint_dir"])})
    # The checkpoint fixes how the run optimises; the caller decides where it stops and runs.
    config = dataclasses.replace(saved, epochs=config.epochs, device=config.device, progress=config.progress)
    if state["epoch"] >= config.epochs:
        raise FinetuneError(f"checkpoint {folder} already completed epoch {state['epoch']} of {config.epochs}; "
                            "pass a larger --epochs to train further")
    optimizer = _adamw(trainable.model, config)
    optimizer.load_state_dict(optimizer_state)
    logger.info("resuming %s after epoch %d (step %d)", folder, state["epoch"], state["global_step"])
    return _Run(trainable, optimizer, config, Path(folder).parent, state["name"], state["epoch"],
                state["global_step"], list(state["history"]), Path(folder))


def finetune(csv_path: str | Path, config: TrainConfig, *, tag: str | None = None, arch: str | None = None,
             model_config: str | Path | None = None, image_root: str | Path | None = None,
             resume: str | Path | None = None, name: str | None = None, register: bool = True,
             metadata: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune on the CSV's pairs from one of ``tag``, ``arch`` or ``model_config``, or continue the checkpoint
    ``resume`` (its hyperparameters win), and register the result with ``metadata`` as a new store version."""
    start = time.perf_counter()
    if resume is not None:
        run = _resumed_run(resume, config)
    else:
        trainable = init_model(tag=tag, arch=arch, model_config=model_config, seed=config.seed)
        base = trainable.origin.get("base_tag")  # by default named after its base (or architecture) + "-finetune"
        name = name or (f"{base.split(':')[0]}-finetune" if base else store_name(trainable.arch, "finetune"))
        run_dir = config.checkpoint_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = _Run(trainable, _adamw(trainable.model, config), config, run_dir, name)
    run.trainable.inherited.update(metadata or {})
    pairs = load_pairs(csv_path, run.trainable.preprocess_cfg, image_root, min_rows=2,
                       threads=max(1, torch.get_num_threads()))
    train_idx, val_idx = split_indices(len(pairs.rows), run.config.val_fraction, run.config.seed)
    trainer = _Trainer(run, pairs, train_idx, val_idx)
    logger.info("training on %d pairs, validating on %d; %d steps per epoch", len(train_idx), len(val_idx),
                trainer.steps_per_epoch)
    if not run.history:
        val_loss, recall = trainer.validate()
        run.history.append(EpochMetrics(0, None, val_loss, recall, 0.0, 0.0).to_json())
    for epoch in range(run.epoch + 1, run.config.epochs + 1):
        metrics = trainer.train_epoch(epoch)
        run.history.append(metrics.to_json())
        run.epoch = epoch
        logger.info("epoch %d of %d: %s", epoch, run.config.epochs, json.dumps(metrics.to_json()))
        run.checkpoint = save_checkpoint(run.run_dir / f"epoch-{epoch:03d}", run.trainable, run.optimizer, run.state())
        keep = run.config.keep_checkpoints  # the last ones; 0 keeps all
        for old in sorted(run.run_dir.glob("epoch-*"))[:-keep] if keep > 0 else []:
            if old.is_dir() and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)
    seconds = time.perf_counter() - start
    data = {**pairs.report(), "csv": str(csv_path), "train_rows": len(train_idx), "val_rows": len(val_idx)}
    new_tag = register_run(run, data, seconds) if register else None
    return FinetuneResult(new_tag, run.history, data, run.checkpoint, seconds)


def register_run(run: _Run, data: dict[str, Any], seconds: float) -> str:
    """Save the trained model as a new store version (source ``finetune``) with its metrics."""
    trainable = run.trainable
    training = {"config": run.config.to_json(), "history": run.history, "data": data, "base": trainable.origin,
                "seconds": round(seconds, 1), "epochs_completed": run.epoch,
                **({"checkpoint": str(run.checkpoint)} if run.checkpoint is not None else {})}
    extra: dict[str, Any] = {**trainable.inherited, "training": training,
                             "origin": trainable.origin.get("base_tag") or f"random init of {trainable.arch}"}
    extra.update({k: run.history[-1][k] for k in ("val_recall_at_1", "val_loss") if k in run.history[-1]})
    trainable.model.to("cpu").eval()
    tag = save_entry(trainable.model, trainable.model_cfg, trainable.preprocess_cfg, name=run.name,
                     arch=trainable.arch, pretrained="finetune", source="finetune", extra_metadata=extra,
                     tokenizer_dir=trainable.tokenizer_dir)
    logger.info("registered %s", tag)
    return tag

