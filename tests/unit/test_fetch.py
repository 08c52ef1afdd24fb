"""Image fields as text (base64, data: URIs, URLs) and the URL fetcher's safety, against real sockets.

The fetcher talks to a local HTTP server (tests.image_server). Where a case needs the public
internet (a public first hop that redirects inward), the test's network maps one public address
to that local server and fakes a few DNS names: the fetcher's own checks run unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading

import pytest

from clip_runner.errors import InputError, InvalidInput, PayloadTooLarge, UnsupportedMediaType, UrlForbidden
from clip_runner.serving.fetch import RESOLVER_THREADS, ByteBudget, UrlFetcher, display, is_public
from clip_runner.serving.references import INLINE_CHARS, ImageReferences
from clip_runner.settings import parse_hosts
from tests.conftest import make_jpeg
from tests.image_server import IMAGE, ImageServer

B64 = base64.b64encode(IMAGE).decode()


async def _read(value: object, *, max_bytes: int = 1_000_000, fetcher: UrlFetcher | None = None) -> bytes:
    return await ImageReferences(max_bytes, fetcher).read(value, "image")


async def _refused(error: type[InputError], value: object, **kwargs) -> InputError:
    with pytest.raises(error) as caught:
        await _read(value, **kwargs)
    assert caught.value.field == "image" and "'image'" in caught.value.message
    return caught.value


# ---- base64 and data: URIs ------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    B64, base64.urlsafe_b64encode(IMAGE).decode().rstrip("="), "\n".join(B64[i:i + 76] for i in range(0, len(B64), 76)),
    f"data:image/jpeg;base64,{B64}", f"  DATA:image/png;base64,{B64}  ", f"data:;base64,{B64}",
])
async def test_base64_in_every_common_form_reads_the_same_bytes(text: str) -> None:
    assert await _read(text) == IMAGE


async def test_large_base64_decodes_in_a_thread_to_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    big = make_jpeg(4, size=(900, 900), quality=100)
    threads: list[object] = []
    real = asyncio.to_thread
    monkeypatch.setattr(asyncio, "to_thread", lambda fn, *a: threads.append(fn) or real(fn, *a))
    assert await _read(base64.b64encode(big).decode(), max_bytes=10_000_000) == big
    assert len(base64.b64encode(big)) > INLINE_CHARS and len(threads) == 1


async def test_malformed_text_is_400_naming_the_field() -> None:
    assert "not valid base64" in (await _refused(InvalidInput, "not base64 at all!")).message
    assert "not valid base64" in (await _refused(InvalidInput, "/photos/cat.jpg")).message  # paths are not opened
    assert "must be a string" in (await _refused(InvalidInput, {"url": "x"})).message
    assert "empty" in (await _refused(InvalidInput, "  ")).message
    assert "must be base64" in (await _refused(InvalidInput, "data:image/png,%89PNG")).message
    assert "comma" in (await _refused(InvalidInput, "data:image/png;base64")).message


async def test_a_data_uri_of_another_type_is_415() -> None:
    err = (await _refused(UnsupportedMediaType, "data:text/plain;base64," + base64.b64encode(b"hello").decode()))
    assert err.status == 415 and "text/plain" in err.message


async def test_base64_over_the_byte_limit_is_413_before_decoding() -> None:
    err = (await _refused(PayloadTooLarge, "A" * 1_400_000, max_bytes=1_000_000))  # not even valid: never decoded
    assert "CLIP_MAX_IMAGE_BYTES" in err.message


async def test_urls_are_refused_while_off_and_say_how_to_turn_them_on() -> None:
    err = (await _refused(InvalidInput, "https://example.com/cat.jpg"))
    assert "CLIP_ALLOW_IMAGE_URLS=true" in err.message and "send the image as base64" in err.message
    assert "CLIP_ALLOW_IMAGE_URLS" in (await _refused(InvalidInput, "ftp://example.com/cat.jpg")).message


# ---- addresses and the allow-list -----------------------------------------------------------


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("::1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.100.100.200", False), ("0.0.0.0", False), ("224.0.0.251", False),
    ("255.255.255.255", False), ("fe80::1%eth0", False), ("fd00:ec2::254", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:93.184.216.34", True), ("64:ff9b::a00:1", False),
    ("2002:7f00:1::", False), ("240.0.0.1", False), ("fec0::1", False), ("::127.0.0.1", False),
])
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_allow_list_entries_parse_and_bad_ones_are_refused() -> None:
    assert parse_hosts(" store.local:9000, CDN.example ,") == {("store.local", 9000), ("cdn.example", None)}
    assert parse_hosts("") is None and parse_hosts(None) is None
    for bad in ("host:notaport", "host/path", "user@host"):
        with pytest.raises(ValueError, match="CLIP_IMAGE_URL_HOSTS"):
            parse_hosts(bad)


def test_messages_show_urls_without_their_query() -> None:
    assert display("https://user:pw@bucket.example/a/cat.jpg?X-Amz-Signature=secret") == \
        "https://bucket.example/a/cat.jpg"


# ---- fetching -------------------------------------------------------------------------------


def _fetcher(hosts: str | None = None, timeout_s: float = 5.0) -> UrlFetcher:
    return UrlFetcher(parse_hosts(hosts), timeout_s)


async def test_an_allow_listed_private_host_is_fetched(image_server: ImageServer) -> None:
    fetcher = _fetcher(image_server.host)
    assert await _read(image_server.url("/cat.jpg"), fetcher=fetcher) == IMAGE
    assert await _read(image_server.url("/octet"), fetcher=fetcher) == IMAGE  # unlabelled bytes are fine
    target = image_server.url("/cat.jpg")
    assert await _read(image_server.url(f"/redirect?to={target}"), fetcher=fetcher) == IMAGE


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/cat.jpg", "http://localhost:{port}/cat.jpg", "http://[::1]:{port}/cat.jpg",
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/cat.jpg", "http://2130706433:{port}/cat.jpg",
    "http://intranet.example/cat.jpg", "http://mixed.example/cat.jpg",
])
async def test_non_public_addresses_are_403_and_never_connected(internet: ImageServer, url: str) -> None:
    before = sum(internet.hits.values())
    err = (await _refused(UrlForbidden, url.format(port=internet.port), fetcher=_fetcher()))
    assert "is not public" in err.message
    assert sum(internet.hits.values()) == before


async def test_a_public_host_is_fetched_and_its_redirect_inward_is_403(internet: ImageServer) -> None:
    fetcher = _fetcher()
    assert await _read("http://images.example/cat.jpg", fetcher=fetcher) == IMAGE
    assert await _read("http://dual.example/cat.jpg", fetcher=fetcher) == IMAGE  # its first address is down
    inward = f"http://127.0.0.1:{internet.port}/cat.jpg"
    err = (await _refused(UrlForbidden, f"http://images.example/redirect?to={inward}", fetcher=fetcher))
    assert "127.0.0.1" in err.message and internet.hits["/redirect"] >= 1


async def test_with_an_allow_list_other_hosts_are_403(image_server: ImageServer) -> None:
    fetcher = _fetcher(image_server.host)
    other = f"http://localhost:{image_server.port}/cat.jpg"
    for url in (other, image_server.url(f"/redirect?to={other}"), "http://93.184.216.34/cat.jpg"):
        assert "CLIP_IMAGE_URL_HOSTS" in (await _refused(UrlForbidden, url, fetcher=fetcher)).message


async def test_hostile_answers_are_refused_with_their_reason(image_server: ImageServer) -> None:
    fetcher = _fetcher(image_server.host, timeout_s=1.0)
    url = image_server.url
    assert "is text/html, not an image" in (await _refused(UnsupportedMediaType, url("/html"), fetcher=fetcher)).message
    assert "larger than the limit" in (await _refused(PayloadTooLarge, url("/endless"), fetcher=fetcher)).message
    assert "larger than the limit" in (await _refused(PayloadTooLarge, url("/declared"), fetcher=fetcher)).message
    assert "longer than 1 s" in (await _refused(InvalidInput, url("/drip"), fetcher=fetcher)).message
    assert "HTTP 404" in (await _refused(InvalidInput, url("/missing"), fetcher=fetcher)).message
    assert "redirects" in (await _refused(InvalidInput, url("/loop"), fetcher=fetcher)).message
    assert image_server.hits["/loop"] == 4  # the first request and three redirects, then it stops


async def test_bad_urls_are_400_before_any_connection(image_server: ImageServer) -> None:
    fetcher = _fetcher()
    for url, reason in (("file:///etc/passwd", "only http and https"),
                        ("http://u:p@images.example/a.jpg", "credentials"),
                        ("http://no-such-host.invalid/a.jpg", "cannot resolve")):
        assert reason in (await _refused(InvalidInput, url, fetcher=fetcher)).message


async def test_odd_urls_are_normalised_or_refused_never_a_crash(image_server: ImageServer) -> None:
    fetcher = _fetcher(image_server.host)
    assert "not a valid URL" in (await _refused(InvalidInput, "http://[::1/x", fetcher=fetcher)).message
    assert "invalid port" in (await _refused(InvalidInput, "http://h:99999/x", fetcher=fetcher)).message
    # Non-ASCII paths are percent-encoded (the server has no such file: its 404 says so).
    assert "HTTP 404" in (await _refused(InvalidInput, image_server.url("/café.jpg"), fetcher=fetcher)).message
    idna = await _refused(UrlForbidden, "http://exämple.com/x", fetcher=fetcher)
    assert "xn--exmple-cua.com" in idna.message  # the host as it would be resolved
    broken = image_server.url("/redirect?to=http://[::1/x")
    assert "not a valid URL" in (await _refused(InvalidInput, broken, fetcher=fetcher)).message


async def test_one_requests_fetches_share_one_byte_budget(image_server: ImageServer) -> None:
    budget = ByteBudget(int(len(IMAGE) * 1.5), "images")
    references = ImageReferences(1_000_000, _fetcher(image_server.host))
    url = image_server.url("/cat.jpg")
    assert await references.read(url, "images[0]", budget) == IMAGE
    with pytest.raises(PayloadTooLarge, match="CLIP_MAX_REQUEST_BYTES") as caught:
        await references.read(url, "images[1]", budget)
    assert caught.value.field == "images"  # the request spent it, not the item that crossed the line


async def test_a_hung_resolver_does_not_hold_the_event_loops_threads(monkeypatch: pytest.MonkeyPatch,
                                                                     image_server: ImageServer) -> None:
    release = threading.Event()
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: release.wait(30) and real(host, *a, **k)
                        if host.endswith(".hung") else real(host, *a, **k))
    fetcher = _fetcher(timeout_s=0.5)
    try:
        for _ in range(RESOLVER_THREADS + 2):  # more hung lookups than the resolver has threads
            assert "longer than 0.5 s" in (await _refused(InvalidInput, "http://a.hung/x", fetcher=fetcher)).message
        # The default executor (base64 decoding, JSON parsing) is still free.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=5) == "free"
    finally:
        release.set()
