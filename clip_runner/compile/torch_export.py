"""The torch side of a compile (:func:`export`), run in a child process that ends, taking torch and the
fp32 model with it, before :mod:`clip_runner.compile.openvino_compiler` quantizes and checks."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from open_clip.tokenizer import SimpleTokenizer
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from ..preprocessing.clip_tokenizer import PATTERN, SPECIAL_TOKENS
from ..preprocessing.images import PixelPipeline
from ..runtimes.torch_encoder import TorchEncoder
from ..store.entries import CONFIG_FILE, TOKENIZER_FILE, open_entry
from ..store.weights import load_entry

logger = logging.getLogger(__name__)


class ImageTower(torch.nn.Module):
    """(N, H, W, 3) uint8 → image features: ToTensor + Normalize compiled into the graph."""

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, 1, 3))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = (pixels.float() / 255.0 - self.mean) / self.std
        return self.model.encode_image(batch.permute(0, 3, 1, 2))


class TextTower(torch.nn.Module):
    """(N, context_length) int64 tokens → text features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def export(tag: str, folder: Path, threads: int, probe_pixels: np.ndarray, probe_texts: list[str],
           calibration_texts: list[str]) -> dict[str, Any]:
    """Write ``image.xml``/``text.xml`` (fp32), the config and the tokenizer of torch entry ``tag`` into
    ``folder``. Returns plain values (the parent unpickles them without importing this module): the
    torch fp32 features of the probes (``expected_images``, ``expected_texts``), the calibration
    captions' tokens (``calibration_tokens``), and whether ``tokenizer.json`` was written."""
    torch.set_num_threads(threads)
    parent = open_entry(tag)
    loaded = load_entry(parent, torch.device("cpu"))
    reference = TorchEncoder(loaded, "fp32")
    expected = (reference.encode_pixels(probe_pixels), reference.encode_texts(probe_texts))
    logger.info("converting %s to OpenVINO", parent.tag)
    pipeline = PixelPipeline(parent.preprocess_cfg)
    for name, tower in _convert(loaded.model, loaded.tokenizer, pipeline).items():
        ov.save_model(tower, str(folder / f"{name}.xml"), compress_to_fp16=False)
    shutil.copy(parent.path / CONFIG_FILE, folder / CONFIG_FILE)
    tokens = loaded.tokenizer(calibration_texts).numpy() if calibration_texts else np.zeros((0, 0), np.int64)
    return {"expected_images": expected[0], "expected_texts": expected[1], "calibration_tokens": tokens,
            "tokenizer_written": write_tokenizer(loaded.tokenizer, folder)}


def write_tokenizer(tokenizer: Any, folder: Path) -> bool:
    """Write ``tokenizer.json`` for open_clip ``tokenizer`` into ``folder``; False (nothing written)
    when it is not the plain CLIP tokenizer that :class:`~clip_runner.preprocessing.clip_tokenizer.ClipTokenizer`
    reproduces."""
    if type(tokenizer) is not SimpleTokenizer or tokenizer.reduction_fn is not None or \
            tokenizer.clean_fn.__name__ != "_clean_lower":
        return False
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
    bpe = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    bpe.save(str(folder / TOKENIZER_FILE))
    return True


def _convert(model: torch.nn.Module, tokenizer: Any, pipeline: PixelPipeline) -> dict[str, Any]:
    """Both towers as OpenVINO models with a dynamic batch dimension."""
    h, w = pipeline.size
    tokens = tokenizer(["a photo of a cat"])
    with torch.no_grad():
        image = ov.convert_model(ImageTower(model, pipeline.mean, pipeline.std).eval(),
                                 example_input=torch.zeros(1, h, w, 3, dtype=torch.uint8),
                                 input=[([-1, h, w, 3], ov.Type.u8)])
        text = ov.convert_model(TextTower(model).eval(), example_input=tokens,
                                input=[([-1, tokens.shape[1]], ov.Type.i64)])
    return {"image": image, "text": text}
