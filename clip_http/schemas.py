"""OpenAPI request bodies: each image route documented as a multipart form and as JSON, from one field list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clip_runner.serving import FORMS

IMAGE_TEXT = f"{FORMS} (URLs when the server allows them: CLIP_ALLOW_IMAGE_URLS)"

# A route's fields: name → kind; a kind ending in "?" is optional.
_JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "image": {"type": "string", "description": IMAGE_TEXT},
    "images": {"type": "array", "items": {"type": "string", "description": IMAGE_TEXT}},
    "text": {"type": "string"},
    "texts": {"type": "array", "items": {"type": "string"}},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
}
_FORM_SCHEMAS: dict[str, dict[str, Any]] = {
    **_JSON_SCHEMAS,
    "image": {"type": "string", "format": "binary", "description": f"an image file, or as text: {IMAGE_TEXT}"},
    "images": {"type": "array", "items": {"type": "string", "format": "binary"},
               "description": "repeated image files"},
    "texts": {"type": "array", "items": {"type": "string"}, "description": "repeated fields, or one JSON array"},
}


def request_body(fields: Mapping[str, str], *, form: bool = True) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route's fields, as JSON and (``form``) as a multipart form."""
    def schema(schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        return {"type": "object",
                "properties": {name: schemas[kind.rstrip("?")] for name, kind in fields.items()},
                "required": [name for name, kind in fields.items() if not kind.endswith("?")]}

    content = {"application/json": {"schema": schema(_JSON_SCHEMAS)}}
    if form:
        content["multipart/form-data"] = {"schema": schema(_FORM_SCHEMAS)}
    return {"requestBody": {"required": True, "content": content}}


EMBEDDINGS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object",
    "properties": {
        "input": {"description": "a string, or a list of strings and {\"text\": ...} / {\"image\": ...} items "
                                 f"(images: {IMAGE_TEXT})",
                  "anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [
                      {"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}},
                      {"type": "object", "properties": {"image": {"type": "string"}}}]}}]},
        "messages": {"type": "array", "description": "vLLM's form: one message whose content is one "
                     "{\"type\": \"image_url\", \"image_url\": {\"url\": ...}} or {\"type\": \"text\"} part",
                     "items": {"type": "object"}},
        "model": {"type": "string", "description": "the served model's id or an alias (GET /v1/models)"},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "description": "must equal the model's embedding size"},
        "user": {"type": "string"},
    }}}}}}
