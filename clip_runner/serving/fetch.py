"""Image URLs → bytes, fetched so that a caller cannot reach what the server can but they cannot.

Every name is resolved and checked where the socket is opened (:class:`_CheckedBackend`), and the
connection goes to the very address checked; redirects are followed by hand, each hop checked again.
docs/protocols.md lists every rule and the status of each refusal.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from ..errors import InputError, InvalidInput, PayloadTooLarge, UnsupportedMediaType, UrlForbidden

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 64  # per worker; further fetches wait for a free connection (within the timeout)
RESOLVER_THREADS = 8  # per worker: name lookups in flight at once (a hung one holds a thread until it ends)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNLABELLED = frozenset({"", "application/octet-stream", "binary/octet-stream"})  # S3 labels unknown bytes binary/
_HEADERS = [(b"Accept", b"image/*"), (b"Accept-Encoding", b"identity"), (b"User-Agent", b"clip-service")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address (v4, or v6 and what it embeds)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):  # judged by the IPv4 address it embeds, if any
        ip = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else ip)
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # fec0::/10: global in 3.11
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified or site_local)


def is_image_type(media_type: str) -> bool:
    """Whether a media type (a header's or a ``data:`` URI's) may carry an image: ``image/*``, or unlabelled bytes."""
    kind = media_type.split(";", 1)[0].strip().lower()
    return kind.startswith("image/") or kind in _UNLABELLED


def display(url: str) -> str:
    """A URL as messages and logs show it: no query (it may carry a signature), at most 120 chars."""
    try:
        parts = urlsplit(url)
        shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    except ValueError:  # a URL too broken to split: shown as given
        shown = url
    return shown if len(shown) <= 120 else shown[:117] + "..."


class ByteBudget:
    """The bytes all the URL fetches of one request may bring in, together. The 413 names the list
    ``field``, not whichever concurrent fetch crossed the line, so a request always gets the same answer."""

    def __init__(self, limit: int, field: str) -> None:
        self.limit = self.left = limit
        self.field = field

    def take(self, count: int) -> None:
        """Count ``count`` more bytes; 413 naming the list field once the budget is spent."""
        self.left -= count
        if self.left < 0:
            raise PayloadTooLarge(f"field '{self.field}': the images this request fetches come to more than "
                                  f"{self.limit / 1e6:.1f} MB in all (CLIP_MAX_REQUEST_BYTES)", field=self.field)


class UrlFetcher:
    """Fetches image URLs under one policy; one per served model, shared by all its requests."""

    def __init__(self, hosts: frozenset[tuple[str, int | None]] | None, timeout_s: float) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self.resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve")
        # One pool per event loop: pooled connections belong to the loop that opened them.
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpcore.AsyncConnectionPool] = \
            weakref.WeakKeyDictionary()

    def _pool(self) -> httpcore.AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        if loop not in self._pools:
            self._pools[loop] = httpcore.AsyncConnectionPool(
                max_connections=MAX_CONNECTIONS, retries=0, network_backend=_CheckedBackend(self))
        return self._pools[loop]

    def listed(self, host: str, port: int) -> bool:
        """Whether the allow-list names ``host`` (on ``port``, or on any port)."""
        return self.hosts is not None and ((host, port) in self.hosts or (host, None) in self.hosts)

    def target(self, url: str, field: str, base: str | None = None) -> str:
        """``url`` (relative to ``base``, for a redirect) normalised, once it passes the checks made
        before any connection: a valid URL, the scheme, no credentials, the allow-list."""
        try:
            parsed = httpx.URL(base).join(url) if base else httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower()
        except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
            raise InvalidInput(f"field '{field}': not a valid URL ({exc})", field=field) from None
        if parsed.scheme not in _DEFAULT_PORTS:
            raise InvalidInput(f"field '{field}': only http and https URLs are fetched, not "
                               f"{parsed.scheme or 'this'}", field=field)
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        if not host or not 0 < port < 65536:
            raise InvalidInput(f"field '{field}': the URL has no host, or an invalid port", field=field)
        if parsed.userinfo:
            raise InvalidInput(f"field '{field}': URLs with credentials are not fetched", field=field)
        if self.hosts is not None and not self.listed(host, port):
            raise UrlForbidden(f"field '{field}': host {host}:{port} is not in CLIP_IMAGE_URL_HOSTS", field=field)
        return str(parsed)

    async def fetch(self, url: str, field: str, max_bytes: int, budget: ByteBudget | None = None) -> bytes:
        """The image bytes at ``url`` (redirects followed), or an InputError naming ``field``."""
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._follow(url, field, max_bytes, budget)
            except TimeoutError:
                raise InvalidInput(f"field '{field}': fetching {display(url)} took longer than {self.timeout_s:g} s "
                                   "(CLIP_IMAGE_URL_TIMEOUT)", field=field) from None
            except (httpcore.ConnectError, httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
                reason = str(exc).strip() or type(exc).__name__
                raise InvalidInput(f"field '{field}': could not fetch {display(url)}: {reason}", field=field) from None
        except InputError as exc:  # operators see refusals (a run of 403s is someone probing)
            logger.info("image URL %s refused (%d): %s", display(url), exc.status, exc.message)
            raise

    async def _follow(self, url: str, field: str, max_bytes: int, budget: ByteBudget | None) -> bytes:
        url = self.target(url, field)
        for _ in range(MAX_REDIRECTS + 1):
            timeouts = {"timeout": {"connect": min(CONNECT_TIMEOUT_S, self.timeout_s), "read": self.timeout_s,
                                    "write": self.timeout_s, "pool": self.timeout_s}}
            try:
                async with self._pool().stream("GET", url, headers=_HEADERS, extensions=timeouts) as response:
                    location = _header(response.headers, b"location")
                    if response.status in _REDIRECTS and location:
                        url = self.target(location, field, base=url)
                        continue
                    if response.status != 200:
                        raise InvalidInput(f"field '{field}': {display(url)} answered HTTP {response.status}",
                                           field=field)
                    return await _body(response, url, field, max_bytes, budget)
            except _Refused as exc:
                raise UrlForbidden(f"field '{field}': {display(url)} is not fetched: {exc}", field=field) from None
        raise InvalidInput(f"field '{field}': more than {MAX_REDIRECTS} redirects from {display(url)}", field=field)


async def _body(response: httpcore.Response, url: str, field: str, max_bytes: int,
                budget: ByteBudget | None) -> bytes:
    """The body, refused by content type or size before it all arrives."""
    kind = _header(response.headers, b"content-type")
    if not is_image_type(kind):
        raise UnsupportedMediaType(f"field '{field}': {display(url)} is {kind.split(';')[0].strip()}, not an image",
                                   field=field)
    declared = _header(response.headers, b"content-length")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(url, field, max_bytes)
    body = bytearray()
    async for chunk in response.aiter_stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(url, field, max_bytes)
        if budget is not None:
            budget.take(len(chunk))
    return bytes(body)


def _too_large(url: str, field: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"field '{field}': {display(url)} is larger than the limit of "
                           f"{max_bytes / 1e6:.1f} MB (CLIP_MAX_IMAGE_BYTES)", field=field)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in headers if key.lower() == name), "")


class _Refused(Exception):
    """The backend would not connect; :meth:`UrlFetcher.fetch` turns it into a 403 naming the field."""


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens each connection to an address it resolved and checked itself."""

    def __init__(self, fetcher: UrlFetcher) -> None:
        self.fetcher = fetcher
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        addresses = await self.addresses(host.lower(), port)
        for address in addresses:  # in the resolver's order (a host's IPv6 may be unreachable from here)
            try:
                stream = await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                      socket_options=socket_options)
                break
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                if address == addresses[-1]:
                    raise
        peer = stream.get_extra_info("server_addr")
        if not peer or ipaddress.ip_address(peer[0]) != ipaddress.ip_address(address):  # never expected
            await stream.aclose()
            raise _Refused(f"connected to {peer} instead of the checked {address}")
        return stream

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to: every address ``host`` resolves to must be public, unless
        the allow-list names it."""
        resolve = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.get_running_loop().run_in_executor(self.fetcher.resolver, resolve)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.fetcher.listed(host, port):
            private = [a for a in addresses if not is_public(a)]
            if private:  # the message keeps internal addresses to the log
                logger.info("image URL host %s resolves to non-public %s", host, ", ".join(private))
                raise _Refused(f"{host} resolves to an address that is not public (loopback, private, link-local "
                               "and metadata addresses are never fetched; CLIP_IMAGE_URL_HOSTS may name a host)")
        return addresses

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise _Refused("unix sockets are never used for image URLs")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
