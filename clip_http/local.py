"""The service's app over a model served in this process: what the in-process client drives."""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI

from clip_runner.serving import ClipAPI
from clip_runner.settings import ClipSettings
from clip_runner.startup import serve

from .app import create_app


@dataclasses.dataclass
class LocalApp:
    """The service's app over a model loaded in this process (the in-process client drives it)."""

    app: FastAPI
    api: ClipAPI

    def close(self) -> None:
        """Finish queued work and stop the model and decode threads."""
        self.api.close()


def local_app(settings: ClipSettings | None = None) -> LocalApp:
    """Load the configured model here and serve it through the very routes of the service (with no API key:
    the caller already holds the model)."""
    settings = (settings or ClipSettings()).model_copy(update={"api_key": None})
    app = create_app(settings)
    app.state.api = serve(settings)
    return LocalApp(app, app.state.api)
