"""Reading multipart fields for the routes: uploads within limits, list-like form fields."""

from __future__ import annotations

from typing import Any

from fastapi import UploadFile
from fastapi.responses import JSONResponse

from clip_runner.errors import InvalidInput, PayloadTooLarge
from clip_runner.pipeline import Timings, parse_list_field
from clip_runner.settings import ClipSettings

from . import metrics


def timing_headers(timings: Timings) -> dict[str, str]:
    """``X-Batch-Size`` (the adaptive batch the item ran in) and ``Server-Timing``."""
    return {
        "X-Batch-Size": str(timings.batch_size),
        "Server-Timing": (f"decode;dur={timings.decode_ms:.1f}, queue;dur={timings.queue_ms:.1f}, "
                          f"infer;dur={timings.infer_ms:.1f}, batch;desc=\"{timings.batch_size}\""),
    }


def json_response(body: Any, timings: Timings) -> JSONResponse:
    """A 200 JSON response carrying the timing headers; the timings also go to Prometheus."""
    metrics.observe(timings)
    return JSONResponse(body, headers=timing_headers(timings))


def within_limit(data: bytes, field: str, settings: ClipSettings) -> bytes:
    limit = settings.max_image_bytes
    if len(data) > limit:
        raise PayloadTooLarge(f"field '{field}': upload is larger than the limit of "
                              f"{limit / 1e6:.1f} MB (CLIP_MAX_IMAGE_BYTES)", field=field)
    return data


async def read_upload(upload: UploadFile | None, field: str, settings: ClipSettings) -> bytes:
    """Read an uploaded file, refusing a missing field early and never reading past the limit."""
    if upload is None:
        raise InvalidInput(f"field '{field}' is required: send the image as a multipart file", field=field)
    return within_limit(await upload.read(settings.max_image_bytes + 1), field, settings)


async def read_uploads(uploads: list[UploadFile] | None, field: str, settings: ClipSettings) -> list[bytes]:
    """Read 1..max_images uploaded files."""
    if not uploads:
        raise InvalidInput(f"field '{field}' is required: send one or more multipart files", field=field)
    if len(uploads) > settings.max_images:
        raise InvalidInput(f"field '{field}' has {len(uploads)} files; the limit is "
                           f"{settings.max_images}", field=field)
    # An oversized file fails the whole request: it is the caller's contract, not a bad file.
    return [within_limit(await u.read(settings.max_image_bytes + 1), f"{field}[{i}]", settings)
            for i, u in enumerate(uploads)]


def split_categories(values: list[str]) -> list[str]:
    """Categories may come repeated, as a JSON array, or comma-separated in one field."""
    items = parse_list_field(values)
    if len(items) == 1 and isinstance(items[0], str) and "," in items[0]:
        items = [part.strip() for part in items[0].split(",") if part.strip()]
    return items
