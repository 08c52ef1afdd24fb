"""A local stand-in for the Hugging Face Hub, for download tests that must not touch the network.

It answers the requests that ``huggingface_hub.hf_hub_download`` makes, the way the real Hub does:

* ``HEAD|GET {endpoint}/{org}/{repo}/resolve/{revision}/{filename}``

  - a regular (git) file answers 200 with its body length in ``Content-Length``, its git blob id
    as ``ETag`` and the commit in ``X-Repo-Commit``;
  - an LFS file (weights: ``.bin``, ``.safetensors``, ``.pt``, ``.pth``) answers 302 to a "CDN"
    URL on a second port. The client does not follow a redirect to another origin during its
    metadata request, so the file's metadata travels on the redirect itself: ``X-Linked-Etag``
    (the sha256), ``X-Linked-Size`` and ``X-Repo-Commit``;
  - errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``),
    which is what the client maps to its typed exceptions, and a JSON body.

* ``GET {endpoint}/api/agent-harnesses``: an empty registry (huggingface_hub 2.x fetches it,
  at most once a day per ``HF_HOME``, when it builds its User-Agent header).

* ``HEAD|GET {cdn}/lfs/{sha256}``: plain HTTP with ``Range`` support (206 with
  ``Content-Range``; 416 when unsatisfiable), as a client resuming a partial download asks.

No response ever carries ``X-Xet-Hash`` or a ``xet-auth`` link, so clients always take the plain
HTTP download path, even where ``hf_xet`` is installed.

Faults can be injected: :meth:`FakeHub.fail_next` answers the next N matching requests with an
error status; :meth:`FakeHub.cut_next` closes the connection after K body bytes of the next
matching response (the client sees a truncated body, as on a dropped connection). Every request
is recorded in :attr:`FakeHub.log`.

Use :func:`running_fake_hub` (a context manager).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth")
MAIN = "main"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake hub saw it."""

    method: str
    path: str  # unquoted path, without the query string
    headers: dict[str, str]  # lower-cased names
    status: int
    server: str  # "hub" or "cdn"

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class Fault:
    """A failure to inject into the next ``remaining`` requests that match."""

    kind: str  # "status" or "cut"
    remaining: int
    status: int = 503
    after_bytes: int = 0
    method: str | None = None  # None matches every method
    path_contains: str | None = None
    server: str | None = None  # "hub", "cdn" or None for both

    def matches(self, method: str, path: str, server: str) -> bool:
        return (
            self.remaining > 0
            and self.method in (None, method)
            and self.server in (None, server)
            and (self.path_contains is None or self.path_contains in path)
        )


@dataclass
class _Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with this content; the Hub uses it as ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(filename: str) -> bool:
    return filename.endswith(LFS_SUFFIXES)


class FakeHub:
    """In-memory hub content, fault plan and request log, served by two local HTTP servers."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.faults: list[Fault] = []
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self._threads: list[threading.Thread] = []

    # ---- content and fault plan -------------------------------------------------------------

    def add(self, repo_id: str, filename: str, data: bytes) -> None:
        with self._lock:
            self.files[(repo_id, filename)] = data

    def remove(self, repo_id: str, filename: str) -> None:
        with self._lock:
            self.files.pop((repo_id, filename), None)

    def fail_next(self, n: int, status: int = 503, **match: str | None) -> None:
        """Answer the next ``n`` requests matching ``method``/``path_contains``/``server``
        with ``status``."""
        with self._lock:
            self.faults.append(Fault("status", n, status=status, **match))

    def cut_next(self, after_bytes: int, n: int = 1, **match: str | None) -> None:
        """Drop the connection after ``after_bytes`` body bytes of the next ``n`` matching
        responses that have a body."""
        with self._lock:
            self.faults.append(Fault("cut", n, after_bytes=after_bytes, **match))

    def reset(self) -> None:
        """Forget content, faults and the log (the servers keep running)."""
        with self._lock:
            self.files.clear()
            self.faults.clear()
            self.log.clear()

    def requests(self, method: str | None = None, path_contains: str = "") -> list[LoggedRequest]:
        """The logged requests, optionally filtered."""
        with self._lock:
            return [
                r for r in self.log
                if method in (None, r.method) and path_contains in r.path
            ]

    def commit(self, repo_id: str) -> str:
        """A commit id derived from the repo's content, so changed content is a new commit."""
        with self._lock:
            entries = sorted(
                (name, hashlib.sha256(data).hexdigest())
                for (repo, name), data in self.files.items() if repo == repo_id
            )
        return hashlib.sha1(json.dumps([repo_id, entries]).encode()).hexdigest()

    # ---- servers ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The hub endpoint (what ``HF_ENDPOINT`` should be set to)."""
        return self._base("hub")

    @property
    def cdn_url(self) -> str:
        return self._base("cdn")

    def _base(self, server: str) -> str:
        host, port = self._servers[server].server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        # Two ports = two origins, like huggingface.co and its CDN.
        for name in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), _make_handler(self, name))
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"fakehub-{name}", daemon=True)
            thread.start()
            self._servers[name] = server
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request handling (called from server threads) ----------------------------------------

    def _take_fault(self, kind: str, method: str, path: str, server: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind == kind and fault.matches(method, path, server):
                    fault.remaining -= 1
                    return fault
        return None

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)

    def _lookup(self, repo_id: str, filename: str) -> tuple[bool, bytes | None]:
        """(repo exists, file bytes or None)."""
        with self._lock:
            exists = any(repo == repo_id for repo, _ in self.files)
            return exists, self.files.get((repo_id, filename))

    def _lfs_blob(self, sha256: str) -> bytes | None:
        with self._lock:
            for data in self.files.values():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return data
        return None

    def resolve(self, path: str, method: str) -> _Reply:
        """Answer ``/{org}/{repo}/resolve/{revision}/{filename}`` like the Hub."""
        parts = path.lstrip("/").split("/", 4)
        if path == "/api/agent-harnesses":
            # huggingface_hub fetches this registry (at most daily) to build its User-Agent.
            body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
            return _Reply(200, {"Content-Type": "application/json"}, body)
        if len(parts) < 5 or parts[2] != "resolve":
            return _error(404, None, "Not Found")
        repo_id, revision, filename = f"{parts[0]}/{parts[1]}", parts[3], parts[4]
        exists, data = self._lookup(repo_id, filename)
        if not exists:
            return _error(404, "RepoNotFound", "Repository not found")
        commit = self.commit(repo_id)
        if revision not in (MAIN, commit):
            return _error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        if data is None:
            reply = _error(404, "EntryNotFound", f"Entry not found: {filename}")
            reply.headers["X-Repo-Commit"] = commit
            return reply
        if is_lfs(filename):
            sha256 = hashlib.sha256(data).hexdigest()
            body = b"Found. Redirecting to CDN" if method == "GET" else b""
            return _Reply(302, {
                "Location": f"{self.cdn_url}/lfs/{sha256}?filename={quote(filename)}",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_id(sha256.encode())}"',  # id of the LFS pointer, not the data
                "Content-Length": str(len(body)),
            }, body)
        return _Reply(200, {
            "ETag": f'"{git_blob_id(data)}"',
            "X-Repo-Commit": commit,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }, data)

    def cdn(self, path: str) -> _Reply:
        """Plain file server: LFS blobs by sha256."""
        data = self._lfs_blob(path[len("/lfs/"):]) if path.startswith("/lfs/") else None
        if data is None:
            return _Reply(404, {"Content-Type": "text/plain"}, b"no such object")
        return _Reply(200, {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }, data)


def _error(status: int, code: str | None, message: str) -> _Reply:
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return _Reply(status, headers, json.dumps({"error": message}).encode())


def _apply_range(reply: _Reply, range_header: str | None) -> _Reply:
    """Turn a 200 into a 206 (or 416) for a single ``bytes=a-b`` range."""
    if reply.status != 200 or not range_header:
        return reply
    match = _RANGE.match(range_header.strip())
    total = len(reply.body)
    if match is None or match.group(1) == "":
        return reply  # suffix and multi-part ranges are not needed by the clients under test
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else total - 1
    if start >= total or end < start:
        return _Reply(416, {"Content-Range": f"bytes */{total}"}, b"")
    end = min(end, total - 1)
    headers = dict(reply.headers, **{"Content-Range": f"bytes {start}-{end}/{total}"})
    return _Reply(206, headers, reply.body[start:end + 1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients drop idle keep-alive connections (and the cut fault drops busy ones): not errors.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _make_handler(hub: FakeHub, server: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every reply sets a length

        def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
            self._serve("HEAD")

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def _serve(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            fault = hub._take_fault("status", method, path, server)
            if fault is not None:
                reply = _error(fault.status, None, "injected failure")
            elif server == "hub":
                reply = hub.resolve(path, method)
            else:
                reply = hub.cdn(path)
            reply = _apply_range(reply, self.headers.get("Range"))
            hub._record(LoggedRequest(
                method=method, path=path, server=server, status=reply.status,
                headers={k.lower(): v for k, v in self.headers.items()},
            ))
            self._send(method, path, reply)

        def _send(self, method: str, path: str, reply: _Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if "Content-Length" not in reply.headers:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if method == "HEAD" or not reply.body:
                return
            cut = hub._take_fault("cut", method, path, server)
            if cut is None:
                self.wfile.write(reply.body)
                return
            # Promise the whole body, deliver part of it, then drop the connection.
            self.wfile.write(reply.body[:cut.after_bytes])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_WR)  # data, then end of stream
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # the request log replaces stderr noise

    return Handler


@contextmanager
def running_fake_hub() -> Iterator[FakeHub]:
    """A started :class:`FakeHub`, stopped on exit."""
    with FakeHub() as hub:
        yield hub
