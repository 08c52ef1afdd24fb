"""A local HTTP server that image-URL tests fetch from (an image, and the hostile answers a server may
give), and a simulated internet: fake DNS names, and one public address that reaches that server."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest

from tests.conftest import make_jpeg

IMAGE = make_jpeg(3)  # what /cat.jpg serves
PUBLIC = "93.184.216.34"  # a public address; the simulated internet delivers it to the local server
UNREACHABLE = "2606:2800:220:1::1"  # a public address no connection reaches
NAMES = {"images.example": [PUBLIC], "intranet.example": ["10.1.2.3"], "mixed.example": [PUBLIC, "127.0.0.1"],
         "dual.example": [UNREACHABLE, PUBLIC]}


class ImageServer:
    """Serves on 127.0.0.1 (a free port) in daemon threads; ``hits`` counts requests per path.

    ``/cat.jpg`` the image (``image/jpeg``), ``/octet`` the image as ``application/octet-stream``,
    ``/html`` a web page, ``/missing`` 404, ``/endless`` an image body that never ends, ``/drip``
    one byte every 0.1 s, ``/declared`` a Content-Length of 1 GB, ``/redirect?to=URL`` a 302 to
    URL, ``/loop`` a redirect to itself.
    """

    def __init__(self, image: bytes = IMAGE) -> None:
        self.image = image
        self.hits: Counter[str] = Counter()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                server.hits[parts.path] += 1
                answer = getattr(self, "_" + parts.path.strip("/").replace(".", "_").replace("-", "_"), None)
                if answer is None:
                    return self._send(404, "text/plain", b"not found")
                answer(parse_qs(parts.query))

            def _send(self, status: int, kind: str, body: bytes, **headers: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(body)

            def _cat_jpg(self, _: dict) -> None:
                self._send(200, "image/jpeg", server.image)

            def _octet(self, _: dict) -> None:
                self._send(200, "application/octet-stream", server.image)

            def _html(self, _: dict) -> None:
                self._send(200, "text/html; charset=utf-8", b"<html><body>not an image</body></html>")

            def _redirect(self, query: dict) -> None:
                self._send(302, "text/plain", b"", Location=query["to"][0])

            def _loop(self, _: dict) -> None:
                self._send(302, "text/plain", b"", Location="/loop")

            def _declared(self, _: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self._stream(b"\xff" * 65536, pause_s=0.0)

            def _endless(self, _: dict) -> None:
                self._stream(b"\xff" * 65536, pause_s=0.0, chunked=True)

            def _drip(self, _: dict) -> None:
                self._stream(b"\xff", pause_s=0.1, chunked=True)

            def _stream(self, piece: bytes, pause_s: float, chunked: bool = False, limit_s: float = 120) -> None:
                """Write ``piece`` until the client goes away (or ``limit_s`` passes)."""
                if chunked:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    piece = b"%x\r\n%s\r\n" % (len(piece), piece)
                deadline = time.monotonic() + limit_s
                try:
                    while time.monotonic() < deadline:
                        self.wfile.write(piece)
                        self.wfile.flush()
                        if pause_s:
                            time.sleep(pause_s)
                except OSError:
                    pass  # the fetcher hung up, as it should
                self.close_connection = True

        return Handler


class _Peer(httpcore.AsyncNetworkStream):
    """A local connection that reports the public address it stands for."""

    def __init__(self, stream: httpcore.AsyncNetworkStream, address: str) -> None:
        self.stream, self.address = stream, address

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()

    def get_extra_info(self, info: str) -> object:
        return (self.address, 80) if info == "server_addr" else self.stream.get_extra_info(info)


def simulate_internet(monkeypatch: pytest.MonkeyPatch, image_server: ImageServer) -> None:
    """Fake DNS for NAMES, and connections to PUBLIC reach ``image_server``: the fetcher's checks
    run unchanged (only the resolver and the socket's far end are simulated)."""
    real_resolve, real_connect = socket.getaddrinfo, httpcore.AnyIOBackend.connect_tcp

    def getaddrinfo(host, port, *args, **kwargs):
        if host in NAMES:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in NAMES[host]]
        return real_resolve(host, port, *args, **kwargs)

    async def connect_tcp(self, host, port, **kwargs):
        if host == PUBLIC:
            return _Peer(await real_connect(self, "127.0.0.1", image_server.port, **kwargs), PUBLIC)
        if host == UNREACHABLE:
            raise httpcore.ConnectError("network is unreachable")
        return await real_connect(self, host, port, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
