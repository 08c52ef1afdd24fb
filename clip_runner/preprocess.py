"""Image preprocessing split in two halves, both driven by the model's own preprocess config.

* :class:`PixelPipeline` — the PIL half of open_clip's eval transform (resize, crop, mode):
  runs per request, in a thread, before batching. Its output is a small ``uint8`` HWC array,
  cheap to send to the batched encoder.
* :func:`normalize` — the tensor half (scale to [0, 1], subtract mean, divide by std): runs
  once per batch on the inference device.

Together they compute exactly what open_clip's ``preprocess`` does, so embeddings match a
direct open_clip encode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image
from torchvision import transforms as T

from .images import decode_image

if TYPE_CHECKING:
    from .settings import ClipSettings

_TENSOR_STEPS = ("ToTensor", "MaybeToTensor", "Normalize")


class PixelPipeline:
    """PIL image → ``uint8`` array of shape (H, W, 3) at the model's input size."""

    def __init__(self, preprocess_cfg: dict[str, Any]) -> None:
        cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), preprocess_cfg))
        steps = list(image_transform_v2(cfg, is_train=False).transforms)
        names = [type(step).__name__ for step in steps]
        split = next(i for i, name in enumerate(names) if name in _TENSOR_STEPS)
        if names[split:] not in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]):
            raise ValueError(f"unexpected open_clip transform layout: {names}")
        self._pil_steps = T.Compose(steps[:split])
        self.mean = tuple(float(m) for m in cfg.mean)
        self.std = tuple(float(s) for s in cfg.std)
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))

    def draft_side(self, factor: float = 1.0) -> int:
        """Shortest side a reduced-size JPEG decode must keep: ``factor`` × the model input side.

        libjpeg's DCT scaling averages each 8×8 block (a box filter) and the resize to the
        model input that follows is bicubic with antialiasing, so even the smallest scale
        that keeps the input side (factor 1) stays within cosine 0.99 of the full-size
        reference (``python -m bench.decode`` measures it).
        """
        return int(round(max(self.size) * factor))

    def __call__(self, image: Image.Image) -> np.ndarray:
        out = self._pil_steps(image)
        if out.mode != "RGB":
            out = out.convert("RGB")
        pixels = np.array(out, dtype=np.uint8)  # a writable copy torch can wrap
        if pixels.shape != (*self.size, 3):
            raise ValueError(f"preprocess produced {pixels.shape}, expected {(*self.size, 3)}")
        return pixels


@dataclasses.dataclass(frozen=True)
class UploadPreparer:
    """Image bytes → model-input pixels, as the service prepares an upload: its size limits
    and, unless ``CLIP_FAST_DECODE`` is off, a reduced-size JPEG decode.

    The limits and the fast-decode size come from the settings once, not once per image.
    """

    pipeline: PixelPipeline
    max_bytes: int
    max_pixels: int
    draft_side: int | None

    @classmethod
    def from_settings(cls, preprocess_cfg: dict[str, Any], settings: ClipSettings) -> UploadPreparer:
        """For the model whose open_clip ``preprocess_cfg`` is given."""
        pipeline = PixelPipeline(preprocess_cfg)
        draft = pipeline.draft_side(settings.fast_decode_factor) if settings.fast_decode else None
        return cls(pipeline, settings.max_image_bytes, settings.max_image_pixels, draft)

    def __call__(self, data: bytes, field: str = "image") -> np.ndarray:
        """(H, W, 3) uint8 pixels; raises an :class:`~clip_runner.errors.InputError` naming ``field``."""
        image = decode_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, field=field,
                             draft_side=self.draft_side)
        return self.pipeline(image)


def normalize(
    pixels: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) normalised ``dtype`` (arithmetic in fp32), on ``device``.

    Same arithmetic as torchvision's ToTensor + Normalize, but once per batch and on the
    target device (the uint8 copy to a GPU is 4× smaller than a float one).
    """
    batch = torch.as_tensor(pixels).to(device, non_blocking=True)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t).to(dtype)
