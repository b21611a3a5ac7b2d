"""vacd.peers: DNS resolution of factories (real dnspython against a loopback DNS server),
the conversion of census replies to scheduler reports, and a census over loopback UDP."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import dns.rrset
import pytest

from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import SPACE, machinetype_status, snapshot
from vacd.config import FactoryAddress, Settings
from vacd.peers import (PeerCensus, PeerResolver, ResolvedPeer, census_deadline_seconds, dns_lookup, fast_retry_peers,
                        reports_from)
from vacd.scheduler import MachinetypeReport
from vacquery.client import VAC_ROUNDS, Census
from vacquery.codec import encode_snapshot
from vacquery.messages import MessageType, Snapshot
from vacquery.responder import respond
from vacquery.transport import InjectedLoss


class LoopbackDns:
    """A tiny authoritative DNS server on 127.0.0.1: answers from `records`, NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port = self._socket.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                wire, address = self._socket.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            record_type = dns.rdatatype.to_text(question.rdtype)
            self.queries.append((name, record_type))
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if name in self.servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif (name, record_type) in self.records:
                ttl, addresses = self.records[(name, record_type)]
                response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", record_type, addresses))
            elif not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self._socket.sendto(response.to_wire(), address)

    def resolver(self) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        return resolver

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self._socket.close()


@pytest.fixture
def dns_server() -> Iterator[LoopbackDns]:
    server = LoopbackDns()
    try:
        yield server
    finally:
        server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: LoopbackDns, clock: Clock, **options: float) -> PeerResolver:
    return PeerResolver(dns_lookup(server.resolver()), clock=clock, **options)


def test_factory_names_resolve_to_a_and_aaaa_addresses(dns_server: LoopbackDns) -> None:
    dns_server.records[("f1.example.com", "A")] = (300, ["192.0.2.1"])
    dns_server.records[("f1.example.com", "AAAA")] = (300, ["2001:db8::1"])
    peers = resolver_for(dns_server, Clock()).resolve([FactoryAddress("f1.example.com")])
    assert peers == [ResolvedPeer("f1.example.com", ("192.0.2.1", "2001:db8::1"))]


def test_addresses_are_cached_for_their_ttl(dns_server: LoopbackDns) -> None:
    dns_server.records[("f1.example.com", "A")] = (120, ["192.0.2.1"])
    clock = Clock()
    resolver = resolver_for(dns_server, clock)
    resolver.resolve([FactoryAddress("f1.example.com")])
    clock.now += 119
    resolver.resolve([FactoryAddress("f1.example.com")])
    assert len(dns_server.queries) == 2  # A and AAAA, once
    dns_server.records[("f1.example.com", "A")] = (120, ["192.0.2.99"])
    clock.now += 2
    assert resolver.resolve([FactoryAddress("f1.example.com")])[0].addresses == ("192.0.2.99",)


def test_name_that_stops_resolving_keeps_its_address_for_a_while(dns_server: LoopbackDns) -> None:
    dns_server.records[("f1.example.com", "A")] = (60, ["192.0.2.1"])
    clock = Clock()
    resolver = resolver_for(dns_server, clock, stale_grace_seconds=3600)
    resolver.resolve([FactoryAddress("f1.example.com")])
    dns_server.servfail.add("f1.example.com")
    clock.now += 61
    stale = resolver.resolve([FactoryAddress("f1.example.com")])[0]
    assert stale.addresses == ("192.0.2.1",) and stale.is_stale and stale.problem
    clock.now += 3600
    gone = resolver.resolve([FactoryAddress("f1.example.com")])[0]
    assert gone.addresses == () and gone.problem


def test_failed_lookup_is_retried_only_after_a_pause(dns_server: LoopbackDns) -> None:
    clock = Clock()
    resolver = resolver_for(dns_server, clock, retry_after_failure_seconds=30)
    first = resolver.resolve([FactoryAddress("nowhere.example.com")])[0]
    assert first.addresses == () and "no such name" in (first.problem or "")
    asked = len(dns_server.queries)
    clock.now += 10
    resolver.resolve([FactoryAddress("nowhere.example.com")])
    assert len(dns_server.queries) == asked
    dns_server.records[("nowhere.example.com", "A")] = (60, ["192.0.2.5"])
    clock.now += 21
    assert resolver.resolve([FactoryAddress("nowhere.example.com")])[0].addresses == ("192.0.2.5",)


def test_fixed_and_literal_addresses_need_no_dns(dns_server: LoopbackDns) -> None:
    resolver = resolver_for(dns_server, Clock())
    peers = resolver.resolve([FactoryAddress("f1.example.com", "127.0.0.5"), FactoryAddress("2001:db8::7")])
    assert [peer.addresses for peer in peers] == [("127.0.0.5",), ("2001:db8::7",)]
    assert dns_server.queries == []


def test_resolution_stops_when_its_budget_is_spent(dns_server: LoopbackDns) -> None:
    dns_server.records[("f1.example.com", "A")] = (60, ["192.0.2.1"])
    resolver = PeerResolver(dns_lookup(dns_server.resolver()), budget_seconds=0.0)
    peer = resolver.resolve([FactoryAddress("f1.example.com")])[0]
    assert peer.addresses == () and "budget" in (peer.problem or "")


def test_reports_carry_every_field_the_scheduler_uses() -> None:
    census = Census(MessageType.MACHINETYPES_QUERY, SPACE, ["f2.example.com"], 0.0, deadline_seconds=1, salt="s")
    published = Snapshot((), (machinetype_status("f2.example.com", "lhcb", 1, running_hs06=42.0,
                                                 shutdown_message="300 Nothing to do", shutdown_time=990,
                                                 num_before_fizzle=2),),
                         snapshot("f2.example.com").factory)
    [(_, query)] = census.datagrams_to_send(0.0)
    for reply in respond(query, "127.0.0.1", encode_snapshot(published), 0.0, trusted_sources=frozenset(["127.0.0.1"])):
        census.receive(reply, "127.0.0.2", 0.001)
    assert reports_from(census.result) == [
        MachinetypeReport("f2.example.com", "lhcb", 42.0, 2, "300 Nothing to do", 990, "f2-00.example.com",
                          running_machines=2)]


def settings_for(port: int, factories: tuple[FactoryAddress, ...], timeout: float = 10.0) -> Settings:
    return Settings(vac_space=SPACE, factory_name="f1.example.com", total_processors=8, host_processors=8,
                    gocdb_sitename="example.com", factories=factories, vacquery_port=port,
                    udp_timeout_seconds=timeout)


def test_peer_census_asks_the_other_factories_over_udp_and_reports() -> None:
    responders = LoopbackResponders()
    try:
        trusted = frozenset(["127.0.0.1"])
        _, port = responders.start("f2.example.com", "127.0.0.2", 0, trusted_sources=trusted)
        responders.start("f3.example.com", "127.0.0.3", port, trusted_sources=trusted)
        own = responders.start("f1.example.com", "127.0.0.1", port, trusted_sources=trusted)[0]
        factories = (FactoryAddress("f1.example.com", "127.0.0.1"), FactoryAddress("f2.example.com", "127.0.0.2"),
                     FactoryAddress("f3.example.com", "127.0.0.3"), FactoryAddress("unknown.invalid"))
        peer_census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)))
        outcome = peer_census.run(settings_for(port, factories))
    finally:
        responders.close()
    assert own.counters["answered"] == 0  # a factory never asks itself
    assert outcome.result.complete == {"f2.example.com", "f3.example.com"}
    assert {(report.factory, report.machinetype) for report in outcome.reports} == {
        (factory, name) for factory in ("f2.example.com", "f3.example.com") for name in ("lhcb", "atlas", "cms")}
    assert outcome.unresolved == ("unknown.invalid",)
    assert outcome.trusted_hosts == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}


def test_peer_census_with_all_peers_silent_ends_at_its_deadline() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.2", 0))
    try:
        port = silent.getsockname()[1]
        peer_census = PeerCensus(PeerResolver())
        outcome = peer_census.run(settings_for(port, (FactoryAddress("f2.example.com", "127.0.0.2"),), timeout=1.0))
    finally:
        silent.close()
    assert outcome.reports == () and outcome.result.silent == ("f2.example.com",)
    # The census stops at its deadline (udp_timeout_seconds / 5), however long the peer stays silent.
    assert outcome.result.finished is not None
    assert outcome.result.finished - outcome.result.started == pytest.approx(0.2)


def test_census_deadline_is_one_vac_round() -> None:
    assert census_deadline_seconds(settings_for(995, ())) == 2.0


def test_lone_factory_asks_nobody_and_a_reload_that_adds_peers_is_followed() -> None:
    peer_census = PeerCensus(PeerResolver())
    assert peer_census.peer_reports(settings_for(995, ()), {}, 0) == ()
    assert peer_census.last_outcome is None  # no census ran, no socket was opened
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.2", 0))
    try:
        port = silent.getsockname()[1]
        reloaded = settings_for(port, (FactoryAddress("f2.example.com", "127.0.0.2"),), timeout=1.0)
        assert peer_census.peer_reports(reloaded, {}, 0) == ()
    finally:
        silent.close()
    assert peer_census.last_outcome is not None and peer_census.last_outcome.result.silent == ("f2.example.com",)


def test_peers_not_yet_measured_get_fast_retries_and_slow_or_silent_ones_vacs_six() -> None:
    # f2 was fast, f3 slow or silent last time, f4 has never been asked (a factory just started).
    chosen = fast_retry_peers({"f2.example.com"}, {"f2.example.com", "f3.example.com"},
                              ["F2.example.com", "f3.example.com", "f4.example.com"])
    assert chosen == {"f2.example.com", "f4.example.com"}


class FirstAnswersLost(InjectedLoss):
    """Drops the first `count` datagrams it is asked about, then none."""

    def __init__(self, count: int) -> None:
        super().__init__(0.0)
        self.remaining = count

    def drops(self) -> bool:
        if self.remaining > 0:
            self.remaining -= 1
            self.dropped += 1
            return True
        return False


def test_a_new_peer_whose_first_answers_were_lost_keeps_fast_retries_in_the_next_census() -> None:
    # Census 1: f2's answers to its first 3 queries (3 machinetypes each) are lost, so its
    # first reply comes ~95 ms after the first query: not proven fast, not proven slow.
    responders = LoopbackResponders()
    try:
        _, port = responders.start("f2.example.com", "127.0.0.2", 0, trusted_sources=frozenset(["127.0.0.1"]),
                                   loss=FirstAnswersLost(9))
        factories = (FactoryAddress("f2.example.com", "127.0.0.2"),)
        peer_census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)))
        first = peer_census.run(settings_for(port, factories, timeout=5.0)).result
    finally:
        responders.close()
    assert first.complete == {"f2.example.com"} and first.datagrams_sent >= 4
    assert "f2.example.com" not in first.answered_fast | first.answered_slow
    # Census 2: f2 falls silent. Had the first census forgotten that it gave f2 the fast
    # retransmissions, f2 would now get Vac's 6 queries (the 96 % census of issue 15 item 4).
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.2", 0))
    try:
        second = peer_census.run(settings_for(silent.getsockname()[1], factories, timeout=5.0)).result
    finally:
        silent.close()
    assert second.silent == ("f2.example.com",)
    assert second.datagrams_sent > VAC_ROUNDS
