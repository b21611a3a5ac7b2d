"""VacMon: push status datagrams to the configured VacMon collectors, fire and forget.

Rules (behaviour reference §7.2, acceptance 37):
- Every pass: one `factory_status` and one `machinetype_status` per machinetype to every
  `vacmon_hostport`; at each finalisation one `machine_status` for that machine. The
  datagrams are built by the caller with the vacquery codec (cookie "0"); for a finished
  machine the caller encodes `state: "Shut down"` and the real shutdown message (Vac 03
  sent "Running" and no message, a [BUG]).
- Monitoring never blocks or breaks the factory: sends are non-blocking, a collector that
  does not resolve or refuses is logged at DEBUG, counted, and skipped; nothing is retried.
- A host name is resolved once per `RESOLVE_EVERY_SECONDS`, not for every datagram, so a
  slow resolver costs one lookup per interval. The clock is injected for tests.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

log = logging.getLogger(__name__)

# Collectors' addresses change rarely; a lookup every 5 minutes follows DNS changes soon enough.
RESOLVE_EVERY_SECONDS = 300.0


@dataclass(frozen=True)
class Hostport:
    """One `host:port` from `vacmon_hostport` (`[v6]:port` for a literal IPv6 address)."""

    host: str
    port: int

    @classmethod
    def parse(cls, raw_text: str) -> "Hostport":
        """Raises ValueError naming the bad value."""
        text = raw_text.strip()
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not host or not rest.startswith(":"):
                raise ValueError(f"vacmon_hostport {raw_text!r}: expected [address]:port")
            port_text = rest[1:]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError(f"vacmon_hostport {raw_text!r}: expected host:port")
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"vacmon_hostport {raw_text!r}: port must be 1..65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class VacmonSender:
    """Sends status datagrams to every VacMon collector; owns one UDP socket per family."""

    def __init__(self, hostports: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.hostports = tuple(Hostport.parse(hostport) for hostport in hostports)
        self.clock = clock
        self.sent = 0
        self.failed = 0
        self._sockets: dict[int, socket.socket] = {}
        self._resolved: dict[Hostport, tuple[float, Optional[tuple[int, tuple[str, int]]]]] = {}
        # The finish hook and the end of a pass may run on different threads.
        self._lock = threading.Lock()

    def send_pass(self, factory_status: bytes, machinetype_statuses: Sequence[bytes]) -> int:
        """One factory_status and the machinetype_status datagrams to every collector.

        Returns the number of datagrams handed to the kernel.
        """
        return self._send_all([factory_status, *machinetype_statuses])

    def send_machine_finished(self, machine_status: bytes) -> int:
        """The machine_status of a machine that has just been finalised."""
        return self._send_all([machine_status])

    def close(self) -> None:
        with self._lock:
            for udp_socket in self._sockets.values():
                udp_socket.close()
            self._sockets.clear()

    def _send_all(self, datagrams: Sequence[bytes]) -> int:
        with self._lock:
            return self._send_all_locked(datagrams)

    def _send_all_locked(self, datagrams: Sequence[bytes]) -> int:
        sent = 0
        for hostport in self.hostports:
            destination = self._destination(hostport)
            if destination is None:
                self.failed += len(datagrams)
                continue
            family, address = destination
            for datagram in datagrams:
                try:
                    self._socket(family).sendto(datagram, address)
                    sent += 1
                except OSError as error:
                    # A full buffer or an ICMP refusal from an earlier send: drop, never wait.
                    self.failed += 1
                    log.debug("VacMon send failed collector=%s error=%s", hostport, error)
        self.sent += sent
        return sent

    def _destination(self, hostport: Hostport) -> Optional[tuple[int, tuple[str, int]]]:
        now = self.clock()
        cached = self._resolved.get(hostport)
        if cached is not None and now < cached[0] + RESOLVE_EVERY_SECONDS:
            return cached[1]
        destination: Optional[tuple[int, tuple[str, int]]] = None
        try:
            infos = socket.getaddrinfo(hostport.host, hostport.port, type=socket.SOCK_DGRAM)
        except OSError as error:
            log.warning("VacMon collector does not resolve collector=%s error=%s", hostport, error)
        else:
            for family, _, _, _, sockaddr in infos:
                if family in (socket.AF_INET, socket.AF_INET6):
                    destination = (family, (str(sockaddr[0]), int(sockaddr[1])))
                    break
        self._resolved[hostport] = (now, destination)
        return destination

    def _socket(self, family: int) -> socket.socket:
        udp_socket = self._sockets.get(family)
        if udp_socket is None:
            udp_socket = socket.socket(family, socket.SOCK_DGRAM)
            udp_socket.setblocking(False)
            self._sockets[family] = udp_socket
        return udp_socket

    def __enter__(self) -> "VacmonSender":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
