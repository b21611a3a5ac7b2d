"""The VacQuery responder's sockets: an asyncio DatagramProtocol around `responder.respond`.

`ResponderProtocol` answers from the last published snapshot; `start_responder` binds it
to `[settings] vacquery_bind_address`:`vacquery_port` (`::` listens on IPv6 and IPv4).
Kept apart from vacquery.transport (the census's sockets) so that the `vac` command,
which only asks, never loads asyncio.

Rules: IPv4 and IPv6 alike; every datagram dropped is counted by reason; a failure to
handle one datagram is logged and counted, never raised into the event loop. Socket
buffers as vacquery.transport says.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from typing import Any, AbstractSet, Callable, Optional

from vacquery.auth import Authenticator
from vacquery.codec import EncodedSnapshot, encode_snapshot
from vacquery.messages import Snapshot
from vacquery.responder import ReplyBudget, respond
from vacquery.transport import SOCKET_BUFFER_BYTES, InjectedLoss, family_of, size_socket_buffers, source_host

log = logging.getLogger(__name__)


class ResponderProtocol(asyncio.DatagramProtocol):
    """Answers VacQuery requests from the snapshot the factory last published.

    `authenticator` may be replaced from another thread when a reload changes the key or
    the mode (vacd's `_follow_auth_settings`): one attribute assignment, as for `publish`.
    """

    def __init__(
        self,
        *,
        authenticator: Optional[Authenticator] = None,
        budget: Optional[ReplyBudget] = None,
        trusted_sources: AbstractSet[str] = frozenset(),
        clock: Callable[[], float] = time.time,
        loss: Optional[InjectedLoss] = None,
        trust_loopback: bool = True,
    ) -> None:
        self.authenticator = authenticator
        # False only in benchmarks and tests that play unlisted sources on loopback.
        self.trust_loopback = trust_loopback
        self.loss = loss
        self.budget = budget if budget is not None else ReplyBudget()
        self.trusted_sources: AbstractSet[str] = frozenset(trusted_sources)
        self.counters: Counter[str] = Counter()
        self.last_datagram_time: Optional[float] = None
        self._clock = clock
        self._encoded: Optional[EncodedSnapshot] = None
        self._transport: Optional[asyncio.DatagramTransport] = None

    def publish(self, snapshot: Snapshot) -> None:
        """Answer from `snapshot` from now on (each query type encoded once, when first asked for).

        Safe to call from the factory's thread: the snapshot is swapped in by one attribute
        assignment, which the event loop thread sees whole or not at all; the encoding
        (vacquery.codec.EncodedBodies) then happens on the event loop's thread only.
        """
        self._encoded = encode_snapshot(snapshot)

    def set_trusted_sources(self, hosts: AbstractSet[str]) -> None:
        """The addresses of the space's factories (amplification rule 3b of responder.py)."""
        self.trusted_sources = frozenset(hosts)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = self._clock()
        self.last_datagram_time = now
        if self._encoded is None or self._transport is None:
            self.counters["no_snapshot"] += 1
            return
        host = source_host(addr)
        try:
            replies = respond(
                data,
                host,
                self._encoded,
                now,
                authenticator=self.authenticator,
                budget=self.budget,
                trusted_sources=self.trusted_sources,
                counters=self.counters,
                trust_loopback=self.trust_loopback,
            )
        except Exception:  # boundary: one datagram must never stop the responder
            self.counters["error"] += 1
            log.exception("failed to answer datagram peer=%s", host)
            return
        for reply in replies:
            if self.loss is not None and self.loss.drops():
                continue
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        self.counters["socket_error"] += 1
        log.debug("responder socket error error=%s", exc)


def open_responder_socket(
    bind_address: str, port: int, buffer_bytes: Optional[int] = SOCKET_BUFFER_BYTES
) -> socket.socket:
    """A bound, non-blocking UDP socket; `::` also accepts IPv4 (dual stack).

    `buffer_bytes` as for `CensusSockets` (None: the kernel's default).
    """
    family = family_of(bind_address)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind_address == "::" else 1)
        if buffer_bytes is not None:
            size_socket_buffers(sock, "responder", buffer_bytes)
        sock.bind((bind_address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_responder(
    bind_address: str, port: int, protocol: ResponderProtocol, buffer_bytes: Optional[int] = SOCKET_BUFFER_BYTES
) -> asyncio.DatagramTransport:
    """Serve `protocol` on bind_address:port; close the returned transport to stop."""
    sock = open_responder_socket(bind_address, port, buffer_bytes)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
    log.info("VacQuery responder listening address=%s port=%s receive_buffer=%d", bind_address,
             sock.getsockname()[1], sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return transport
