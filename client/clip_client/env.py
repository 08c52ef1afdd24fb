"""Pick the CLIP client from the environment: ``USE_LOCAL_CLIP=true`` calls the service at
``LOCAL_CLIP_URL`` over HTTP; otherwise the service's app runs in this process (full install only)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import httpx

from .http import DEFAULT_URL, AsyncClipClient, ClipClient, RetryPolicy

if TYPE_CHECKING:
    from clip_runner.settings import ClipSettings

logger = logging.getLogger(__name__)

C = TypeVar("C", ClipClient, AsyncClipClient)

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """Caller-side settings, each the variable of its name in capitals (docs/client.md)."""

    use_local_clip: bool = False
    local_clip_url: str = DEFAULT_URL
    local_clip_api_key: str | None = None
    local_clip_timeout: float = 60.0
    local_clip_retries: int = 3
    local_clip_json_images: bool = False

    def __post_init__(self) -> None:
        if not self.local_clip_timeout > 0:
            raise ValueError(f"LOCAL_CLIP_TIMEOUT must be more than 0, not {self.local_clip_timeout}")
        if self.local_clip_retries < 0:
            raise ValueError(f"LOCAL_CLIP_RETRIES must be 0 or more, not {self.local_clip_retries}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """Read ``USE_LOCAL_CLIP`` and ``LOCAL_CLIP_*`` (empty means unset); a bad value raises ``ValueError``."""
        env = os.environ if environ is None else environ
        raw = {f: env.get(f.name.upper(), "").strip() for f in dataclasses.fields(cls)}
        values = {f.name: _parse(f.name.upper(), value, f.type) for f, value in raw.items() if value}
        return cls(**values)  # type: ignore[arg-type]

    def retry_policy(self) -> RetryPolicy:
        """The HTTP retry policy these settings describe."""
        return RetryPolicy(attempts=self.local_clip_retries + 1)

    def timeout(self) -> httpx.Timeout:
        """The answer timeout; connecting gets at most 5 s, so a dead host is retried soon."""
        return httpx.Timeout(self.local_clip_timeout, connect=min(5.0, self.local_clip_timeout))


def _parse(name: str, raw: str, kind: object) -> object:
    """``raw`` as the field's type (the annotation's text: ``bool``, ``float``, ``int``, ``str ...``)."""
    if kind == "bool":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"{name}={raw!r} is not a boolean: use true or false")
    try:
        return {"float": float, "int": int}.get(str(kind), str)(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a{'n integer' if kind == 'int' else ' number'}") from None


def from_env(settings: ClipSettings | None = None, *, client: ClientSettings | None = None) -> ClipClient:
    """A blocking client chosen by ``USE_LOCAL_CLIP``; ``settings`` configures an in-process model."""
    return _chosen(ClipClient, settings, client)


def async_from_env(settings: ClipSettings | None = None, *, client: ClientSettings | None = None) -> AsyncClipClient:
    """The asyncio counterpart of :func:`from_env`, chosen the same way."""
    return _chosen(AsyncClipClient, settings, client)


def _chosen(kind: type[C], settings: ClipSettings | None, client: ClientSettings | None) -> C:
    cfg = client or ClientSettings.from_env()
    if cfg.use_local_clip:
        logger.info("CLIP: using the service at %s (USE_LOCAL_CLIP=true)", cfg.local_clip_url)
        return kind(cfg.local_clip_url, api_key=cfg.local_clip_api_key, timeout=cfg.timeout(),
                    retry=cfg.retry_policy(), json_images=cfg.local_clip_json_images)
    logger.info("CLIP: loading the model in-process (USE_LOCAL_CLIP is not true)")
    return kind.in_process(settings)
