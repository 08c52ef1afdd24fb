"""Untrusted upload bytes → validated 8-bit RGB → the model's input pixels.

:func:`decode_image` is the only way request bytes become pixels; every failure is a typed
:class:`~clip_runner.errors.InputError` naming the field, never a Pillow exception.
:class:`PixelPipeline` is the PIL half of open_clip's eval transform (resize, crop), on Pillow
alone for the common layouts so that serving a compiled entry never imports torch; the runtime
does the tensor half once per batch. :class:`UploadPreparer` is the two in a row, with the limits.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import io
import re
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import InvalidImage, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from ..settings import ClipSettings

__all__ = ["SUPPORTED_FORMATS", "PixelPipeline", "UploadPreparer", "decode_image"]

#: Pillow format names accepted. MPO is what Pillow calls a multi-picture JPEG (many phones).
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})

_SUPPORTED_LIST = ", ".join(sorted(SUPPORTED_FORMATS - {"MPO"}))

# Modes that carry transparency once converted to RGBA (P/L/RGB may too, via info).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})

# Magic numbers of the supported formats. Used only after Pillow failed to open the bytes, to
# tell a damaged image (400) apart from something that is not an image at all (415).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
)
# Sizes of the BMP info headers; "BM" alone is too weak a signature (any text may start so).
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, field: str = "image",
                 draft_side: int | None = None) -> Image.Image:
    """One upload → a new, loaded RGB image: EXIF orientation applied, transparency over white, first frame only,
    high bit depths scaled to 8 bits. ``draft_side``: a JPEG decodes at the smallest DCT scale that keeps both
    sides at least this long. Every failure is an :class:`~clip_runner.errors.InputError` naming ``field``."""
    _check_bytes(data, max_bytes, field)
    source = _open(bytes(data), max_pixels, field)
    try:
        _check_dimensions(source.size, max_pixels, field)
        if draft_side and source.format in ("JPEG", "MPO"):
            # Square request: both sides stay >= draft_side whatever the EXIF orientation.
            source.draft(None, (draft_side, draft_side))
        _load(source, max_pixels, field)
        return _to_rgb(source, field)
    finally:
        source.close()  # drop the reference to the upload buffer (and any frame cursor)


# ---- limits ---------------------------------------------------------------------------------


def _check_bytes(data: bytes, max_bytes: int, field: str) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"field '{field}' must be an uploaded file", field=field)
    if len(data) == 0:
        raise InvalidInput(f"field '{field}' is empty; upload the image bytes", field=field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"field '{field}': upload is {len(data) / 1e6:.1f} MB, "
                              f"the limit is {max_bytes / 1e6:.1f} MB", field=field)


def _check_dimensions(size: tuple[int, int], max_pixels: int, field: str) -> None:
    # This runs on the header's size, before any pixel is decoded, and is what keeps a
    # decompression bomb out: Pillow's MAX_IMAGE_PIXELS is a process-wide setting that
    # anyone may change (or disable), so it is not relied on.
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"field '{field}': image has zero width or height ({width}x{height})", field=field)
    if width * height > max_pixels:
        raise PayloadTooLarge(f"field '{field}': decoded size {width}x{height} ({width * height:,} pixels) "
                              f"exceeds the pixel limit of {max_pixels:,}", field=field)


def _bomb_error(exc: Exception, max_pixels: int, field: str) -> PayloadTooLarge:
    """Pillow's own decompression-bomb guard fired first (its message has the pixel count, not the size)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" of {int(found.group(1)):,} pixels" if found else ""
    return PayloadTooLarge(f"field '{field}': decoded size{size} exceeds the pixel limit of {max_pixels:,}",
                           field=field)


# ---- identify -------------------------------------------------------------------------------


def _open(data: bytes, max_pixels: int, field: str) -> Image.Image:
    """Identify the format from the header only (lazy: no pixel data is decoded yet)."""
    try:
        # A file object, never a str: Image.open would treat a str as a path to open.
        image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels, field) from exc
    except Exception as exc:  # any failure to identify untrusted bytes
        raise _unrecognised(data, field) from exc
    if image.format not in SUPPORTED_FORMATS:
        name = image.format or "this"
        image.close()
        raise UnsupportedMediaType(f"field '{field}': {name} images are not supported; "
                                   f"supported formats: {_SUPPORTED_LIST}", field=field)
    return image


def _unrecognised(data: bytes, field: str) -> InvalidImage | UnsupportedMediaType:
    """Error for bytes Pillow could not open: a damaged supported image, or not an image."""
    if (fmt := _sniff(data)) is not None:
        return InvalidImage(f"field '{field}': image could not be decoded: truncated or corrupt {fmt}", field=field)
    return UnsupportedMediaType(f"field '{field}': {_describe(data)}; supported formats: {_SUPPORTED_LIST}",
                                field=field)


def _sniff(data: bytes) -> str | None:
    """Supported format named by the magic number, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _describe(data: bytes) -> str:
    """Unrecognised bytes: text (a URL, a path, base64 sent as a file) or something else."""
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").strip()
    with contextlib.suppress(UnicodeDecodeError):
        # Incremental, so a character cut in half by the 1 KiB window still counts as text.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        if all(c.isprintable() or c in "\t\r\n" for c in text):
            return ("upload is text, not image bytes (base64, data: URIs and URLs are read from a JSON body or a "
                    "form text field; paths are never opened)")
    return "upload is not a recognised image"


# ---- decode ---------------------------------------------------------------------------------


def _load(image: Image.Image, max_pixels: int, field: str) -> None:
    """Decode all pixels of the current (first) frame now, mapping every failure."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Some plugins (TIFF) repeat Pillow's global guard when they allocate the pixels.
        raise _bomb_error(exc, max_pixels, field) from exc
    except Exception as exc:  # decoders raise many types on hostile data
        raise _undecodable(image, exc, field) from exc


def _undecodable(image: Image.Image, exc: BaseException, field: str) -> InvalidImage:
    if isinstance(exc, MemoryError):
        reason = "not enough memory to decode it"
    else:
        reason = f"truncated or corrupt {image.format}"
        detail = str(exc).strip()
        # Pillow's messages are short and useful ("image file is truncated"), but some embed
        # object reprs that mean nothing to a caller.
        if detail and len(detail) <= 120 and "<" not in detail:
            reason += f" ({detail})"
    return InvalidImage(f"field '{field}': image could not be decoded: {reason}", field=field)


def _to_rgb(source: Image.Image, field: str) -> Image.Image:
    """Loaded image of any mode → new detached 8-bit RGB image."""
    try:
        image = _orient(source)
        if image.mode.startswith("I") or image.mode == "F":
            image = _to_8bit(image)
        if image.mode in _ALPHA_MODES or image.has_transparency_data:
            image = _flatten(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
    except MemoryError as exc:
        raise _undecodable(source, exc, field) from exc
    except Exception as exc:  # an exotic mode Pillow cannot convert, or a failing transform
        raise InvalidImage(f"field '{field}': image could not be decoded: cannot convert {source.format} "
                           f"colour mode {source.mode} to RGB", field=field) from exc
    return image


def _orient(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; returns a new image either way (detached from the file)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not fail a good image
        return image.copy()


def _flatten(image: Image.Image) -> Image.Image:
    """Composite over white: CLIP sees what a viewer shows, not the hidden colour."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale → 8-bit L, scaled rather than clipped (Pillow's ``convert("L")``
    clips, so a 16-bit image would come out almost white); :func:`_value_range` picks the range."""
    values = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(values)
    low, high = _value_range(image.mode, values[finite] if not finite.all() else values)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = np.rint(np.clip((values - low) * scale, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(scaled)


def _value_range(mode: str, values: np.ndarray) -> tuple[float, float]:
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    if values.size == 0:
        return 0.0, 0.0
    low, high = float(values.min()), float(values.max())
    if mode == "I" and low >= 0 and high <= 65535:
        return 0.0, 65535.0
    if mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    return low, high


# ---- model input ----------------------------------------------------------------------------

_TENSOR_STEPS = ("ToTensor", "MaybeToTensor", "Normalize")
#: open_clip's ``PreprocessCfg`` defaults (a unit test holds them equal), for keys a config omits.
PREPROCESS_DEFAULTS: dict[str, Any] = {
    "size": 224, "mode": "RGB", "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic", "resize_mode": "shortest",
    "fill_color": 0,
}
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def input_size(preprocess_cfg: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a model's input pixels, from its open_clip preprocess config."""
    size = preprocess_cfg.get("size", PREPROCESS_DEFAULTS["size"])
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class PixelPipeline:
    """PIL image → ``uint8`` array of shape (H, W, 3) at the model's input size."""

    def __init__(self, preprocess_cfg: dict[str, Any]) -> None:
        cfg = {**PREPROCESS_DEFAULTS, **{k: v for k, v in preprocess_cfg.items() if k in PREPROCESS_DEFAULTS}}
        self.mean = tuple(float(m) for m in cfg["mean"])
        self.std = tuple(float(s) for s in cfg["std"])
        self.size = input_size(cfg)
        square = self.size[0] == self.size[1]
        if cfg["interpolation"] in _RESAMPLING and cfg["mode"] == "RGB" and (
                cfg["resize_mode"] == "squash" or (cfg["resize_mode"] == "shortest" and square)):
            self._pil_steps = functools.partial(_resize_and_crop, size=self.size, crop=cfg["resize_mode"] == "shortest",
                                                resample=_RESAMPLING[cfg["interpolation"]])
        else:
            self._pil_steps = _open_clip_steps(preprocess_cfg)

    def draft_side(self, factor: float = 1.0) -> int:
        """Shortest side a reduced-size JPEG decode must keep: ``factor`` × the model input side. Factor 1
        stays within cosine 0.99 of the full-size decode (``python -m bench.decode`` measures it)."""
        return int(round(max(self.size) * factor))

    def __call__(self, image: Image.Image) -> np.ndarray:
        out = self._pil_steps(image)
        if out.mode != "RGB":
            out = out.convert("RGB")
        pixels = np.array(out, dtype=np.uint8)  # a writable copy torch can wrap
        if pixels.shape != (*self.size, 3):
            raise ValueError(f"preprocess produced {pixels.shape}, expected {(*self.size, 3)}")
        return pixels


def _resize_and_crop(image: Image.Image, size: tuple[int, int], crop: bool,
                     resample: Image.Resampling) -> Image.Image:
    """torchvision's ``Resize`` + ``CenterCrop`` as open_clip's eval transform composes them (or, without
    ``crop``, a squash to ``size``): same sizes, same rounding, same Pillow resampling."""
    height, width = size
    if crop:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = height, int(height * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        image = image.resize((new_w, new_h), resample)
        top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
        return image.crop((left, top, left + width, top + height))
    return image.resize((width, height), resample)


def _open_clip_steps(preprocess_cfg: dict[str, Any]) -> Any:
    """The PIL steps of open_clip's own eval transform, for layouts :func:`_resize_and_crop` has not."""
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict  # torch: rare layouts

    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), preprocess_cfg))
    steps = list(image_transform_v2(cfg, is_train=False).transforms)
    names = [type(step).__name__ for step in steps]
    split = next(i for i, name in enumerate(names) if name in _TENSOR_STEPS)
    if names[split:] not in (["ToTensor", "Normalize"], ["MaybeToTensor", "Normalize"]):
        raise ValueError(f"unexpected open_clip transform layout: {names}")
    return lambda image: functools.reduce(lambda out, step: step(out), steps[:split], image)


@dataclasses.dataclass(frozen=True)
class UploadPreparer:
    """Image bytes → model-input pixels under the service's limits and ``CLIP_FAST_DECODE`` (read once)."""

    pipeline: PixelPipeline
    max_bytes: int
    max_pixels: int
    draft_side: int | None

    @classmethod
    def from_settings(cls, preprocess_cfg: dict[str, Any], settings: ClipSettings) -> UploadPreparer:
        """For the model whose open_clip ``preprocess_cfg`` is given."""
        pipeline = PixelPipeline(preprocess_cfg)
        draft = pipeline.draft_side() if settings.fast_decode else None
        return cls(pipeline, settings.max_image_bytes, settings.max_image_pixels, draft)

    def __call__(self, data: bytes, field: str = "image") -> np.ndarray:
        """(H, W, 3) uint8 pixels; raises an :class:`~clip_runner.errors.InputError` naming ``field``."""
        image = decode_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, field=field,
                             draft_side=self.draft_side)
        return self.pipeline(image)
