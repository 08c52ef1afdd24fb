"""A local HTTP server that image-URL tests fetch from: an image, and the hostile answers a server may give."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class ImageServer:
    """Serves on 127.0.0.1 (a free port) in daemon threads; ``hits`` counts requests per path.

    ``/cat.jpg`` the image (``image/jpeg``), ``/octet`` the image as ``application/octet-stream``,
    ``/html`` a web page, ``/missing`` 404, ``/endless`` an image body that never ends, ``/drip``
    one byte every 0.1 s, ``/declared`` a Content-Length of 1 GB, ``/redirect?to=URL`` a 302 to
    URL, ``/loop`` a redirect to itself.
    """

    def __init__(self, image: bytes) -> None:
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
