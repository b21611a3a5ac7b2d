"""Carry VacQuery datagrams over UDP: the census's sockets and what both sides share.

With vacquery.responder_transport (the responder's asyncio side), the only vacquery
modules that touch sockets or clocks:
- `run_census(census, sockets, addresses, port=...)`: a blocking loop (selectors) for the
  factory's pass (run it in a worker thread) and for the `vac` command. It signs what it
  sends (each query for the factory it is sent to) and verifies what it receives when
  given an `Authenticator`, so the census itself never sees auth trailers. Each wake-up
  reads every waiting datagram before handling any, and hands each to the census with
  its arrival time (the kernel's SO_TIMESTAMPNS stamp), so the time spent on a burst of
  replies is not counted into their round trips (issue 15 item 4).
- socket buffer sizing, source addresses and injected loss, used by both sides.

This module imports no asyncio: `vac machines` loads only what a listing uses (issue 15
item 4; tests/vacd/test_cli.py pins it).

Rules: IPv4 and IPv6 alike; every datagram dropped is counted by reason; a failure to
handle one datagram is logged and counted, never raised into the event loop.

Socket buffers are asked for 16 MiB, the figure Vac used (§3.1): 400 factories answering
one census at once with 6 statuses each overflow EL9's default 208 KiB receive buffer
(issue 9 item 5; docs/benchmarks.md, "Census on loopback"). The kernel caps the request
at net.core.rmem_max / wmem_max. Vac raised those itself; vacd does not change host-wide
settings behind the admin's back: the packages ship etc/sysctl.d/90-vac-vacquery.conf
(the RPM's %post and the Puppet module apply it), and what the kernel granted is read
back and logged, with a warning naming the drop-in when it is less than asked.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from vacquery.client import Census, CensusResult
from vacquery.codec import MAX_DATAGRAM_BYTES

if TYPE_CHECKING:
    import random

    # An unsigned census (`vac machines` without a site key) never loads vacquery.auth:
    # whoever passes an Authenticator has loaded it, so _send and _drain import its Scope there.
    from vacquery.auth import Authenticator

log = logging.getLogger(__name__)

VACQUERY_PORT = 995
SOCKET_BUFFER_BYTES = 16 * 1024 * 1024


def source_host(address: Any) -> str:
    """The host part of a socket address, with IPv4-mapped IPv6 turned back into IPv4."""
    host = str(address[0])
    if host.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


# Linux doubles what setsockopt asks for (the other half is its bookkeeping) and reports
# the doubled figure through getsockopt; socket(7).
_KERNEL_BUFFER_FACTOR = 2 if sys.platform.startswith("linux") else 1
_short_buffer_warned: set[str] = set()


def size_socket_buffers(sock: socket.socket, role: str, asked: int = SOCKET_BUFFER_BYTES) -> int:
    """Ask for `asked` bytes of send and receive buffer; return the receive buffer granted.

    The granted size is what getsockopt(SO_RCVBUF) reads back. A grant short of the
    request is logged as a warning once per `role` (census, responder) and process, then
    at debug level: the census opens its sockets every pass.
    """
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, asked)
        except OSError as error:
            log.debug("cannot size socket buffer option=%s error=%s", option, error)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if granted < asked * _KERNEL_BUFFER_FACTOR:
        level = logging.DEBUG if role in _short_buffer_warned else logging.WARNING
        _short_buffer_warned.add(role)
        log.log(level, "VacQuery %s socket got a smaller receive buffer than asked asked=%d granted=%d "
                "(raise net.core.rmem_max, see /usr/lib/sysctl.d/90-vac-vacquery.conf); a census of many "
                "factories may lose replies", role, asked, granted)
    else:
        log.debug("VacQuery %s socket receive buffer asked=%d granted=%d", role, asked, granted)
    return granted


class CensusSockets:
    """One non-blocking ephemeral UDP socket per address family, opened when first needed.

    `buffer_bytes` is the send and receive buffer asked for; None leaves the kernel's
    default (net.core.rmem_default), for benchmarks that compare the two.
    """

    def __init__(self, buffer_bytes: Optional[int] = SOCKET_BUFFER_BYTES) -> None:
        self._sockets: dict[socket.AddressFamily, socket.socket] = {}
        self._buffer_bytes = buffer_bytes
        # What the kernel granted each socket (getsockopt SO_RCVBUF), for logs and benches.
        self.receive_buffer_bytes: dict[socket.AddressFamily, int] = {}

    def for_family(self, family: socket.AddressFamily) -> socket.socket:
        sock = self._sockets.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            if self._buffer_bytes is None:
                self.receive_buffer_bytes[family] = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            else:
                self.receive_buffer_bytes[family] = size_socket_buffers(sock, "census", self._buffer_bytes)
            sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
            self._sockets[family] = sock
        return sock

    @property
    def open_sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets.values())

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> "CensusSockets":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class InjectedLoss:
    """Drops outgoing datagrams with a fixed probability: for tests of a lossy network only.

    vacd enables it only when the environment variable VAC_TEST_DATAGRAM_LOSS is set, so
    that real factory processes can be tested over real sockets at, say, 50 % loss.
    """

    def __init__(self, probability: float, seed: Optional[int] = None) -> None:
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"loss probability must be in [0, 1), got {probability}")
        self.probability = probability
        import random  # tests and benchmarks only: a listing does not load it

        self._random: random.Random = random.Random(seed)
        self.dropped = 0

    def drops(self) -> bool:
        if self._random.random() < self.probability:
            self.dropped += 1
            return True
        return False


def run_census(
    census: Census,
    sockets: CensusSockets,
    addresses: Mapping[str, Sequence[str]],
    *,
    port: int = VACQUERY_PORT,
    authenticator: Optional[Authenticator] = None,
    monotonic: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    counters: Optional[Counter[str]] = None,
    loss: Optional[InjectedLoss] = None,
) -> CensusResult:
    """Drive `census` to completion or its deadline; `census` must run on `monotonic` time.

    `addresses` maps each factory name to its IP addresses; successive queries to one
    factory go to its addresses in turn, so a dead IPv6 path does not silence an IPv4 one.
    """
    tally: Counter[str] = counters if counters is not None else Counter()
    sent_per_factory: Counter[str] = Counter()
    addresses = {name.lower(): hosts for name, hosts in addresses.items()}  # the census lower-cases names
    for family in {family_of(host) for hosts in addresses.values() for host in hosts}:
        sockets.for_family(family)
    selector = selectors.DefaultSelector()
    try:
        stamped = {sock: stamp_arrivals(sock) for sock in sockets.open_sockets}
        for sock in sockets.open_sockets:
            selector.register(sock, selectors.EVENT_READ)
        while True:
            now = monotonic()
            for name, datagram in census.datagrams_to_send(now):
                if loss is not None and loss.drops():
                    sent_per_factory[name] += 1
                    continue
                _send(name, datagram, census.space, sockets, addresses, port, authenticator, wall_clock,
                      sent_per_factory, tally)
            if census.done:
                break
            timeout = max(0.0, census.next_wakeup - monotonic())
            for key, _ in selector.select(timeout):
                ready: socket.socket = key.fileobj  # type: ignore[assignment]  # registered above
                _drain(ready, census, authenticator, monotonic, wall_clock, tally, stamped[ready])
    finally:
        selector.close()
    return census.result


def _send(
    name: str,
    datagram: bytes,
    space: str,
    sockets: CensusSockets,
    addresses: Mapping[str, Sequence[str]],
    port: int,
    authenticator: Optional[Authenticator],
    wall_clock: Callable[[], float],
    sent_per_factory: Counter[str],
    tally: Counter[str],
) -> None:
    hosts = addresses.get(name, ())
    if not hosts:
        tally["no_address"] += 1
        return
    host = hosts[sent_per_factory[name] % len(hosts)]
    sent_per_factory[name] += 1
    if authenticator is not None:
        from vacquery.auth import Scope

        # Bound to the factory it is for: captured, it draws nothing from the others (issue 9 item 6).
        datagram = authenticator.sign(datagram, wall_clock(), Scope.query_to(name, space))
    try:
        sockets.for_family(family_of(host)).sendto(datagram, (host, port))
    except OSError as error:
        tally["send_error"] += 1
        log.debug("cannot send query factory=%s address=%s error=%s", name, host, error)


# SO_TIMESTAMPNS (socket(7)): the kernel stamps each datagram with its arrival time
# (CLOCK_REALTIME) and recvmsg returns it as a struct timespec. Python does not name the
# option; 35 is its value in Linux's asm-generic/socket.h, which these architectures use
# (alpha, mips, parisc and sparc number it differently: there the wake-up time is used).
_GENERIC_SOCKET_ABI = ("x86_64", "i686", "aarch64", "armv7l", "ppc64le", "ppc64", "s390x", "riscv64")
_SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") and os.uname().machine in _GENERIC_SOCKET_ABI else None
_TIMESPEC = struct.Struct("@qq")
# recvmsg's ancillary buffer: room for one timespec.
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


def stamp_arrivals(sock: socket.socket) -> bool:
    """Ask the kernel to stamp each datagram on `sock` with its arrival time; whether it will."""
    if _SO_TIMESTAMPNS is None or not _ANCILLARY_BYTES:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError as error:
        log.debug("no kernel arrival timestamps error=%s", error)
        return False
    return True


def _kernel_arrival(ancillary: list[tuple[int, int, bytes]]) -> Optional[float]:
    """The CLOCK_REALTIME arrival time in recvmsg's ancillary data, if the kernel gave one."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
            return float(seconds) + float(nanoseconds) * 1e-9
    return None


def receive_batch(
    sock: socket.socket, woke_monotonic: float, woke_realtime: float, stamped: bool
) -> tuple[list[tuple[bytes, Any, float]], int]:
    """Every datagram waiting on `sock` as (data, address, arrival), read before any is handled.

    The arrival is on the monotonic clock read at `woke_monotonic`: the kernel's stamp
    when `stamped` (moved onto the monotonic clock by how long before `woke_realtime`
    it was), else the wake-up itself. Either way it is not the time a datagram's turn
    came to be handled, which a burst of hundreds of replies would push back by the
    time spent on the ones before it (issue 15 item 4). Also returns how many receive
    errors were met (ICMP port unreachable from a dead peer surfaces as one on Linux).
    """
    batch: list[tuple[bytes, Any, float]] = []
    errors = 0
    while True:
        try:
            if stamped:
                data, ancillary, _, address = sock.recvmsg(MAX_DATAGRAM_BYTES + 1, _ANCILLARY_BYTES)
                kernel_time = _kernel_arrival(ancillary)
                # Never later than the wake-up, whatever a stepped real-time clock says.
                age = 0.0 if kernel_time is None else max(0.0, woke_realtime - kernel_time)
                batch.append((data, address, woke_monotonic - age))
            else:
                data, address = sock.recvfrom(MAX_DATAGRAM_BYTES + 1)
                batch.append((data, address, woke_monotonic))
        except (BlockingIOError, InterruptedError):
            return batch, errors
        except OSError as error:
            errors += 1
            log.debug("receive error error=%s", error)
            if errors > 16:  # each read reports and clears one error; a flood of them can wait
                return batch, errors


def _drain(
    sock: socket.socket,
    census: Census,
    authenticator: Optional[Authenticator],
    monotonic: Callable[[], float],
    wall_clock: Callable[[], float],
    tally: Counter[str],
    stamped: bool,
) -> None:
    """Read every datagram waiting on `sock`, then hand each to the census with its arrival time."""
    batch, errors = receive_batch(sock, monotonic(), time.time(), stamped)
    if errors:
        tally["receive_error"] += errors
    verified_at = 0.0
    if authenticator is not None:
        from vacquery.auth import AuthRejected, Scope  # loaded already, with the authenticator

        verified_at = wall_clock()
    for data, address, arrival in batch:
        host = source_host(address)
        if authenticator is not None:
            try:
                data = authenticator.verify(data, verified_at, Scope.reply_in(census.space), host).body
            except AuthRejected as rejection:
                tally[f"auth_{rejection.reason}"] += 1
                continue
        census.receive(data, host, arrival)
