"""An image field given as text → the image's bytes, in the forms docs/protocols.md lists; anything else is
refused (paths are never opened), and the size limit is checked before decoding."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from typing import Any

from ..errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from ..settings import ClipSettings, parse_hosts
from .fetch import ByteBudget, UrlFetcher, is_image_type

logger = logging.getLogger(__name__)
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]{0,15}://", re.IGNORECASE)
FORMS = "base64 image bytes, a data:image/...;base64, URI or an http(s) URL"
INLINE_CHARS = 1 << 16  # larger base64 is decoded in a thread: 10 MB takes ~50 ms, too long for the event loop
URLS_OFF = "image URLs are off on this server (CLIP_ALLOW_IMAGE_URLS=true turns them on): send the image as base64"


class ImageReferences:
    """Reads image fields given as text, under the service's byte limit and URL policy."""

    def __init__(self, max_bytes: int, fetcher: UrlFetcher | None = None) -> None:
        self.max_bytes = max_bytes
        self.fetcher = fetcher

    @classmethod
    def from_settings(cls, settings: ClipSettings) -> ImageReferences:
        """``CLIP_MAX_IMAGE_BYTES``; a fetcher only with ``CLIP_ALLOW_IMAGE_URLS`` on (the log says which)."""
        hosts = parse_hosts(settings.image_url_hosts)
        if not settings.allow_image_urls:
            if hosts:
                logger.warning("CLIP_IMAGE_URL_HOSTS is set but CLIP_ALLOW_IMAGE_URLS is not: image URLs are refused")
            return cls(settings.max_image_bytes)
        references = cls(settings.max_image_bytes, UrlFetcher(hosts, settings.image_url_timeout))
        logger.info("image URLs are fetched from %s (timeout %g s)", references.url_policy, settings.image_url_timeout)
        return references

    @property
    def url_policy(self) -> str:
        """``off``, ``public addresses only``, or the allow-listed hosts (``/health`` and the log show it)."""
        if self.fetcher is None:
            return "off"
        hosts = sorted(f"{host}:{port}" if port else host for host, port in self.fetcher.hosts or ())
        return ", ".join(hosts) or "public addresses only"

    async def read(self, value: Any, field: str, budget: ByteBudget | None = None) -> bytes:
        """The image bytes ``value`` stands for (URLs within ``budget``); an InputError naming ``field``."""
        if not isinstance(value, str):
            raise InvalidInput(f"field '{field}' must be a string: {FORMS}", field=field)
        text = value.strip()
        if not text:
            raise InvalidInput(f"field '{field}' is empty", field=field)
        if _SCHEME.match(text):
            if self.fetcher is None:
                raise InvalidInput(f"field '{field}' is a URL, but {URLS_OFF}", field=field)
            return await self.fetcher.fetch(text, field, self.max_bytes, budget)
        if len(text) <= INLINE_CHARS:
            return self._decode(text, field)
        return await asyncio.to_thread(self._decode, text, field)

    def _decode(self, text: str, field: str) -> bytes:
        return self._data_uri(text, field) if text[:5].lower() == "data:" else self._base64(text, field)

    def _data_uri(self, text: str, field: str) -> bytes:
        header, comma, data = text[5:].partition(",")
        params = [p.strip().lower() for p in header.split(";")]
        if not comma:
            raise InvalidInput(f"field '{field}': a data: URI needs a comma before its data", field=field)
        if not is_image_type(params[0]):
            raise UnsupportedMediaType(f"field '{field}': the data: URI is {params[0]}, not an image", field=field)
        if "base64" not in params[1:]:
            raise InvalidInput(f"field '{field}': the data: URI must be base64 (data:image/png;base64,...)",
                               field=field)
        return self._base64(data, field)

    def _base64(self, text: str, field: str) -> bytes:
        compact = "".join(text.split())
        if len(compact) // 4 * 3 > self.max_bytes + 2:  # the decoded size, known before decoding
            raise PayloadTooLarge(f"field '{field}': the image is about {len(compact) * 3 // 4 / 1e6:.1f} MB, "
                                  f"larger than the limit of {self.max_bytes / 1e6:.1f} MB (CLIP_MAX_IMAGE_BYTES)",
                                  field=field)
        urlsafe = "-" in compact or "_" in compact
        try:
            return base64.b64decode(compact + "=" * (-len(compact) % 4), altchars=b"-_" if urlsafe else None,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"field '{field}' is not valid base64; send {FORMS}", field=field) from None
