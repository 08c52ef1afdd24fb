"""decode_image: limits, format checks, error mapping and mode normalisation, on real bytes."""

from __future__ import annotations

import base64
import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from clip_runner.errors import (
    InputError,
    InvalidImage,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from clip_runner.preprocessing.images import SUPPORTED_FORMATS, decode_image

MAX_BYTES = 10_000_000
MAX_PIXELS = 4_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---- helpers --------------------------------------------------------------------------------


def _decode(data: bytes, **limits: int) -> Image.Image:
    limits = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, **limits}
    return decode_image(data, field="photo", **limits)


def _expect(kind: type[InputError], status: int, data: bytes, **limits: int) -> InputError:
    """Decode, assert the typed error and its status, and that it names the field."""
    with pytest.raises(kind) as caught:
        _decode(data, **limits)
    err = caught.value
    assert err.status == status
    assert err.field == "photo"
    assert "'photo'" in err.message
    return err


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _solid(colour: tuple[int, ...], size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(width: int, height: int, depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand, so the header can say anything (rows=None: no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = _png_chunk(b"IDAT", zlib.compress(rows)) if rows is not None else b""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def _rgb(image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    assert type(image) is Image.Image  # a plain image, not a file-backed ImageFile
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size
    return image


# ---- limits ---------------------------------------------------------------------------------


def test_empty_upload_is_invalid_input() -> None:
    err = _expect(InvalidInput, 400, b"")
    assert "is empty" in err.message


def test_default_field_name() -> None:
    with pytest.raises(InvalidInput, match="field 'image'") as caught:
        decode_image(b"", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert caught.value.field == "image"


def test_bytes_over_limit_are_rejected_before_decoding() -> None:
    # Not an image at all: only a check that runs before decoding can answer 413 here.
    err = _expect(PayloadTooLarge, 413, b"\0" * 12_300_000, max_bytes=10_000_000)
    assert "12.3 MB" in err.message and "10.0 MB" in err.message
    good = _save(_solid(RED), "PNG")
    _expect(PayloadTooLarge, 413, good, max_bytes=len(good) - 1)
    _rgb(_decode(good, max_bytes=len(good)))


def test_header_pixel_count_over_limit_is_413_without_decoding() -> None:
    # 100000x100000 RGB would need 30 GB; the header alone must be enough to refuse it.
    bomb = _png(100_000, 100_000, 8, 2, rows=None)
    start = time.perf_counter()
    err = _expect(PayloadTooLarge, 413, bomb)
    assert time.perf_counter() - start < 1.0
    assert "pixel limit" in err.message


def test_pixel_limit_is_ours_not_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # With Pillow's global guard switched off, our own header check still refuses the bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    err = _expect(PayloadTooLarge, 413, _png(100_000, 100_000, 8, 2, rows=None))
    assert "decoded size 100000x100000" in err.message and "pixel limit" in err.message
    small = _save(_solid(RED, (100, 100)), "PNG")
    err = _expect(PayloadTooLarge, 413, small, max_pixels=9_999)
    assert "100x100" in err.message
    _rgb(_decode(small, max_pixels=10_000), (100, 100))


def test_pillow_decompression_bomb_error_and_warning_become_413(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _expect(PayloadTooLarge, 413, _save(_solid(RED, (20, 20)), "PNG"))  # 400 > 2 * 100: error
    warns = _save(_solid(RED, (10, 15)), "PNG")  # 150 > 100: only a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _expect(PayloadTooLarge, 413, warns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _rgb(_decode(warns), (10, 15))  # within our limit, a mere warning does not fail it


def test_zero_width_image_is_invalid() -> None:
    err = _expect(InvalidImage, 400, _png(0, 10, 8, 2, rows=b""))
    assert "PNG" in err.message


# ---- not an image / unsupported formats -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (np.random.default_rng(0).bytes(2048), "not a recognised image"),
        (b"just some words, not a picture\n", "upload is text"),
        (b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", "upload is text"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4"/>', "upload is text"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "upload is text"),
        (b'{"image": "cat.jpg"}', "upload is text"),
        (base64.b64encode(_save(_solid(RED), "PNG")), "base64, data: URIs and URLs are read from a JSON body"),
        (b"data:image/png;base64,iVBORw0KGgo=", "base64, data: URIs and URLs are read from a JSON body"),
    ],
    ids=["random", "text", "html", "svg", "pdf", "json", "base64", "data-uri"],
)
def test_non_images_are_415(data: bytes, hint: str) -> None:
    err = _expect(UnsupportedMediaType, 415, data)
    assert hint in err.message
    assert "JPEG" in err.message and "PNG" in err.message  # lists what is supported


@pytest.mark.parametrize(
    "data", [b"https://example.com/cat.jpg", b"  http://127.0.0.1:8080/x.png\n", b"file:///etc/passwd"]
)
def test_url_is_not_fetched(data: bytes) -> None:
    err = _expect(UnsupportedMediaType, 415, data)
    assert "upload is text, not image bytes" in err.message and "URLs are read from a JSON body" in err.message


@pytest.mark.parametrize("data", [b"/etc/passwd", b"./cat.jpg", b"C:\\Users\\me\\cat.jpg"])
def test_path_is_not_opened(data: bytes) -> None:
    err = _expect(UnsupportedMediaType, 415, data)
    assert "upload is text, not image bytes" in err.message and "paths are never opened" in err.message


def test_path_to_a_real_image_is_still_not_opened(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(_save(_solid(RED), "PNG"))
    _expect(UnsupportedMediaType, 415, str(path).encode())


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_format_pillow_opens_but_we_do_not_support_is_415(fmt: str) -> None:
    assert fmt not in SUPPORTED_FORMATS
    err = _expect(UnsupportedMediaType, 415, _save(_solid(RED), fmt))
    assert f"{fmt} images are not supported" in err.message
    assert "JPEG" in err.message and "WEBP" in err.message


# ---- damaged supported images ---------------------------------------------------------------


def _noise(size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_image_is_invalid(fmt: str, keep: float) -> None:
    data = _save(_noise(), fmt)
    err = _expect(InvalidImage, 400, data[: max(16, int(len(data) * keep))])
    assert "could not be decoded" in err.message and fmt in err.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_message() -> None:
    data = _save(_noise(), "JPEG")
    err = _expect(InvalidImage, 400, data[: len(data) // 2])
    assert "could not be decoded: truncated or corrupt JPEG" in err.message


def test_corrupt_png_pixel_data_is_invalid() -> None:
    data = bytearray(_save(_noise(), "PNG"))
    data[200:260] = b"\0" * 60  # inside IDAT: the header still parses, the pixels do not
    err = _expect(InvalidImage, 400, bytes(data))
    assert "PNG" in err.message


def test_bad_png_crc_is_invalid() -> None:
    data = bytearray(_png(4, 4, 8, 2, rows=b"\0" + b"\x80" * 12))
    data[29] ^= 0xFF  # first byte of the IHDR checksum (8 signature + 8 chunk head + 13 body)
    _expect(InvalidImage, 400, bytes(data))


# ---- good images: orientation, frames, modes ------------------------------------------------


def test_progressive_jpeg_decodes() -> None:
    source = _noise((40, 30)).resize((80, 60))
    image = _rgb(_decode(_save(source, "JPEG", progressive=True, quality=95)), (80, 60))
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(source, dtype=int)).mean()
    assert diff < 20


def _left_red_right_blue(size: tuple[int, int] = (20, 10)) -> Image.Image:
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _save(_left_red_right_blue(), "JPEG", exif=exif.tobytes(), quality=95)
    image = _rgb(_decode(data), (10, 20))
    assert _close(image.getpixel((5, 2)), RED, 40)  # the left edge is now on top
    assert _close(image.getpixel((5, 17)), BLUE, 40)


def test_broken_exif_falls_back_to_no_rotation() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n      10\nzz-not-hex\n")
    data = _save(_left_red_right_blue(), "PNG", pnginfo=info)
    image = _rgb(_decode(data), (20, 10))
    assert image.getpixel((2, 5)) == RED


def test_garbage_exif_in_jpeg_is_ignored() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow reports the corrupt block
        _rgb(_decode(_save(_solid(RED), "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\xff")), (16, 16))


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
        ("PNG", {}),  # APNG
        ("MPO", {}),
        ("TIFF", {}),  # multi-page
    ],
)
def test_multi_frame_image_gives_first_frame(fmt: str, params: dict[str, object]) -> None:
    frames = [_solid(RED), _solid(BLUE), _solid(GREEN)]
    data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **params)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 3
    assert _close(_rgb(_decode(data), (16, 16)).getpixel((8, 8)), RED, 8)


def test_rgba_transparency_composites_over_white() -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 0)  # invisible: must not leak its colour
    pixels[0, 1] = (0, 0, 0, 128)  # half-transparent black
    pixels[1, 0] = (255, 0, 0, 255)
    image = _rgb(_decode(_save(Image.fromarray(pixels), "PNG")), (2, 2))
    assert image.getpixel((0, 0)) == WHITE
    assert _close(image.getpixel((1, 0)), (127, 127, 127), 1)
    assert image.getpixel((0, 1)) == RED


def _palette_with_transparent_index() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((3, 3), 1)
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composites_over_white(fmt: str) -> None:
    data = _save(_palette_with_transparent_index(), fmt, transparency=0)
    image = _rgb(_decode(data), (4, 4))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 3)) == RED


def test_palette_without_transparency() -> None:
    image = _rgb(_decode(_save(_palette_with_transparent_index(), "PNG")), (4, 4))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((3, 3)) == RED


@pytest.mark.parametrize(
    ("mode", "fmt", "colour"),
    [("LA", "PNG", (0, 0)), ("PA", "TIFF", (0, 0)), ("RGBA", "WEBP", (0, 0, 0, 0))],
)
def test_other_alpha_modes_composite_over_white(
    mode: str, fmt: str, colour: tuple[int, ...]
) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = _save(Image.new(mode, (4, 4), colour), fmt, **params)
    assert _rgb(_decode(data)).getpixel((1, 1)) == WHITE


def test_rgb_png_with_transparent_colour_key() -> None:
    data = _save(_left_red_right_blue(), "PNG", transparency=BLUE)
    image = _rgb(_decode(data), (20, 10))
    assert image.getpixel((2, 5)) == RED
    assert image.getpixel((18, 5)) == WHITE


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 77, 77), ("1", 1, 255), ("1", 0, 0)])
def test_grayscale_and_bilevel_become_rgb(mode: str, value: int, expected: int) -> None:
    data = _save(Image.new(mode, (4, 4), value), "PNG")
    assert _rgb(_decode(data), (4, 4)).getpixel((1, 1)) == (expected,) * 3


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_red_stays_red(fmt: str) -> None:
    data = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    assert _close(_rgb(_decode(data)).getpixel((4, 4)), RED, 16)


@pytest.mark.parametrize("mode", ["YCbCr", "LAB"])
def test_other_colour_spaces_become_rgb(mode: str) -> None:
    data = _save(_solid((200, 40, 40)).convert(mode), "TIFF")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == mode
    assert _close(_rgb(_decode(data)).getpixel((4, 4)), (200, 40, 40), 16)


# ---- high bit depth -------------------------------------------------------------------------


def _gradient_out(data: bytes, expected_mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == expected_mode
    out = np.asarray(_rgb(_decode(data)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    return out[0, :, 0].astype(int)


def test_16_bit_png_gradient_is_scaled_not_clipped() -> None:
    row = (np.arange(256) * 257).astype(np.uint16)  # 0 .. 65535
    data = _save(Image.fromarray(np.tile(row, (4, 1))), "PNG")
    out = _gradient_out(data, "I;16")
    assert out.tolist() == list(range(256))  # exact: v / 257


def test_16_bit_big_endian_tiff_gradient() -> None:
    row = np.linspace(0, 65535, 64).astype(">u2")
    data = _save(Image.fromarray(np.tile(row, (2, 1))), "TIFF")
    out = _gradient_out(data, "I;16B")
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) > 0).all()


def test_32_bit_int_tiff_is_stretched_to_its_range() -> None:
    row = np.linspace(-1000, 3000, 32).astype(np.int32)
    out = _gradient_out(_save(Image.fromarray(np.tile(row, (2, 1))), "TIFF"), "I")
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) > 0).all()


def test_float_tiff_in_unit_range_and_out_of_it() -> None:
    unit = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (2, 1))
    out = _gradient_out(_save(Image.fromarray(unit), "TIFF"), "F")
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out) > 0).all()
    wide = np.tile(np.linspace(-50, 5000, 16, dtype=np.float32), (2, 1))
    wide[0, 3] = np.nan
    out = _gradient_out(_save(Image.fromarray(wide), "TIFF"), "F")
    assert out[0] == 0 and out[-1] == 255 and out[3] == 0


def test_16_bit_rgb_png_keeps_its_colours() -> None:
    # Pillow 13 opens 16-bit RGB as 8-bit RGB itself (high byte of each sample).
    pixels = np.array([[[65535, 0, 0], [0, 32896, 0], [0, 0, 65535]]], dtype=">u2")
    data = _png(3, 1, 16, 2, rows=b"\0" + pixels.tobytes())
    image = _rgb(_decode(data), (3, 1))
    assert [image.getpixel((x, 0)) for x in range(3)] == [RED, (0, 128, 0), BLUE]


# ---- result ---------------------------------------------------------------------------------


def test_result_is_detached_from_the_upload() -> None:
    data = bytearray(_save(_solid(RED, (8, 8)), "PNG"))
    image = _rgb(_decode(data), (8, 8))
    data[:] = b"\0" * len(data)
    assert not isinstance(image, ImageFile.ImageFile)
    assert image.getpixel((4, 4)) == RED


def test_every_supported_format_round_trips() -> None:
    for fmt in sorted(SUPPORTED_FORMATS):
        params: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
        image = _rgb(_decode(_save(_solid((30, 60, 90), (12, 9)), fmt, **params)), (12, 9))
        assert _close(image.getpixel((6, 4)), (30, 60, 90), 6), fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_mutated_bytes_only_ever_raise_input_errors(fmt: str) -> None:
    # Flipped bytes and cut-offs reach many different Pillow code paths; whatever breaks, the
    # caller must get a typed error or a valid RGB image, never a bare Pillow exception.
    seed = _save(_noise((32, 24)), fmt)
    rng = np.random.default_rng(7)
    for _ in range(150):
        data = bytearray(seed)
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns about some corrupt metadata
                image = _decode(bytes(data), max_pixels=1_000_000)
        except InputError as err:
            assert err.status in (400, 413, 415) and "'photo'" in err.message
        else:
            assert image.mode == "RGB"


# ---- model input: the Pillow path against open_clip's own transform ------------------------------

@pytest.mark.parametrize("cfg", [{}, {"size": 64}, {"size": 240, "interpolation": "bilinear"},
                                 {"size": [224, 224], "resize_mode": "squash"}, {"size": 336}])
def test_pillow_pipeline_equals_open_clips_transform_pixel_for_pixel(cfg: dict) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    from clip_runner.preprocessing.images import PixelPipeline

    reference = image_transform_v2(PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), cfg)), is_train=False)
    pil_steps = reference.transforms[: [type(t).__name__ for t in reference.transforms].index("MaybeToTensor")]
    ours, rng = PixelPipeline(cfg), np.random.default_rng(0)
    for w, h in [(640, 480), (480, 640), (224, 224), (225, 223), (1, 300), (300, 1), (97, 1201), (63, 65)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected = image
        for step in pil_steps:
            expected = step(expected)
        assert np.array_equal(ours(image), np.asarray(expected.convert("RGB"))), (cfg, (w, h))


def test_preprocess_defaults_are_open_clips() -> None:
    import dataclasses

    from open_clip.transform import PreprocessCfg

    from clip_runner.preprocessing.images import PREPROCESS_DEFAULTS

    assert PREPROCESS_DEFAULTS == dataclasses.asdict(PreprocessCfg())
