"""The service's ASGI app: the native and OpenAI routes behind the guards that the settings configure.

``service.py`` and :mod:`clip_http.local` both mount it, so both run exactly these routes.
"""

from __future__ import annotations

from fastapi import FastAPI

from clip_runner.settings import ClipSettings

from . import native_routes, openai_routes
from .middleware import install


def create_app(settings: ClipSettings) -> FastAPI:
    """The routes behind the guards that ``settings`` configure; ``app.state.api`` serves them."""
    app = FastAPI(title="clip-service", version="0.1.0",
                  description="OpenCLIP image and text embeddings, similarity, mismatch detection "
                  "and zero-shot classification, with adaptive batching. Image routes take a multipart "
                  "form or JSON with base64 images; /v1/embeddings speaks OpenAI's embeddings API.")
    install(app, api_key=settings.api_key, max_request_bytes=settings.max_request_bytes,
            max_concurrency=settings.max_concurrency, cors_origins=settings.cors_origins)
    for method, path, handler, body in native_routes.ROUTES + openai_routes.ROUTES:
        app.add_api_route(path, handler, methods=[method], openapi_extra=body)
    path, handler, methods = openai_routes.CATCH_ALL
    app.add_api_route(path, handler, methods=methods, include_in_schema=False)
    return app
