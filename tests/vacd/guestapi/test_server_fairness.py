"""Fair shares between slots on real sockets: identity before counting, rate, bodies, upload memory.

Rate tests stop the server's bucket clock (`server.monotonic`), so no bucket refills during
a test and every assertion is on status codes and their order, never on time (a refused
request's answer is held for its Retry-After, one second, in real time).
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from tests.vacd.guestapi.conftest import RunningServer, Site, parse_responses
from tests.vacd.guestapi.test_connection import read_responses
from vacd.guestapi.connection import ConnectionLimits

GET_INSTANCE_ID = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n"
FROZEN = 1000.0


def stop_bucket_clock(running_server: RunningServer, at: float = FROZEN) -> None:
    running_server.server.monotonic = lambda: at


def start_upload(running_server: RunningServer, source: str, name: str, length: int) -> tuple[socket.socket, bytes]:
    """A PUT whose body has not been sent: the socket and what the server answered to its head.

    `Expect: 100-continue` makes the server say when it has accepted the body (100) or why
    not (a final status), so no test waits on time.
    """
    client = running_server.connect("mjf", source)
    client.sendall(f"PUT /joboutputs/{name} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                   f"Expect: 100-continue\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = client.recv(65536)
        if not chunk:
            break
        answer += chunk
    return client, answer


@pytest.mark.parametrize("limits", [ConnectionLimits(max_connections=256)])
def test_sources_with_no_slot_hold_none_of_the_capacity_guests_need(site: Site, running_server: RunningServer) -> None:
    site.create_machine(3)
    # 70 loopback sources that are no slot, 4 connections each: more than the whole cap.
    strangers = []
    try:
        for host in range(1, 71):
            for _ in range(4):
                try:
                    strangers.append(running_server.connect(source=f"127.0.1.{host}"))
                except ConnectionResetError:
                    continue  # reset before connect() returned
        for client in strangers:
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:
                pass
        # The real slot still gets connections and answers, several at once.
        guests = [running_server.connect(source="127.0.0.3") for _ in range(8)]
        try:
            for client in guests:
                client.sendall(GET_INSTANCE_ID)
            assert [read_responses(client, 1)[0].status for client in guests] == [200] * 8
        finally:
            for client in guests:
                client.close()
    finally:
        for client in strangers:
            client.close()
    assert running_server.server.counters[("metadata", "connection", 404)] == 280


@pytest.mark.parametrize("limits", [ConnectionLimits(request_burst_per_slot=5, requests_per_second_per_slot=1.0)])
def test_slot_over_its_rate_gets_429_held_on_its_connection_while_another_slot_is_served(
    site: Site, running_server: RunningServer
) -> None:
    site.create_machine(3)
    site.create_machine(4)
    stop_bucket_clock(running_server)
    with running_server.connect(source="127.0.0.3") as flooding:
        flooding.sendall(GET_INSTANCE_ID * 7)
        # Another slot's bucket is its own: served while slot 3's refusal is held.
        assert running_server.get("/latest/meta-data/instance-id", source="127.0.0.4").status == 200
        responses = read_responses(flooding, 7)
    # The burst is served in order; each request past it is refused, the connection kept.
    assert [response.status for response in responses] == [200] * 5 + [429, 429]
    assert responses[-1].headers["retry-after"] == "1"
    assert responses[-1].headers["connection"] == "keep-alive"
    # A new connection of the slot is served no sooner.
    assert running_server.get("/latest/meta-data/instance-id", source="127.0.0.3").status == 429
    # A second later the slot has one request again.
    stop_bucket_clock(running_server, FROZEN + 1.0)
    assert running_server.get("/latest/meta-data/instance-id", source="127.0.0.3").status == 200
    assert running_server.get("/latest/meta-data/instance-id", source="127.0.0.3").status == 429
    assert running_server.server.counters[("metadata", "rate", 429)] == 4


@pytest.mark.parametrize("limits", [ConnectionLimits(max_body_bytes=1000)])
def test_body_over_the_cap_is_refused_before_it_is_read(site: Site, running_server: RunningServer) -> None:
    machine_dir = site.create_machine(3)[1]
    client, answer = start_upload(running_server, "127.0.0.3", "log", 1001)
    with client:
        (response,) = parse_responses(answer)
    assert response.status == 413
    assert running_server.put("/joboutputs/log", b"x" * 1000).status == 201
    assert (machine_dir / "joboutputs" / "log").stat().st_size == 1000


MIB = 1024 * 1024


@pytest.mark.parametrize("limits", [ConnectionLimits(max_upload_bytes_in_flight=3 * MIB,
                                                     max_upload_bytes_in_flight_per_slot=2 * MIB,
                                                     upload_reserve_bytes_per_slot=64 * 1024)])
def test_slow_uploads_of_one_slot_leave_another_slots_shutdown_message_prompt(
    site: Site, running_server: RunningServer
) -> None:
    for slot in (3, 4, 5, 6):
        site.create_machine(slot)
    held = []
    try:
        # Slot 3 drips three large PUTs: two are held in memory, the third waits its turn.
        for name in ("log1", "log2", "log3"):
            client, answer = start_upload(running_server, "127.0.0.3", name, MIB)
            held.append(client)
            if name != "log3":
                assert answer.startswith(b"HTTP/1.1 100 Continue"), answer
        (deferred,) = parse_responses(answer)
        assert (deferred.status, deferred.headers["retry-after"]) == (503, "10")
        # Slot 5 takes what is left of the shared pool; slot 6 finds it full.
        client, answer = start_upload(running_server, "127.0.0.5", "log", MIB)
        held.append(client)
        assert answer.startswith(b"HTTP/1.1 100 Continue"), answer
        client, answer = start_upload(running_server, "127.0.0.6", "log", MIB)
        held.append(client)
        assert parse_responses(answer)[0].status == 503
        # Slot 4's outcome is written from its own reserve while all that is held.
        response = running_server.put("/joboutputs/shutdown_message", b"300 No work\n", source="127.0.0.4")
        assert response.status == 201
        memory = running_server.server.upload_memory
        assert memory.by_slot == {3: 2 * MIB, 5: MIB}
    finally:
        for client in held:
            client.close()


def test_joboutputs_total_cap_refuses_beyond_it_but_never_an_outcome(site: Site, running_server: RunningServer) -> None:
    first = site.create_machine(3)[1]
    site.create_machine(4)
    # A file from before the server counted (a container writes directly) is found by a rescan.
    (first / "joboutputs").mkdir(exist_ok=True)
    (first / "joboutputs" / "container.log").write_bytes(b"y" * 30)
    running_server.call(running_server.server.rescan_joboutputs())
    site.settings = replace(site.settings, joboutputs_total_bytes=100)
    assert running_server.put("/joboutputs/log", b"x" * 60).status == 201
    assert running_server.server.joboutputs_total.total == 90
    assert running_server.put("/joboutputs/log", b"x" * 20, source="127.0.0.4").status == 413
    assert running_server.put("/joboutputs/log", b"x" * 10, source="127.0.0.4").status == 201
    # Full now: a shutdown_message still goes in (only the machine's own quota applies to it).
    assert running_server.put("/joboutputs/shutdown_message", b"300 No work\n", source="127.0.0.4").status == 201
    assert running_server.server.joboutputs_total.total == 112
    # Replacing a file counts what it replaces.
    assert running_server.put("/joboutputs/log", b"x" * 40).status == 201
    assert running_server.server.joboutputs_total.total == 92
