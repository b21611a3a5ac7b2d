"""GuestApiServer as the daemon uses it: start, stop, listeners, heartbeats and counters."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.vacd.guestapi.conftest import RunningServer, Site, loopback_source_to_ordinal, parse_responses, read_until_closed
from vacd.guestapi.server import GuestApiServer


@pytest.fixture
def machine_dir(site: Site, running_server: RunningServer) -> Path:
    return site.create_machine(3)[1]


def test_both_parts_listen_and_heartbeat_at_start(running_server: RunningServer) -> None:
    assert {listening.part for listening in running_server.server.listening} == {"metadata", "mjf"}
    assert set(running_server.server.heartbeats) == {"metadata", "mjf"}


def test_requests_stamp_their_part_and_are_counted(machine_dir: Path, running_server: RunningServer) -> None:
    server = running_server.server
    before = dict(server.heartbeats)
    running_server.get("/latest/meta-data/instance-id")
    running_server.get("/jobfeatures/job_id", part="mjf")
    running_server.get("/latest/meta-data/instance-id", source="127.0.0.4")
    assert running_server.is_refused(source="127.0.0.1")
    assert server.heartbeats["metadata"] >= before["metadata"]
    assert server.counters[("metadata", "ec2", 200)] == 1
    assert server.counters[("mjf", "jobfeatures", 200)] == 1
    assert server.counters[("metadata", "identity", 404)] == 1
    assert server.counters[("metadata", "connection", 404)] == 1


def test_unknown_method_is_not_allowed_and_lists_allowed_ones(machine_dir: Path, running_server: RunningServer) -> None:
    (response,) = running_server.exchange(b"DELETE /joboutputs/x HTTP/1.1\r\n\r\n", part="mjf")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD, PUT"


def test_unknown_source_learns_nothing_about_methods(machine_dir: Path, running_server: RunningServer) -> None:
    assert running_server.is_refused(b"DELETE /joboutputs/x HTTP/1.1\r\n\r\n", part="mjf", source="127.0.0.1")
    (response,) = running_server.exchange(b"DELETE /joboutputs/x HTTP/1.1\r\n\r\n", part="mjf", source="127.0.0.4")
    assert response.status == 404


def test_unbindable_address_is_reported_not_fatal(site: Site) -> None:
    async def scenario() -> list:
        server = GuestApiServer(
            site.paths,
            site.store,
            lambda: site.settings,
            metadata_addresses=("127.0.0.254", "fe80::a9fe:a9fe%no-such-interface"),
            mjf_addresses=(),
            port=0,
        )
        await server.start()
        try:
            return list(server.listening)
        finally:
            await server.stop()

    listening = asyncio.run(scenario())
    assert [(entry.part, entry.host) for entry in listening] == [("metadata", "127.0.0.254")]


def test_ipv6_listener_serves_a_mapped_source(site: Site) -> None:
    site.create_machine(3)

    def ipv6_source_to_ordinal(source: str) -> object:
        return 3 if source == "::1" else loopback_source_to_ordinal(source)

    async def scenario() -> bytes:
        server = GuestApiServer(
            site.paths,
            site.store,
            lambda: site.settings,
            metadata_addresses=("::1",),
            mjf_addresses=(),
            port=0,
            source_to_ordinal=ipv6_source_to_ordinal,  # type: ignore[arg-type]
        )
        await server.start()
        try:
            (listening,) = server.listening
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, fetch_over_ipv6, listening.port)
        finally:
            await server.stop()

    def fetch_over_ipv6(port: int) -> bytes:
        with socket.create_connection(("::1", port), timeout=10) as client:
            client.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n")
            (response,) = parse_responses(read_until_closed(client))
            return response.body

    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("no IPv6 on this host")
    assert asyncio.run(scenario()) == b"1b4e28ba-2fa1-11d2-883f-000000000003"


def test_stop_closes_kept_alive_connections(machine_dir: Path, running_server: RunningServer) -> None:
    client = running_server.connect()
    with client:
        client.sendall(b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        running_server.call(running_server.server.stop())
        assert client.recv(4096) == b""
    assert running_server.server.listening == []


def test_source_the_link_check_refuses_is_served_nothing(machine_dir: Path, running_server: RunningServer) -> None:
    """The slot's address is not enough when the bridge says the frames come from another tap."""
    server = running_server.server
    asked: list[tuple[str, int]] = []

    def link_check(source: str, ordinal: int) -> bool:
        asked.append((source, ordinal))
        return False

    server.link_check = link_check
    # Refused at accept, before the connection holds any of the capacity real guests need.
    assert running_server.is_refused()
    assert running_server.is_refused(b"PUT /joboutputs/shutdown_message HTTP/1.1\r\nContent-Length: 12\r\n\r\n"
                                     b"300 Hijacked", part="mjf")
    assert asked == [("127.0.0.3", 3), ("127.0.0.3", 3)]
    assert not (machine_dir / "joboutputs" / "shutdown_message").exists()
    server.link_check = lambda source, ordinal: True
    assert running_server.get("/latest/meta-data/instance-id").status == 200
