"""OpenAI's embeddings dialect over the served model: ``POST /v1/embeddings``, ``GET /v1/models``.

OpenAI's shapes, plus images as ``input`` items ``{"image": ...}`` or vLLM's ``messages`` with one
``image_url`` part (docs/protocols.md). ``usage`` counts CLIP tokens; an image counts 0.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from clip_runner.errors import InvalidInput, ModelNotFound
from clip_runner.serving import ClipAPI, Item, Timings

from .common import RouteTable, api_of, json_object, respond
from .schemas import EMBEDDINGS_BODY, IMAGE_TEXT

TOKEN_IDS = ("token ids are not accepted (they are another model's tokens): send strings. LangChain's "
             "OpenAIEmbeddings sends token ids unless given check_embedding_ctx_length=False")


def served_model(api: ClipAPI, requested: Any) -> str:
    """The served model's id when ``requested`` names it (or is absent); 404 otherwise."""
    names = api.model.names
    if requested is None or (isinstance(requested, str) and any(requested.lower() == n.lower() for n in names)):
        return names[0]
    raise ModelNotFound(f"model {requested!r} is not served here; this server serves {names[0]!r} "
                        f"(also named {', '.join(map(repr, names[1:]))})", field="model")


def request_items(payload: dict[str, Any]) -> list[Item]:
    """``input`` (strings, ``{"text"}``/``{"image"}`` items) or vLLM's ``messages`` → the items to embed."""
    if "messages" in payload and payload.get("input") in (None, "", []):  # the SDK requires some input
        return [_message_item(payload["messages"])]
    if "messages" in payload or "input" not in payload:
        raise InvalidInput("send either 'input' (texts or image items) or 'messages' (one image_url or text part)",
                           field="input")
    given = payload["input"]
    values = given if isinstance(given, list) else [given]
    if not values:
        raise InvalidInput("'input' is empty", field="input")
    return [_input_item(value, "input" if not isinstance(given, list) else f"input[{i}]")
            for i, value in enumerate(values)]


def _input_item(value: Any, field: str) -> Item:
    if isinstance(value, str):
        return ("text", value, field)
    if isinstance(value, dict) and len(value) == 1 and ("image" in value or "text" in value):
        kind = "image" if "image" in value else "text"
        return (kind, value[kind], f"{field}.{kind}")
    if isinstance(value, (int, list)):
        raise InvalidInput(f"field '{field}': {TOKEN_IDS}", field=field)
    raise InvalidInput(f"field '{field}' must be a string, {{\"text\": ...}} or {{\"image\": ...}} "
                       f"({IMAGE_TEXT})", field=field)


def _message_item(messages: Any) -> Item:
    """vLLM's chat form: all messages' content parts together must be one image or one text."""
    parts: list[Item] = []
    for i, message in enumerate(messages if isinstance(messages, list) else [None]):
        content = message.get("content") if isinstance(message, dict) else None
        field = f"messages[{i}].content"
        if isinstance(content, str):
            parts.append(("text", content, field))
        elif isinstance(content, list):
            parts += [_content_part(part, f"{field}[{j}]") for j, part in enumerate(content)]
        else:
            raise InvalidInput(f"field '{field}' must be a string or a list of content parts", field=field)
    if len(parts) != 1:
        raise InvalidInput(f"'messages' holds {len(parts)} content parts; a CLIP embedding is of one image or "
                           "one text: send several as items of 'input', one embedding each", field="messages")
    return parts[0]


def _content_part(part: Any, field: str) -> Item:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return ("text", part.get("text"), f"{field}.text")
    if kind == "image_url":
        url = part.get("image_url")
        return ("image", url.get("url") if isinstance(url, dict) else url, f"{field}.image_url.url")
    raise InvalidInput(f"field '{field}' must be a {{\"type\": \"image_url\"}} or {{\"type\": \"text\"}} part",
                       field=field)


def _encoder(encoding: Any) -> Callable[[np.ndarray], Any]:
    """Row → JSON value: a float list, or base64 of little-endian float32 (OpenAI's ``base64``)."""
    if encoding in (None, "float"):
        return lambda row: row.tolist()
    if encoding == "base64":
        return lambda row: base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    raise InvalidInput("'encoding_format' must be 'float' or 'base64'", field="encoding_format")


async def embeddings(request: Request) -> JSONResponse:
    """OpenAI's create-embeddings: texts and images in, one unit embedding per item out."""
    api = api_of(request)
    payload = await json_object(request)
    model = served_model(api, payload.get("model"))
    dimensions = payload.get("dimensions")
    if dimensions is not None and dimensions != api.embedding_size:
        raise InvalidInput(f"'dimensions' is {dimensions!r}, but this model's embeddings have "
                           f"{api.embedding_size}: send {api.embedding_size} or leave it out", field="dimensions")
    encode = _encoder(payload.get("encoding_format"))
    items = request_items(payload)

    async def run(timings: Timings) -> dict[str, Any]:
        rows, tokens = await api.embed(items, timings)
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(rows)],
                "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}

    return await respond(run)


def _model_card(api: ClipAPI) -> dict[str, Any]:
    names, entry = api.model.names, api.model.encoder.entry
    return {"id": names[0], "object": "model", "created": int(entry.path.stat().st_mtime),
            "owned_by": "clip-service", "aliases": list(names[1:]), "embedding_size": api.embedding_size,
            "image_size": entry.metadata.get("image_size"), "context_length": entry.metadata.get("context_length"),
            "scores": dataclasses.asdict(api.scorer), "modalities": ["text", "image"]}


async def models(request: Request) -> dict[str, Any]:
    """The served model, in OpenAI's list shape, with its embedding size, image size and context length."""
    return {"object": "list", "data": [_model_card(api_of(request))]}


async def model(request: Request, model_id: str) -> dict[str, Any]:
    """One model by id or alias (what ``client.models.retrieve`` asks for)."""
    api = api_of(request)
    served_model(api, model_id)
    return _model_card(api)


async def not_served(request: Request) -> None:
    """Any other ``/v1`` path or method: a 404 (or 405) in OpenAI's shape, naming what is served."""
    methods = {path: method for method, path, _, _ in ROUTES}
    served = methods.get(request.url.path.rstrip("/"))
    if served:
        raise HTTPException(405, f"{request.url.path} takes {served}, not {request.method}", {"Allow": served})
    listed = ", ".join(f"{method} {path.replace('{model_id:path}', '{id}')}" for path, method in methods.items())
    raise HTTPException(404, f"{request.method} {request.url.path} is not served here; this server serves {listed}")


ROUTES: RouteTable = (
    ("POST", "/v1/embeddings", embeddings, EMBEDDINGS_BODY),
    ("GET", "/v1/models", models, None),
    ("GET", "/v1/models/{model_id:path}", model, None),
)
# Last, so that only paths (and methods) the routes above do not serve reach it.
CATCH_ALL = ("/v1/{rest:path}", not_served, ["GET", "POST", "PUT", "PATCH", "DELETE"])
