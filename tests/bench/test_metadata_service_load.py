"""The metadata benchmark's load generator measures what the target defines (issue 15 item 3).

`bench/metadata_service.py`'s closed loop must keep, whatever is done to make it cheaper: a
new connection per request (unless keep-alive is asked for), each client bound to its slot's
source address, every response read whole to its last byte, a client's next request only
after its previous response. These tests run `run_load_process` itself, in this process,
against a real server on loopback that records what each connection carried.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.metadata_load import PATHS_REQUESTED, SERVER_ADDRESS, response_complete, run_load_process

BODY = b"x" * 3000


def http_response(body: bytes = BODY, status: str = "200 OK", keep_alive: bool = False) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {connection}\r\n\r\n").encode() + body


@dataclass
class RecordingServer:
    """Answers every request on 127.0.0.254 and records, per connection, its source and requests."""

    pieces: int = 1
    keep_alive: bool = False
    listener: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    connections: list[tuple[str, list[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> None:
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((SERVER_ADDRESS, 0))
        self.listener.listen(256)
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def stop(self) -> None:
        self.stopping = True
        time.sleep(0.3)
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                connection, address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection, str(address[0])), daemon=True).start()

    def _serve(self, connection: socket.socket, source: str) -> None:
        requests: list[bytes] = []
        with self.lock:
            self.connections.append((source, requests))
        buffer = b""
        with connection:
            connection.settimeout(5)
            while True:
                try:
                    data = connection.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    requests.append(head.split(b"\r\n", 1)[0])
                    self._answer(connection, http_response(keep_alive=self.keep_alive))
                    if not self.keep_alive:
                        return

    def _answer(self, connection: socket.socket, response: bytes) -> None:
        # In `pieces` writes with a pause between, so the client sees several partial reads.
        step = -(-len(response) // self.pieces)
        for offset in range(0, len(response), step):
            connection.sendall(response[offset:offset + step])
            if self.pieces > 1:
                time.sleep(0.01)


class Collected:
    """Stands in for the pipe a load process reports on: (latencies, errors)."""

    def __init__(self) -> None:
        self.sent: Optional[tuple[list[float], int]] = None

    def send(self, value: tuple[list[float], int]) -> None:
        self.sent = value

    def close(self) -> None:
        return None


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[RecordingServer]:
    options: dict[str, Any] = getattr(request, "param", {})
    recording = RecordingServer(**options)
    recording.start()
    yield recording
    recording.stop()


def run_clients(port: int, clients: int, keepalive: bool = False, duration: float = 0.5) -> tuple[list[float], int]:
    collected = Collected()
    run_load_process(0, clients, port, keepalive, 0.0, duration, collected)
    assert collected.sent is not None
    return collected.sent


def test_every_request_has_a_connection_of_its_own_from_its_slots_address(server: RecordingServer) -> None:
    latencies, errors = run_clients(server.port, clients=5)
    assert errors == 0
    assert latencies
    with server.lock:
        connections = list(server.connections)
    assert all(len(requests) <= 1 for _source, requests in connections)
    answered = sum(len(requests) for _source, requests in connections)
    # Every response timed was a request the server answered on a connection of its own.
    assert len(latencies) <= answered
    assert {source for source, _requests in connections} == {f"127.0.0.{n}" for n in range(1, 6)}


def test_each_client_alternates_the_two_paths(server: RecordingServer) -> None:
    run_clients(server.port, clients=1)
    with server.lock:
        lines = [requests[0] for _source, requests in server.connections if requests]
    assert len(lines) >= 4
    expected = [f"GET {PATHS_REQUESTED[index % 2]} HTTP/1.0".encode() for index in range(len(lines))]
    assert lines == expected


@pytest.mark.parametrize("server", [{"pieces": 4}], indirect=True)
def test_a_response_in_pieces_is_read_to_its_last_byte(server: RecordingServer) -> None:
    latencies, errors = run_clients(server.port, clients=3)
    assert errors == 0
    assert latencies
    # Each response came in 4 writes 10 ms apart: timed to the last, not the first.
    assert min(latencies) >= 0.03


@pytest.mark.parametrize("server", [{"keep_alive": True}], indirect=True)
def test_keep_alive_clients_send_their_requests_on_one_connection(server: RecordingServer) -> None:
    latencies, errors = run_clients(server.port, clients=2, keepalive=True)
    assert errors == 0
    with server.lock:
        connections = list(server.connections)
    assert len(connections) == 2
    assert all(len(requests) > 1 for _source, requests in connections)
    assert len(latencies) <= sum(len(requests) for _source, requests in connections)


def test_a_refused_connection_counts_as_an_error_not_a_latency() -> None:
    # A port with nothing listening: every connect is refused (RST), at once.
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((SERVER_ADDRESS, 0))
    closed_port = int(probe.getsockname()[1])
    probe.close()
    latencies, errors = run_clients(closed_port, clients=2, duration=0.2)
    assert latencies == []
    assert errors > 0


@given(st.sampled_from([b"200 OK", b"404 Not Found", b"429 Too Many Requests"]), st.binary(max_size=600))
def test_a_response_is_complete_only_with_its_whole_body(status: bytes, body: bytes) -> None:
    whole = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    for cut in range(len(whole)):
        assert response_complete(whole[:cut]) is None
    assert response_complete(whole) is status.startswith(b"200 ")
