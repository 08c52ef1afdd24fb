"""Run inside a venv that holds only clip-service-client: use it against a live service, print JSON.

    python light_client_script.py SERVICE_URL IMAGE_PATH

Prints {"missing": [...], "loaded": [...], "image": [...], ...} for the test to check.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys

from clip_client import AsyncClipClient, ClipClient, CLIPEmbedder, ClipServiceError, from_env

HEAVY = ("torch", "bentoml", "open_clip", "PIL", "pydantic", "clip_runner", "clip_http")


def _missing() -> list[str]:
    gone = []
    for name in HEAVY:
        try:
            importlib.import_module(name)
        except ImportError:
            gone.append(name)
    return gone


async def _async_calls(url: str, image: str) -> dict[str, object]:
    async with AsyncClipClient(url) as clip:
        row = await clip.encode_image(image)
        best = (await clip.similarity(image, ["a photo", "a drawing"]))["best_match"]
    return {"async_image": row.tolist(), "async_best": best}


def main(url: str, image: str) -> None:
    out: dict[str, object] = {"missing": _missing()}
    with ClipClient(url) as clip:
        out["image"] = clip.encode_image(image).tolist()
        out["texts"] = clip.encode_text(["a red shoe", "a blue bag"]).tolist()
        try:
            clip.encode_text("x" * 501)
        except ClipServiceError as exc:
            out["error"] = [exc.status, exc.field]
    out.update(asyncio.run(_async_calls(url, image)))
    try:
        from_env()  # USE_LOCAL_CLIP unset: in-process, which this install cannot do
    except ImportError as exc:
        out["in_process_error"] = str(exc)
    os.environ.update(USE_LOCAL_CLIP="true", LOCAL_CLIP_URL=url)
    with CLIPEmbedder() as embedder:
        row = asyncio.run(embedder.generate_embedding(image))
        out["embedder_image"] = None if row is None else row.tolist()
        out["embedder_rows"] = len(asyncio.run(embedder.generate_embeddings_batch([image, image],
                                                                                  show_progress=False)))
        out["embedder_dimension"] = embedder.get_embedding_dimension()
    out["loaded"] = sorted(name for name in HEAVY if name in sys.modules)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
