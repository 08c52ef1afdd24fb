"""HTTP-only helpers for the public service (ASGI middleware); the model side is clip_runner."""
