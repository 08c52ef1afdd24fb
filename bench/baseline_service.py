"""Benchmark baseline: CLIP served the way BentoML's own CLIP example serves it.

    CLIP_MODEL_TAG=<tag> bentoml serve bench.baseline_service:ClipBaseline

One batchable BentoML API takes JPEG uploads as ``PIL.Image`` objects (multipart field
``images``), runs transformers' ``CLIPProcessor`` on the whole batch and then
``CLIPModel.get_image_features``: image decoding and preprocessing happen inside the batch, on
the inference worker, as in that example.

To be a fair comparison it shares everything else with ``service.py``: the architecture (built
in code from the open_clip config of ``CLIP_MODEL_TAG``'s store entry, ViT-B-32's when unset;
weights are random, which costs the same compute), fp32 on CPU and the same autocast dtype on
CUDA (``CLIP_PRECISION``), the same torch threads (``CLIP_NUM_THREADS``), the same batch
limit (``CLIP_BATCH_SIZE``, for BentoML's adaptive batching here) and the same device
(``CLIP_DEVICE``). Outputs are L2-normalised rows, like the service's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from PIL.Image import Image

from clip_runner.runtimes.torch_encoder import configure_threads, inference, pick_device, resolve_precision
from clip_runner.settings import get_settings

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPProcessor

logger = logging.getLogger("clip_baseline")
settings = get_settings()

DEFAULT_ARCH = "ViT-B-32"
# The longest a request may wait in BentoML's adaptive batching queue before it is refused:
# long enough that the benchmark's own load, queued behind full batches, is never refused.
MAX_LATENCY_MS = 10_000
OPENAI_HEAD_WIDTH = 64  # open_clip's default attention head width for ViTs


def architecture(tag: str | None) -> tuple[dict[str, Any], int]:
    """The open_clip model config and input size to mirror: the store entry's, else ViT-B-32's."""
    if tag:
        from clip_runner.store.entries import open_entry

        entry = open_entry(tag)
        size = entry.preprocess_cfg.get("size") or entry.model_cfg["vision_cfg"]["image_size"]
        return entry.model_cfg, int(size if isinstance(size, int) else size[0])
    from clip_runner.store.registration import model_config

    cfg = model_config(DEFAULT_ARCH)
    return cfg, int(cfg["vision_cfg"]["image_size"])


def hf_clip_config(model_cfg: dict[str, Any]) -> CLIPConfig:
    """transformers ``CLIPConfig`` with the same shapes as an open_clip ViT config."""
    from transformers import CLIPConfig

    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    unsupported = {"timm_model_name", "hf_model_name", "attentional_pool"} & (set(vision) | set(text))
    if unsupported:
        raise ValueError(f"the baseline mirrors plain ViT CLIP configs only; got {sorted(unsupported)}")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    vision_width, text_width = int(vision["width"]), int(text["width"])
    return CLIPConfig(
        projection_dim=int(model_cfg["embed_dim"]),
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": int(vision_width * vision.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": vision_width // int(vision.get("head_width", OPENAI_HEAD_WIDTH)),
            "image_size": int(vision["image_size"]),
            "patch_size": int(vision["patch_size"]),
            "hidden_act": act,
        },
        text_config={
            "vocab_size": int(text.get("vocab_size", 49408)),
            "hidden_size": text_width,
            "intermediate_size": int(text_width * text.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text.get("heads", 8)),
            "max_position_embeddings": int(text.get("context_length", 77)),
            "hidden_act": act,
        },
    )


def build_processor(image_size: int) -> CLIPProcessor:
    """``CLIPProcessor``: image processor defaults (OpenAI mean/std) at ``image_size``, and the
    CLIP BPE tokenizer from open_clip's vocabulary (no hub)."""
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    from bench.tokenizer_files import write_clip_tokenizer_files

    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as tmp:
        vocab, merges = write_clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges))
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def image_features(output: Any) -> Any:
    """Projected image embeddings from ``get_image_features`` (a tensor, or an output object
    holding them in ``pooler_output`` in recent transformers)."""
    return getattr(output, "pooler_output", output)


@bentoml.service(name="clip_baseline", workers=1, traffic={"timeout": 600})
class ClipBaseline:
    """transformers CLIP behind one batchable image API."""

    def __init__(self) -> None:
        import torch
        from transformers import CLIPModel

        self.threads = configure_threads(settings.model_copy(update={"workers": 1}).inference_thread_count)
        self.device = pick_device(settings.device)
        model_cfg, size = architecture(settings.model_tag)
        torch.manual_seed(0)
        self.model = CLIPModel(hf_clip_config(model_cfg)).to(self.device).eval()
        self.processor = build_processor(size)
        # Autocast as ours on CUDA; on CPU fp32 weights, as BentoML's example runs.
        self.autocast = resolve_precision(self.device, settings.precision).autocast
        self.encode_image([_blank(size)])  # pay lazy initialisation before taking traffic
        logger.info("baseline CLIP on %s, %d threads, autocast %s", self.device, self.threads, self.autocast)

    @bentoml.api(batchable=True, max_batch_size=max(2, settings.max_batch), max_latency_ms=MAX_LATENCY_MS)
    def encode_image(self, images: list[Image]) -> np.ndarray:
        """Images → (N, D) float32 unit embeddings, preprocessed as one batch by the processor."""
        import torch.nn.functional as F

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with inference(self.device, self.autocast):  # the same inference mode and dtype as ours
            features = image_features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        return F.normalize(features.float(), dim=-1).cpu().numpy()


def _blank(size: int) -> Image:
    from PIL import Image as PILImage

    return PILImage.new("RGB", (size, size))
