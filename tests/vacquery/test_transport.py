"""vacquery.transport: census and responders over real UDP sockets on loopback."""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Iterator

import pytest

from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import SPACE
from vacquery.auth import AuthMode, Authenticator
from vacquery.client import Census
from vacquery.messages import MessageType
from vacquery.transport import CensusSockets, receive_batch, run_census, source_host, stamp_arrivals

KEY = b"0123456789abcdef0123456789abcdef"
NAMES = ("f1.example.com", "f2.example.com", "f3.example.com")


@pytest.fixture
def responders() -> Iterator[LoopbackResponders]:
    started = LoopbackResponders()
    try:
        yield started
    finally:
        started.close()


def census(kind: MessageType = MessageType.MACHINETYPES_QUERY, names: tuple[str, ...] = NAMES,
           deadline: float = 2.0) -> Census:
    return Census(kind, SPACE, names, time.monotonic(), deadline_seconds=deadline, salt="loopback-salt")


def start_three(responders: LoopbackResponders, **options: object) -> tuple[int, dict[str, list[str]]]:
    """Three factories on 127.0.0.1-3, one port (the first free one)."""
    _, port = responders.start(NAMES[0], "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    for index, name in enumerate(NAMES[1:], start=2):
        responders.start(name, f"127.0.0.{index}", port, **options)  # type: ignore[arg-type]
    return port, {name: [f"127.0.0.{index}"] for index, name in enumerate(NAMES, start=1)}


def test_census_hears_every_responder_on_loopback(responders: LoopbackResponders) -> None:
    port, addresses = start_three(responders, trusted_sources=frozenset(["127.0.0.1"]))
    with CensusSockets() as sockets:
        result = run_census(census(), sockets, addresses, port=port)
    assert result.complete == set(NAMES) and result.statuses_heard == 9
    assert result.finished is not None and result.finished - result.started < 1.0


def test_machines_census_over_loopback_hears_every_slot(responders: LoopbackResponders) -> None:
    port, addresses = start_three(responders, trusted_sources=frozenset(["127.0.0.1"]))
    with CensusSockets() as sockets:
        result = run_census(census(MessageType.MACHINES_QUERY), sockets, addresses, port=port)
    assert result.statuses_heard == 12 and result.completeness == 1.0


def test_authenticated_census_with_required_auth(responders: LoopbackResponders) -> None:
    def signer() -> Authenticator:
        return Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)

    protocol, port = responders.start(NAMES[0], "127.0.0.1", 0, authenticator=signer())
    with CensusSockets() as sockets:
        result = run_census(census(names=NAMES[:1]), sockets, {NAMES[0]: ["127.0.0.1"]}, port=port,
                            authenticator=signer())
        assert result.complete == {NAMES[0]}
        unsigned = run_census(census(names=NAMES[:1], deadline=0.3), sockets, {NAMES[0]: ["127.0.0.1"]}, port=port)
    assert unsigned.silent == (NAMES[0],)
    assert protocol.counters["auth_unauthenticated"] >= 1 and protocol.counters["answered"] == 1


def test_unsigned_replies_are_dropped_by_a_census_that_requires_auth(responders: LoopbackResponders) -> None:
    _, port = responders.start(NAMES[0], "127.0.0.1", 0, trusted_sources=frozenset(["127.0.0.1"]))
    drops: Counter[str] = Counter()
    verifier = Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)
    with CensusSockets() as sockets:
        result = run_census(census(names=NAMES[:1], deadline=0.3), sockets, {NAMES[0]: ["127.0.0.1"]}, port=port,
                            authenticator=verifier, counters=drops)
    assert result.silent == (NAMES[0],) and drops["auth_unauthenticated"] >= 1


def test_responder_counts_garbage_by_reason(responders: LoopbackResponders) -> None:
    protocol, port = responders.start(NAMES[0], "127.0.0.1", 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"\xff\xfe not json", ("127.0.0.1", port))
        sender.sendto(b'{"space": "other.example.com", "cookie": "c", "method": "factories"}', ("127.0.0.1", port))
        sender.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sender.recvfrom(10240)
    assert protocol.counters == {"malformed": 1, "wrong_space": 1}
    assert protocol.last_datagram_time is not None


def test_factory_without_address_is_counted_not_fatal(responders: LoopbackResponders) -> None:
    port, addresses = start_three(responders, trusted_sources=frozenset(["127.0.0.1"]))
    drops: Counter[str] = Counter()
    with CensusSockets() as sockets:
        result = run_census(census(names=NAMES + ("f4.example.com",), deadline=0.3), sockets, addresses, port=port,
                            counters=drops)
    assert result.silent == ("f4.example.com",) and drops["no_address"] >= 1


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_census_over_ipv6_loopback(responders: LoopbackResponders) -> None:
    _, port = responders.start(NAMES[0], "::1", 0, trusted_sources=frozenset(["::1"]))
    with CensusSockets() as sockets:
        result = run_census(census(names=NAMES[:1]), sockets, {NAMES[0]: ["::1"]}, port=port)
    assert result.complete == {NAMES[0]}


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_dual_stack_responder_answers_ipv4_and_sees_plain_ipv4_sources(responders: LoopbackResponders) -> None:
    protocol, port = responders.start(NAMES[0], "::", 0, trusted_sources=frozenset(["127.0.0.1"]))
    with CensusSockets() as sockets:
        result = run_census(census(MessageType.MACHINES_QUERY, names=NAMES[:1]), sockets,
                            {NAMES[0]: ["127.0.0.1"]}, port=port)
    # 4 slots of ~900 bytes exceed 10 x the request: only a trusted IPv4 source gets them all.
    assert result.statuses_heard == 4 and protocol.counters["replies_capped"] == 0


def test_ipv4_mapped_sources_become_ipv4() -> None:
    assert source_host(("::ffff:192.0.2.1", 995, 0, 0)) == "192.0.2.1"
    assert source_host(("2001:db8::1", 995, 0, 0)) == "2001:db8::1"


def test_a_burst_is_read_whole_and_stamped_with_when_it_arrived_not_when_it_was_read() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        assert stamp_arrivals(receiver)  # Linux: SO_TIMESTAMPNS
        for number in range(50):
            sender.sendto(b"reply %d" % number, receiver.getsockname())
        sent_by = time.monotonic()
        time.sleep(0.05)  # the datagrams wait in the socket, as a burst does behind a busy census
        woke = time.monotonic()
        batch, errors = receive_batch(receiver, woke, time.time(), stamped=True)
    assert errors == 0
    assert [data for data, _, _ in batch] == [b"reply %d" % number for number in range(50)]
    arrivals = [arrival for _, _, arrival in batch]
    assert all(arrival <= sent_by + 0.001 for arrival in arrivals)  # the kernel's stamp, not the wake-up
    assert arrivals == sorted(arrivals)


def test_without_kernel_stamps_a_burst_is_stamped_with_the_wake_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        for number in range(3):
            sender.sendto(b"reply %d" % number, receiver.getsockname())
        time.sleep(0.01)
        batch, _ = receive_batch(receiver, 123.0, time.time(), stamped=False)
    assert [(data, arrival) for data, _, arrival in batch] == [(b"reply %d" % number, 123.0) for number in range(3)]
