"""The public service in-process (ASGI): service.py's BentoML service, its worker started here."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from tests.conftest import PINNED_FP32, clip_env


@pytest.fixture(scope="session")
def service_module(tiny_tag: str):
    """The service at fp32 on CPU, with no setting but these: the shell's CLIP_* never reach it."""
    # Settings are read when service.py is imported, so the environment comes first.
    with clip_env({"CLIP_MODEL_TAG": tiny_tag, **PINNED_FP32}):
        from clip_runner.settings import get_settings

        get_settings.cache_clear()
        # Another test may have imported it with other settings: read them again.
        loaded = sys.modules.get("service")
        service = importlib.reload(loaded) if loaded else importlib.import_module("service")
        get_settings.cache_clear()  # service.settings is fixed now; others read their own
    return service


@pytest.fixture(scope="session")
def client(service_module) -> Iterator[TestClient]:
    app = service_module.ClipService.to_asgi()
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def asgi_app(client: TestClient):
    """The ASGI app a TestClient drives, minus lifespan events.

    The service is already started by the client; a second tool driving the same app must not
    run startup/shutdown again (shutdown would tear the shared instance down).
    """
    app = client.app

    async def without_lifespan(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await app(scope, receive, send)

    return without_lifespan


@pytest.fixture
def client_with(service_module, client: TestClient):
    """``make(**settings)``: a client of the service's routes configured with other settings,
    over the model the session's service already loaded (settings are read once, at start: the
    session's ``client`` starts it, so a test run alone finds it loaded too)."""
    from clip_http.app import create_app
    from clip_runner.serving import ClipAPI
    from clip_runner.settings import ClipSettings

    made: list[tuple[TestClient, ClipAPI]] = []

    def make(**overrides) -> TestClient:
        settings = ClipSettings(**overrides)
        app = create_app(settings)
        app.state.api = ClipAPI(service_module.app.state.api.model, settings)
        made.append((TestClient(app, raise_server_exceptions=False), app.state.api))
        return made[-1][0]

    yield make
    for test_client, api in made:
        test_client.close()
        api.close()
