"""The metadata benchmark's load: closed-loop HTTP clients, each a slot's guest, on raw sockets.

`bench/metadata_service.py` runs these in its load processes against the server it measures.

Rules (issue 15 item 3; pinned by tests/bench/test_metadata_service_load.py):
- What a run measures is what the target defines: 200 clients by default, a new connection
  per request unless keep-alive is asked for, each client bound to its slot's source
  address 127.0.0.1-64 (which both servers map to slots 1-64), every response read to its
  last byte, a client's next request only after its previous response (or, paced, at its
  scheduled start, latency counted from that start).
- The apparatus takes as little CPU from the machine's CPUs as it can, so the server gets
  what a factory gives it (there guests run on other CPUs): one epoll loop per process,
  8 system calls per connection.
"""

from __future__ import annotations

import _socket
import heapq
import os
import random
import select
import socket
import time
from typing import Any, Optional

# The slots the clients speak as, the server's address, and the paths they alternate.
SLOTS = 64
SERVER_ADDRESS = "127.0.0.254"
PATHS_REQUESTED = ("/openstack/latest/meta_data.json", "/latest/user-data")


# With --slot-addresses (bench/metadata_service.py): the real metadata address, and each
# client's slot's own 169.254.169.n, in a namespace whose loopback holds 169.254.0.0/16.
SLOT_SERVER_ADDRESS = "169.254.169.254"


def slot_source(slot: int) -> str:
    """Slot `slot`'s guest address (vacd.slots.ip_address_for, for slots 1 to 64)."""
    return f"169.254.169.{slot}"


def pin_to(cpus: Optional[set[int]]) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


# Linux <netinet/in.h>: choose the source port at connect(), against the whole 4-tuple, so
# a port whose previous connection is still in TIME_WAIT is not reused (that costs a 1 s
# SYN retransmission and would be charged to the server).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class _Client:
    """One closed-loop client: a request, its response, the next request; raw sockets."""

    __slots__ = ("source", "connection", "descriptor", "buffer", "began", "count", "connecting", "done",
                 "scheduled")

    def __init__(self, index: int, slot_addresses: bool = False) -> None:
        slot = 1 + index % SLOTS
        self.source = (slot_source(slot) if slot_addresses else f"127.0.0.{slot}", 0)
        # The C socket type itself (socket.socket is a Python subclass of it): its methods
        # cost a call less each, and its close() is not a Python method.
        self.connection: Optional[_socket.socket] = None
        self.descriptor = -1
        self.buffer = b""
        self.began = 0.0
        self.count = index
        self.connecting = False
        self.done = False
        self.scheduled = 0.0


# What a load process asks epoll for: readiness to write (the connect finished) and to read,
# edge-triggered, so one registration per connection serves both steps, with no change of
# interest between them (epoll_ctl MOD) and none at the end (close() removes it).
_CLIENT_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
# The socket is non-blocking from socket(): no fcntl/ioctl call to make it so.
_CLIENT_SOCKET_TYPE = socket.SOCK_STREAM | getattr(socket, "SOCK_NONBLOCK", 0)


def response_complete(buffer: bytes) -> Optional[bool]:
    """None while `buffer` does not hold a whole response; else whether it is a 200.

    A response is whole when its head and Content-Length bytes of body are in; every
    response of the servers measured here has a Content-Length.
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    marker = head.find(b"content-length:")
    if marker < 0:
        return None
    length = int(head[marker + 15:].split(b"\r\n", 1)[0])
    if len(buffer) < head_end + 4 + length:
        return None
    return buffer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))


def run_load_process(
    first_client: int,
    clients: int,
    port: int,
    keepalive: bool,
    warmup: float,
    duration: float,
    out: Any,
    interval: Optional[float] = None,
    nice: int = 0,
    cpus: Optional[set[int]] = None,
    slot_addresses: bool = False,
) -> None:
    """Drive `clients` clients with one epoll loop (cheaper per request than asyncio).

    Without `interval` each client sends its next request as soon as it has a response.
    With it, each client waits an exponentially distributed time of that mean after its
    previous *scheduled* start, and latency runs from the scheduled start, so a slow server
    is charged for the queueing it causes (no coordinated omission).

    Each request is timed from just before its connection's socket() (or its send, on a
    kept-alive connection) to the read that completes its response. Per connection the
    client makes socket (non-blocking), setsockopt, bind, connect, one epoll_ctl, send,
    recv and close, and no Python object but the socket: 8 system calls, against 12 in the
    first form of this loop (see docs/benchmarks.md, "third round").
    """
    pin_to(cpus)
    if nice:
        os.nice(nice)
    pacing = random.Random(first_client)
    waiting: list[tuple[float, int, _Client]] = []
    version = "HTTP/1.1" if keepalive else "HTTP/1.0"
    requests = [f"GET {path} {version}\r\nHost: 169.254.169.254\r\n\r\n".encode() for path in PATHS_REQUESTED]
    poller = select.epoll()
    register = poller.register
    clock = time.perf_counter
    by_descriptor: dict[int, _Client] = {}
    latencies: list[float] = []
    record = latencies.append
    errors = 0
    start_at = clock() + warmup
    stop_at = start_at + duration
    server = (SLOT_SERVER_ADDRESS if slot_addresses else SERVER_ADDRESS, port)
    new_socket = _socket.socket
    family = socket.AF_INET
    socket_type = _CLIENT_SOCKET_TYPE
    level, option = socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT

    def drop(client: _Client) -> None:
        connection = client.connection
        if connection is not None:
            # close() takes the descriptor out of the epoll set too.
            by_descriptor.pop(client.descriptor, None)
            connection.close()
            client.connection = None
            client.descriptor = -1
        client.buffer = b""

    def start(client: _Client) -> None:
        now = clock()
        if now >= stop_at:
            drop(client)
            client.done = True
            return
        client.began = client.scheduled if interval is not None else now
        connection = client.connection
        if connection is not None:
            # Kept alive: the next request on the same connection.
            connection.send(requests[client.count & 1])
            client.count += 1
            return
        connection = new_socket(family, socket_type)
        connection.setsockopt(level, option, 1)
        connection.bind(client.source)
        connection.connect_ex(server)
        descriptor = connection.fileno()
        client.connection = connection
        client.descriptor = descriptor
        client.connecting = True
        by_descriptor[descriptor] = client
        register(descriptor, _CLIENT_EVENTS)

    def finish(client: _Client, ok: bool, reuse: bool) -> None:
        nonlocal errors
        ended = clock()
        if client.began >= start_at and ended <= stop_at:
            if ok:
                record(ended - client.began)
            else:
                errors += 1
        if not reuse:
            drop(client)
        if interval is None:
            start(client)
            return
        client.scheduled += pacing.expovariate(1.0 / interval)
        if client.scheduled <= ended:
            start(client)
        else:
            heapq.heappush(waiting, (client.scheduled, id(client), client))

    def ready(client: _Client) -> None:
        connection = client.connection
        assert connection is not None
        if client.connecting:
            # Writable: the connect has finished (or failed, which send then reports).
            try:
                connection.send(requests[client.count & 1])
            except (BlockingIOError, InterruptedError):
                return  # not connected yet after all; the next edge comes when it is
            except OSError:
                finish(client, False, False)
                return
            client.connecting = False
            client.count += 1
            return
        # Edge-triggered: read until the response is whole or nothing more is there.
        while True:
            try:
                data = connection.recv(16384)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                finish(client, False, False)
                return
            if not data:
                finish(client, False, False)
                return
            buffer = client.buffer + data if client.buffer else data
            ok = response_complete(buffer)
            if ok is not None:
                client.buffer = b""
                reuse = keepalive and b"connection: close" not in buffer[:buffer.find(b"\r\n\r\n")].lower()
                finish(client, ok, reuse)
                return
            client.buffer = buffer

    everyone = [_Client(first_client + index, slot_addresses) for index in range(clients)]
    for client in everyone:
        if interval is None:
            start(client)
        else:
            client.scheduled = clock() + pacing.uniform(0, interval)
            heapq.heappush(waiting, (client.scheduled, id(client), client))
    poll = poller.poll
    find = by_descriptor.get
    running = clients
    while running:
        timeout = 0.1
        if waiting:
            timeout = min(timeout, max(0.0, waiting[0][0] - clock()))
        for descriptor, _events in poll(timeout):
            found = find(descriptor)
            if found is not None:
                ready(found)
        now = clock()
        while waiting and waiting[0][0] <= now:
            start(heapq.heappop(waiting)[2])
        if now >= stop_at:
            running = sum(1 for client in everyone if not client.done)
            if now > stop_at + 5:
                break
    for client in everyone:
        drop(client)
    out.send((latencies, errors))
    out.close()
