"""The one fetch helper over real HTTP on loopback: total deadline, size cap, atomic files (issue 8 item 6)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.vacd.loopback_http import Hold, LoopbackServer, Respond, ScriptedRequest, answer
from vacd import MANAGER_VERSION
from vacd.fetch import FetchError, Fetcher, FetchLimits

# Short enough to keep the tests quick, long enough for loopback to answer a well-behaved request.
SHORT = FetchLimits(deadline_seconds=0.5, max_bytes=1024)


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[LoopbackServer] = []

    def start(respond: Respond) -> LoopbackServer:
        servers.append(LoopbackServer(respond))
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def fetcher(tmp_path: Path) -> Fetcher:
    return Fetcher(tmp_path / "no-grid-certificates")


def drip_body(request: ScriptedRequest) -> None:
    """Promises 10,000 bytes and sends one every 50 ms, until the client goes or the test ends."""
    request.send_response(200)
    request.send_header("Content-Length", "10000")
    request.end_headers()
    while not request.stopping.wait(0.05):
        request.wfile.write(b"x")
        request.wfile.flush()


def drip_headers(request: ScriptedRequest) -> None:
    """A status line, then a header that never ends: a read timeout alone never fires."""
    request.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not request.stopping.wait(0.05):
        request.wfile.write(b"y")
        request.wfile.flush()


def started(serve: object, respond: Respond) -> LoopbackServer:
    server: LoopbackServer = serve(respond)  # type: ignore[operator]
    return server


def test_body_dripping_one_byte_at_a_time_is_cut_at_the_total_deadline(tmp_path: Path, serve: object) -> None:
    server = started(serve, drip_body)
    with pytest.raises(FetchError, match=r"deadline of 0.5 s exceeded") as raised:
        fetcher(tmp_path).fetch_bytes(server.url("/drip"), FetchLimits(deadline_seconds=0.5, max_bytes=1_000_000))
    assert raised.value.url.endswith("/drip")
    assert "after" in str(raised.value)


def test_headers_dripping_forever_are_cut_at_the_total_deadline(tmp_path: Path, serve: object) -> None:
    server = started(serve, drip_headers)
    with pytest.raises(FetchError, match=r"/slow-headers: deadline of 0.5 s exceeded"):
        fetcher(tmp_path).fetch_bytes(server.url("/slow-headers"), SHORT)


def test_body_over_the_cap_is_refused_naming_the_cap(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"z" * 2048))
    with pytest.raises(FetchError, match=r"larger than the cap of 1024 bytes"):
        fetcher(tmp_path).fetch_bytes(server.url("/big"), SHORT)


def close_delimited_body(request: ScriptedRequest) -> None:
    """No Content-Length: only counting the bytes read can enforce the cap."""
    request.send_response(200)
    request.send_header("Connection", "close")
    request.end_headers()
    request.wfile.write(b"z" * 4096)


def test_body_without_content_length_is_cut_at_the_cap(tmp_path: Path, serve: object) -> None:
    server = started(serve, close_delimited_body)
    with pytest.raises(FetchError, match=r"larger than the cap of 1024 bytes"):
        fetcher(tmp_path).fetch_bytes(server.url("/big"), SHORT)


def test_http_error_names_url_and_status(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"gone", status=404))
    with pytest.raises(FetchError, match=r"/missing: HTTP 404 \(after"):
        fetcher(tmp_path).fetch_bytes(server.url("/missing"), SHORT)


def test_bytes_are_fetched_with_the_vac_user_agent(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"hello"))
    assert fetcher(tmp_path).fetch_bytes(server.url("/hello"), SHORT) == b"hello"
    assert server.headers[0]["User-Agent"] == MANAGER_VERSION


def test_file_cut_at_the_deadline_leaves_nothing_behind(tmp_path: Path, serve: object) -> None:
    server = started(serve, drip_body)
    target = tmp_path / "cache" / "image"
    target.parent.mkdir()
    with pytest.raises(FetchError, match="deadline"):
        fetcher(tmp_path).fetch_to_file(server.url("/image"), target,
                                        FetchLimits(deadline_seconds=0.5, max_bytes=1_000_000))
    assert list(target.parent.iterdir()) == []


def test_file_not_modified_since_is_left_alone(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"", status=304))
    target = tmp_path / "image"
    target.write_bytes(b"cached")
    assert fetcher(tmp_path).fetch_to_file(server.url("/image"), target, SHORT, modified_since=1_700_000_000) is None
    assert target.read_bytes() == b"cached"
    assert server.headers[0]["If-Modified-Since"] == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_abort_all_cuts_a_fetch_the_server_is_holding(tmp_path: Path, serve: object) -> None:
    hold = Hold(lambda request: answer(request, b"too late"))
    server = started(serve, hold)
    client = fetcher(tmp_path)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            client.fetch_bytes(server.url("/held"), FetchLimits(deadline_seconds=60, max_bytes=1024))
        except FetchError as error:
            errors.append(error)

    thread = threading.Thread(target=fetch)
    thread.start()
    assert hold.wait_for_arrivals(1)
    client.abort_all()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert hold.held == 1  # the server still holds the request: the client did not wait for it
    hold.release()
    assert [str(error).split(" (after")[0] for error in errors] == [server.url("/held") + ": vacd is stopping"]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FetchLimits(deadline_seconds=0, max_bytes=1)


def test_file_comes_with_its_size_and_the_sha256_of_what_was_written(tmp_path: Path, serve: object) -> None:
    body = b"root image " * 50
    server = started(serve, lambda request: answer(request, body))
    fetched = fetcher(tmp_path).fetch_to_file(server.url("/image"), tmp_path / "image", SHORT)
    assert fetched is not None
    assert (fetched.size_bytes, fetched.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert (tmp_path / "image").read_bytes() == body


# A vacuum pipe's URLs (public_only): vacd.pipes refuses private hosts by name, but a public
# name can resolve to the factory's own addresses (DNS rebinding). "localhost" stands in for
# such a name here: it is a name, resolved at connect time, to a loopback address.
def test_a_pipes_fetch_refuses_a_name_that_resolves_to_loopback_before_sending_anything(
    tmp_path: Path, serve: object,
) -> None:
    server = started(serve, lambda request: answer(request, b"the factory's secret"))
    rebound = server.url("/secret").replace("127.0.0.1", "localhost")
    with pytest.raises(FetchError, match=r"resolved to 127\.0\.0\.1, which is not a global address"):
        fetcher(tmp_path).fetch_bytes(rebound, SHORT, public_only=True)
    assert server.paths == []


def test_a_pipes_file_fetch_to_a_loopback_address_writes_nothing(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"image"))
    target = tmp_path / "cache" / "image"
    with pytest.raises(FetchError, match="not a global address"):
        fetcher(tmp_path).fetch_to_file(server.url("/image"), target, SHORT, public_only=True)
    assert server.paths == [] and not target.exists()


def test_the_sites_own_fetch_may_reach_a_name_that_resolves_to_loopback(tmp_path: Path, serve: object) -> None:
    server = started(serve, lambda request: answer(request, b"site pipe"))
    assert fetcher(tmp_path).fetch_bytes(server.url("/pipe").replace("127.0.0.1", "localhost"), SHORT) == b"site pipe"
