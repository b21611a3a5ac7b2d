"""vacd.peers: the responder's trusted sources are refreshed on their own timer, census or not
(issue 9 item 4). A full or draining factory runs no census; it must still answer the
space's factories in full, Vac 03 peers included (they send short, unsigned queries that
a stranger would only get 10 x the bytes of: 3 of 6 statuses)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from typing import Iterator

import pytest

from tests.namespaces import in_namespace
from tests.vacquery.sample_statuses import SPACE, snapshot
from vacd.config import FactoryAddress, Settings
from vacd.peers import TRUSTED_REFRESH_SECONDS, PeerCensus, PeerResolver
from vacquery.client import cookie_for
from vacquery.codec import encode
from vacquery.messages import MachinetypesQuery
from vacquery.responder_transport import ResponderProtocol, open_responder_socket

SIX_MACHINETYPES = ("lhcb", "atlas", "cms", "alice", "dune", "lz")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingLookup:
    """DNS stand-in: `addresses[name]`, TTL 60 s, counting the A lookups."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = addresses
        self.lookups = 0

    def __call__(self, name: str, record_type: str) -> tuple[tuple[str, ...], int]:
        if record_type == "A":
            self.lookups += 1
            return (self.addresses[name],), 60
        return (), 60


def settings_with(*factories: FactoryAddress) -> Settings:
    return Settings(vac_space=SPACE, factory_name="f1.example.com", total_processors=8, host_processors=8,
                    gocdb_sitename="example.com", factories=factories, draining=True)


def census_with(lookup: CountingLookup, clock: Clock) -> PeerCensus:
    return PeerCensus(PeerResolver(lookup, clock=clock), monotonic=clock)


def test_trusted_hosts_are_resolved_at_the_first_call_though_no_census_ever_ran() -> None:
    clock, lookup = Clock(), CountingLookup({"f2.example.com": "192.0.2.2"})
    peer_census = census_with(lookup, clock)
    settings = settings_with(FactoryAddress("f1.example.com", "192.0.2.1"), FactoryAddress("f2.example.com"))
    assert peer_census.trusted_hosts_for(settings) == {"192.0.2.1", "192.0.2.2"}
    assert peer_census.last_outcome is None  # no census: the factory is draining


def test_trusted_hosts_are_re_resolved_on_their_timer_and_not_before() -> None:
    clock, lookup = Clock(), CountingLookup({"f2.example.com": "192.0.2.2"})
    peer_census = census_with(lookup, clock)
    settings = settings_with(FactoryAddress("f2.example.com"))
    peer_census.trusted_hosts_for(settings)
    lookup.addresses["f2.example.com"] = "192.0.2.22"  # the peer was renumbered
    clock.now += TRUSTED_REFRESH_SECONDS - 1
    assert peer_census.trusted_hosts_for(settings) == {"192.0.2.2"}
    assert lookup.lookups == 1  # within the interval every pass is free
    clock.now += 1
    assert peer_census.trusted_hosts_for(settings) == {"192.0.2.22"}
    assert lookup.lookups == 2


def test_a_changed_factories_list_is_trusted_at_once() -> None:
    clock, lookup = Clock(), CountingLookup({})
    peer_census = census_with(lookup, clock)
    peer_census.trusted_hosts_for(settings_with(FactoryAddress("f2.example.com", "192.0.2.2")))
    clock.now += 1
    grown = settings_with(FactoryAddress("f2.example.com", "192.0.2.2"), FactoryAddress("f3.example.com", "192.0.2.3"))
    assert peer_census.trusted_hosts_for(grown) == {"192.0.2.2", "192.0.2.3"}


# ------------------------------------------------------------------ real responder, real datagrams

RESPONDER, PEER, STRANGER = "169.254.77.1", "169.254.77.2", "169.254.77.3"


@pytest.fixture
def link_local_namespace() -> Iterator[str]:
    """A network namespace made for this test, with one bridge (no ports) holding three
    link-local addresses: sources that are not loopback, which the responder always trusts."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    from pyroute2 import NetNS, netns

    namespace = f"vactest-{uuid.uuid4().hex[:8]}"
    netns.create(namespace)
    try:
        with NetNS(namespace) as handle:
            handle.link("add", ifname="vacq0", kind="bridge")
            index = handle.link_lookup(ifname="vacq0")[0]
            for address in (RESPONDER, PEER, STRANGER):
                handle.addr("add", index=index, address=address, prefixlen=24)
            handle.link("set", index=index, state="up")
            handle.link("set", index=handle.link_lookup(ifname="lo")[0], state="up")
        yield namespace
    finally:
        netns.remove(namespace)


def bound_udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(1.0)
    return sock


def statuses_answered(sock: socket.socket, port: int, cookie: str) -> int:
    """Send a Vac 03 peer's query (unsigned, unpadded) and count the replies to it."""
    sock.sendto(encode(MachinetypesQuery(space=SPACE, cookie=cookie)), (RESPONDER, port))
    count = 0
    while count < len(SIX_MACHINETYPES):
        try:
            reply, _ = sock.recvfrom(65536)
        except socket.timeout:
            break
        count += cookie.encode() in reply and b'"machinetype_status"' in reply
    return count


@pytest.mark.allow_commands("ldconfig")  # pyroute2 runs ldconfig -p to find libc
def test_a_draining_factory_answers_a_vac03_peer_in_full_with_no_census_run(link_local_namespace: str) -> None:
    settings = settings_with(FactoryAddress("f1.example.com", RESPONDER), FactoryAddress("f2.example.com", PEER))
    peer_census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)))
    protocol = ResponderProtocol()
    protocol.publish(snapshot("f1.example.com", machinetypes=SIX_MACHINETYPES))
    # What Daemon._publish does after every pass, the census having been skipped.
    protocol.set_trusted_sources(peer_census.trusted_hosts_for(settings))
    responder_socket = in_namespace(link_local_namespace, lambda: open_responder_socket(RESPONDER, 0))
    peer_socket = in_namespace(link_local_namespace, lambda: bound_udp(PEER))
    stranger_socket = in_namespace(link_local_namespace, lambda: bound_udp(STRANGER))
    port = responder_socket.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        transport, _ = asyncio.run_coroutine_threadsafe(
            loop.create_datagram_endpoint(lambda: protocol, sock=responder_socket), loop).result(5)
        try:
            from_peer = statuses_answered(peer_socket, port, cookie_for("salt", "f1.example.com"))
            from_stranger = statuses_answered(stranger_socket, port, cookie_for("pepper", "f1.example.com"))
        finally:
            loop.call_soon_threadsafe(transport.close)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        peer_socket.close()
        stranger_socket.close()
    assert peer_census.last_outcome is None
    assert from_peer == len(SIX_MACHINETYPES)
    assert from_stranger == 0  # the amplification bound, for contrast: a bare query fits no status
    assert protocol.counters["replies_capped"] == 1
