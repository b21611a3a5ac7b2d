"""Request heads parsed and responses written, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.guestapi.wire import (
    MAX_CACHED_HEAD_BYTES,
    MAX_HEAD_BYTES,
    GuestRequestRejected,
    HeadCache,
    Response,
    find_head_end,
    parse_head,
    serialise_response,
)


def test_parses_a_cloud_init_request() -> None:
    head = parse_head(
        b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"User-Agent: Cloud-Init/22.4.2\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    assert (head.method, head.target, head.http_version) == ("GET", "/openstack/latest/meta_data.json", "1.1")
    assert head.header("user-agent") == "Cloud-Init/22.4.2"
    assert head.keep_alive and not head.has_body and not head.expects_continue


def test_parses_a_curl_upload() -> None:
    head = parse_head(
        b"PUT /joboutputs/shutdown_message HTTP/1.1\r\nHost: 169.254.169.253\r\nContent-Length: 11\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert head.content_length == 11 and head.expects_continue and head.has_body


@pytest.mark.parametrize(
    "raw, keep_alive",
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nConnection: TE, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ],
)
def test_keep_alive_follows_version_and_connection_header(raw: bytes, keep_alive: bool) -> None:
    assert parse_head(raw).keep_alive is keep_alive


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2\r\n\r\n", 505),
        (b"GET / FTP/1.0\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n  folded\r\n\r\n", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: 9999999999999999\r\n\r\n", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n", 404),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 404),
    ],
)
def test_malformed_heads_are_rejected_with_a_status(raw: bytes, status: int) -> None:
    with pytest.raises(GuestRequestRejected) as rejection:
        parse_head(raw)
    assert rejection.value.status == status


def test_repeated_equal_content_length_is_accepted() -> None:
    assert parse_head(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").content_length == 3


@pytest.mark.parametrize(
    "buffer, end",
    [
        (b"GET / HTTP/1.1\r\n\r\nrest", 18),
        (b"GET / HTTP/1.1\n\nrest", 16),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", -1),
        (b"", -1),
    ],
)
def test_head_end_is_found_with_crlf_or_bare_lf(buffer: bytes, end: int) -> None:
    assert find_head_end(buffer) == end


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_rejected_with_a_status(raw: bytes) -> None:
    try:
        head = parse_head(raw)
    except GuestRequestRejected as rejection:
        assert rejection.status in (400, 404, 505)
    else:
        assert head.method.isupper() and head.http_version in ("1.0", "1.1")


@given(
    st.sampled_from(["GET", "PUT", "HEAD"]),
    st.from_regex(r"/[A-Za-z0-9._/-]{0,40}", fullmatch=True),
    st.lists(
        st.tuples(st.from_regex(r"X-[A-Za-z0-9-]{1,10}", fullmatch=True), st.from_regex(r"[ -~]{0,20}", fullmatch=True)),
        max_size=5,
    ),
)
def test_well_formed_heads_round_trip(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    head = parse_head(raw.encode())
    assert (head.method, head.target) == (method, target)
    assert head.headers == tuple((name.lower(), value.strip(" \t")) for name, value in headers)


def test_response_is_framed_with_length_and_connection() -> None:
    raw = serialise_response(
        Response(201, b"", headers=(("Retry-After", "10"),)), keep_alive=False, date="Sun, 22 Nov 2026 00:00:00 GMT"
    )
    assert raw == (
        b"HTTP/1.1 201 Created\r\nServer: vacd\r\nDate: Sun, 22 Nov 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 0\r\nConnection: close\r\nRetry-After: 10\r\n\r\n"
    )


def test_head_response_has_length_but_no_body() -> None:
    raw = serialise_response(Response(200, b"abc"), keep_alive=True, date="d", include_body=False)
    assert raw.endswith(b"Content-Length: 3\r\nConnection: keep-alive\r\n\r\n")


def test_the_head_cache_keeps_short_heads_and_never_a_guests_long_ones() -> None:
    """Found by the issue 11 fuzz run: 1024 kept 8 KiB heads held 8 MiB for as long as vacd ran."""
    cache = HeadCache()
    short = b"GET /latest/user-data HTTP/1.1\r\nHost: x\r\n\r\n"
    assert cache.parse(short) is cache.parse(short)
    for number in range(2000):
        long_head = b"GET /latest/user-data HTTP/1.1\r\nX-Pad: %d" % number + b"p" * MAX_CACHED_HEAD_BYTES + b"\r\n\r\n"
        assert cache.parse(long_head).target == "/latest/user-data"
    assert len(cache) == 1
