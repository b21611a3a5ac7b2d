"""Connection handling over real sockets: keep-alive, pipelining, limits and every deadline.

Deadline tests use limits of a fraction of a second and wait for the server to act; they
assert what the server did (closed, answered 408), never how long it took.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from tests.vacd.guestapi.conftest import RunningServer, Site, parse_responses, read_until_closed
from vacd.guestapi.connection import ConnectionLimits

GET_USER_DATA = b"GET /latest/user-data HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def machine_dir(site: Site, running_server: RunningServer) -> Path:
    return site.create_machine(3)[1]


def read_responses(client: socket.socket, count: int) -> list:
    """Read until `count` complete responses have arrived (the connection stays open)."""
    data = b""
    while True:
        try:
            responses = parse_responses(data)
        except (AssertionError, ValueError, IndexError):
            responses = []
        if len(responses) >= count and all(
            len(response.body) == int(response.headers.get("content-length", "0")) for response in responses
        ):
            return responses
        chunk = client.recv(65536)
        if not chunk:
            return parse_responses(data)
        data += chunk


def test_keep_alive_serves_several_requests_on_one_connection(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect() as client:
        for _ in range(3):
            client.sendall(GET_USER_DATA)
            (response,) = read_responses(client, 1)
            assert response.status == 200
            assert response.headers["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(machine_dir: Path, running_server: RunningServer) -> None:
    requests = (
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n"
        b"GET /latest/meta-data/local-ipv4 HTTP/1.1\r\n\r\n"
        b"GET /latest/meta-data/hostname HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    responses = running_server.exchange(requests)
    assert [response.body for response in responses] == [
        b"1b4e28ba-2fa1-11d2-883f-000000000003",
        b"169.254.169.3",
        b"f1-03.example.com",
    ]
    assert responses[-1].headers["connection"] == "close"


def test_http_1_0_and_connection_close_end_the_connection(machine_dir: Path, running_server: RunningServer) -> None:
    for request in (
        b"GET /latest/user-data HTTP/1.0\r\n\r\nGET /latest/user-data HTTP/1.0\r\n\r\n",
        b"GET /latest/user-data HTTP/1.1\r\nConnection: close\r\n\r\nGET /latest/user-data HTTP/1.1\r\n\r\n",
    ):
        responses = running_server.exchange(request)
        assert len(responses) == 1
        assert responses[0].headers["connection"] == "close"


def test_bare_lf_line_endings_and_leading_empty_lines_are_accepted(machine_dir: Path, running_server: RunningServer) -> None:
    (response,) = running_server.exchange(b"\r\n\nGET /latest/meta-data/ami-id HTTP/1.0\nHost: x\n\n")
    assert (response.status, response.body) == (200, b"1b4e28ba-2fa1-11d2-883f-000000000003")


@pytest.mark.parametrize("limits", [ConnectionLimits(max_requests_per_connection=2)])
def test_keep_alive_is_bounded_by_requests_per_connection(machine_dir: Path, running_server: RunningServer) -> None:
    responses = running_server.exchange(GET_USER_DATA * 3)
    assert len(responses) == 2
    assert [response.headers["connection"] for response in responses] == ["keep-alive", "close"]


def test_over_long_head_is_not_found_and_closes(machine_dir: Path, running_server: RunningServer) -> None:
    (response,) = running_server.exchange(b"GET /latest/user-data HTTP/1.1\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n")
    assert response.status == 404


def test_over_long_path_is_not_found(machine_dir: Path, running_server: RunningServer) -> None:
    assert running_server.get("/latest/" + "a/" * 400 + "user-data").status == 404


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /latest/user-data HTTP/2.0\r\n\r\n", 505),
        (b"GET /latest/user-data HTTP/1.1\r\n folded: header\r\n\r\n", 400),
        (b"GET /latest/user-data HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /latest/user-data HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_malformed_requests_get_their_error_and_a_close(
    machine_dir: Path, running_server: RunningServer, request_bytes: bytes, status: int
) -> None:
    (response,) = running_server.exchange(request_bytes)
    assert response.status == status
    assert response.headers["connection"] == "close"


def test_get_with_a_body_is_answered_then_closed(machine_dir: Path, running_server: RunningServer) -> None:
    responses = running_server.exchange(
        b"GET /latest/meta-data/ami-id HTTP/1.1\r\nContent-Length: 20\r\n\r\nGET /latest/user-data"
    )
    assert len(responses) == 1 and responses[0].headers["connection"] == "close"


@pytest.mark.parametrize("limits", [ConnectionLimits(idle_timeout_seconds=0.2, head_timeout_seconds=0.2)])
def test_idle_connection_is_closed_silently(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect() as client:
        client.sendall(GET_USER_DATA)
        read_responses(client, 1)
        assert client.recv(100) == b""


@pytest.mark.parametrize("limits", [ConnectionLimits(head_timeout_seconds=0.2)])
def test_incomplete_head_times_out_with_408(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect() as client:
        client.sendall(b"GET /latest/user-data HTTP/1.1\r\nHost: x\r\n")
        (response,) = parse_responses(read_until_closed(client))
    assert response.status == 408


@pytest.mark.parametrize("limits", [ConnectionLimits(body_idle_timeout_seconds=0.2)])
def test_stalled_upload_times_out_with_408_and_writes_nothing(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect("mjf") as client:
        client.sendall(b"PUT /joboutputs/log HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        (response,) = parse_responses(read_until_closed(client))
    assert response.status == 408
    assert not (machine_dir / "joboutputs" / "log").exists()


@pytest.mark.parametrize("limits", [ConnectionLimits(head_timeout_seconds=0.3)])
def test_a_stuck_guest_does_not_block_others(machine_dir: Path, running_server: RunningServer, site: Site) -> None:
    site.create_machine(4)
    with running_server.connect(source="127.0.0.4") as stuck:
        stuck.sendall(b"GET /latest/user")
        assert running_server.get("/latest/meta-data/instance-id").status == 200
        (response,) = parse_responses(read_until_closed(stuck))
    assert response.status == 408


# No rate limit here: the flood of pipelined requests must reach the write stall, not a 429.
@pytest.mark.parametrize("limits", [ConnectionLimits(write_stall_timeout_seconds=0.3, request_burst_per_slot=10**9)])
def test_client_that_never_reads_is_dropped(machine_dir: Path, running_server: RunningServer) -> None:
    with running_server.connect() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            client.sendall(GET_USER_DATA * 20000)
        except OSError:
            pass  # the server may drop us while we are still sending
        # The server stops parsing when its write buffer fills, then gives up on us.
        with pytest.raises((ConnectionResetError, AssertionError)):
            while client.recv(65536):
                pass
            raise AssertionError("closed without reset")
    assert running_server.get("/latest/meta-data/instance-id").status == 200


@pytest.mark.parametrize("limits", [ConnectionLimits(max_connections_per_slot=2)])
def test_connections_per_slot_are_limited(machine_dir: Path, running_server: RunningServer) -> None:
    first = running_server.connect()
    second = running_server.connect()
    try:
        # The third is reset at accept, perhaps before connect() has returned.
        assert running_server.is_refused(GET_USER_DATA)
        # Another guest is not affected.
        assert running_server.get("/latest/meta-data/instance-id", source="127.0.0.4").status == 404
        first.sendall(GET_USER_DATA)
        assert read_responses(first, 1)[0].status == 200
    finally:
        first.close()
        second.close()
    assert running_server.server.counters[("metadata", "connection", 503)] == 1


def test_deadlines_of_closed_connections_are_forgotten_and_the_sweep_stops(
        machine_dir: Path, running_server: RunningServer) -> None:
    for _ in range(3):
        assert running_server.get("/latest/meta-data/instance-id").status == 200
    with running_server.connect() as client:
        client.sendall(GET_USER_DATA)
        read_responses(client, 1)
        # A kept-alive connection waits for its next request under an idle deadline.
        assert running_server.call(_watched(running_server)) == 1

    async def settled() -> int:
        # Until the server has seen the close (connection_lost) and the sweep has looked once more.
        deadline = asyncio.get_running_loop().time() + 5.0
        while asyncio.get_running_loop().time() < deadline:
            if len(running_server.server._deadlines) == 0 and running_server.server._deadlines._timer is None:
                return 0
            await asyncio.sleep(0.05)
        return len(running_server.server._deadlines)

    assert running_server.call(settled()) == 0


async def _watched(running_server: RunningServer) -> int:
    return len(running_server.server._deadlines)


def test_a_last_response_larger_than_the_socket_buffers_arrives_whole_before_the_close(
        machine_dir: Path, running_server: RunningServer) -> None:
    # More than the kernel's buffers at both ends hold (loopback autotuning stops at a few
    # MiB each), and the client reads nothing at first: the kernel takes only part of it, the
    # rest goes from the transport's buffer, and the FIN only after it
    # (connection.GuestConnection._send_last).
    user_data = bytes(range(256)) * (15 * 1024 * 1024 // 256)
    (machine_dir / "user_data").write_bytes(user_data)
    with running_server.connect() as client:
        client.sendall(b"GET /latest/user-data HTTP/1.0\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        (response,) = parse_responses(read_until_closed(client))
    assert response.status == 200
    assert response.body == user_data
