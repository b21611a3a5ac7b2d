"""The link-layer check of a guest's source address, on a real bridge in namespaces the test makes.

Each test builds what libvirt builds for two guests: a bridge with the gateway address, and
for each slot a veth pair whose bridge end is a "tap" (the guest's MAC with first octet 0xFE)
and whose other end, in the guest's own namespace, has the slot's MAC and address. Traffic
from a guest fills the bridge's neighbour table and forwarding database as a real guest's
does. Everything runs inside the namespaces and is removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from vacd.guestapi.linkidentity import CACHE_SECONDS, REFRESH_AHEAD_SECONDS, LinkIdentity, tap_mac_for
from vacd.slots import ip_address_for, mac_address_for

pytestmark = pytest.mark.allow_commands("ip", "ldconfig")
BRIDGE = "vacbr0"
GATEWAY = "169.254.169.253"
CONNECT_TO_GATEWAY = f"import socket; s = socket.socket(); s.settimeout(3); s.connect_ex(({GATEWAY!r}, 9))"


@dataclass
class Site:
    host: str
    guests: dict[int, str]  # ordinal -> namespace

    def run(self, namespace: str, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", namespace, *command], check=True, capture_output=True, timeout=30)

    def guest_talks(self, ordinal: int) -> None:
        """The guest opens a TCP connection to the gateway, as a guest fetching metadata does.

        Nothing listens on the port: the host's reset still needs the guest's MAC, so the
        neighbour table and the forwarding database fill in as for a real request.
        """
        self.run(self.guests[ordinal], sys.executable, "-c", CONNECT_TO_GATEWAY)

    def guest_takes_address_of(self, thief: int, victim: int) -> None:
        """The thief's guest moves to the victim's address with its own MAC, the victim gone
        quiet (not up to object), and talks from it."""
        self.run(self.guests[victim], "ip", "link", "set", "eth0", "down")
        self.run(self.guests[thief], "ip", "addr", "flush", "dev", "eth0")
        self.run(self.guests[thief], "ip", "addr", "add", f"{ip_address_for(victim)}/16", "dev", "eth0")
        self.guest_talks(thief)


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


@pytest.fixture
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    host = f"vactest-h{tag}"
    guests = {1: f"vactest-g1{tag}", 2: f"vactest-g2{tag}"}
    made: list[str] = []
    try:
        for namespace in (host, *guests.values()):
            ip("netns", "add", namespace)
            made.append(namespace)
        h = ["-n", host]
        ip(*h, "link", "add", BRIDGE, "type", "bridge")
        ip(*h, "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
        ip(*h, "link", "set", BRIDGE, "up")
        for ordinal, namespace in guests.items():
            mac = mac_address_for(ip_address_for(ordinal))
            tap = f"vnet{ordinal}"
            ip(*h, "link", "add", tap, "address", tap_mac_for(mac), "type", "veth",
               "peer", "name", "eth0", "address", mac, "netns", namespace)
            ip(*h, "link", "set", tap, "master", BRIDGE, "up")
            g = ["-n", namespace]
            ip(*g, "addr", "add", f"{ip_address_for(ordinal)}/16", "dev", "eth0")
            ip(*g, "link", "set", "eth0", "up")
        yield Site(host, guests)
    finally:
        for namespace in reversed(made):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


@pytest.fixture
def identity(site: Site) -> Iterator[LinkIdentity]:
    checker = LinkIdentity(BRIDGE, netns=site.host, clock=lambda: 0.0)
    try:
        yield checker
    finally:
        checker.close()


def slot_mac(ordinal: int) -> str:
    return mac_address_for(ip_address_for(ordinal))


def fresh_answer(checker: LinkIdentity, source: str, mac: str) -> bool:
    """The same check without its cache, as after CACHE_SECONDS."""
    uncached = LinkIdentity(checker.bridge, netns=checker.netns)
    try:
        return uncached.confirms(source, mac)
    finally:
        uncached.close()


def test_guest_on_its_own_address_and_tap_is_its_slot(site: Site, identity: LinkIdentity) -> None:
    site.guest_talks(1)
    site.guest_talks(2)
    assert identity.confirms(ip_address_for(1), slot_mac(1))
    assert identity.confirms(ip_address_for(2), slot_mac(2))


def test_guest_that_takes_a_neighbours_address_is_not_that_slot(site: Site, identity: LinkIdentity) -> None:
    site.guest_takes_address_of(2, 1)
    assert not identity.confirms(ip_address_for(1), slot_mac(1))
    assert identity.refusals == 1


def test_guest_that_takes_a_neighbours_address_and_mac_is_caught_by_its_tap(
        site: Site, identity: LinkIdentity) -> None:
    site.run(site.guests[1], "ip", "link", "set", "eth0", "down")
    guest = site.guests[2]
    site.run(guest, "ip", "link", "set", "eth0", "down")
    site.run(guest, "ip", "link", "set", "eth0", "address", slot_mac(1))
    site.run(guest, "ip", "link", "set", "eth0", "up")
    site.run(guest, "ip", "addr", "flush", "dev", "eth0")
    site.run(guest, "ip", "addr", "add", f"{ip_address_for(1)}/16", "dev", "eth0")
    site.guest_talks(2)
    # The neighbour entry says slot 1's MAC, but the bridge learnt that MAC on slot 2's tap.
    assert not identity.confirms(ip_address_for(1), slot_mac(1))


def test_address_the_bridge_has_never_heard_from_is_refused(site: Site, identity: LinkIdentity) -> None:
    assert not identity.confirms(ip_address_for(7), slot_mac(7))
    assert not identity.confirms("not-an-address", slot_mac(1))


def test_answers_are_cached_so_a_flood_costs_one_lookup(site: Site, identity: LinkIdentity) -> None:
    site.guest_talks(1)
    assert identity.confirms(ip_address_for(1), slot_mac(1))
    # The guest leaves the bridge; within CACHE_SECONDS the cached answer stands, then it goes.
    site.run(site.host, "ip", "link", "set", "vnet1", "nomaster")
    assert identity.confirms(ip_address_for(1), slot_mac(1))
    assert not fresh_answer(identity, ip_address_for(1), slot_mac(1))


def test_check_works_when_called_from_a_running_event_loop(site: Site, identity: LinkIdentity) -> None:
    """The guest API calls it from its asyncio loop, where pyroute2's own calls refuse to run."""
    site.guest_talks(1)

    async def from_the_loop() -> bool:
        return identity.confirms(ip_address_for(1), slot_mac(1))

    assert asyncio.run(from_the_loop())
    assert identity.refusals == 0


def test_closed_check_refuses_and_closes_twice_quietly(site: Site, identity: LinkIdentity) -> None:
    site.guest_talks(1)
    identity.close()
    identity.close()
    assert not identity.confirms(ip_address_for(1), slot_mac(1))


def test_missing_bridge_is_refused_not_raised(site: Site) -> None:
    checker = LinkIdentity("vacnothere0", netns=site.host)
    try:
        site.guest_talks(1)
        assert not checker.confirms(ip_address_for(1), slot_mac(1))
    finally:
        checker.close()


class SteppedClock:
    """The checker's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def stepped_identity(site: Site, clock: SteppedClock) -> Iterator[LinkIdentity]:
    checker = LinkIdentity(BRIDGE, netns=site.host, clock=clock)
    try:
        yield checker
    finally:
        checker.close()


def test_every_source_is_answered_from_one_reading_of_the_tables(site: Site, stepped_identity: LinkIdentity) -> None:
    site.guest_talks(1)
    site.guest_talks(2)
    for _ in range(50):
        assert stepped_identity.confirms(ip_address_for(1), slot_mac(1))
        assert stepped_identity.confirms_slot(ip_address_for(2), 2)
    assert stepped_identity.readings == 1


def test_a_guest_newer_than_the_reading_is_confirmed_by_a_new_reading(
        site: Site, stepped_identity: LinkIdentity, clock: SteppedClock) -> None:
    site.guest_talks(1)
    assert stepped_identity.confirms(ip_address_for(1), slot_mac(1))
    site.guest_talks(2)  # its first frames: not in the reading just taken
    clock.now += 0.1
    assert stepped_identity.confirms(ip_address_for(2), slot_mac(2))
    assert stepped_identity.readings == 2
    assert stepped_identity.refusals == 0


def test_a_neighbour_entry_that_moves_to_another_mac_is_refused_once_the_reading_expires(
        site: Site, stepped_identity: LinkIdentity, clock: SteppedClock) -> None:
    site.guest_talks(1)
    assert stepped_identity.confirms(ip_address_for(1), slot_mac(1))
    site.guest_takes_address_of(2, 1)  # the neighbour entry moves to slot 2's MAC
    clock.now += CACHE_SECONDS
    assert not stepped_identity.confirms(ip_address_for(1), slot_mac(1))
    assert stepped_identity.refusals == 1


def test_a_busy_checker_renews_its_reading_ahead_and_then_sees_the_move(
        site: Site, stepped_identity: LinkIdentity, clock: SteppedClock) -> None:
    site.guest_talks(1)
    assert stepped_identity.confirms(ip_address_for(1), slot_mac(1))
    site.guest_takes_address_of(2, 1)
    # Past REFRESH_AHEAD_SECONDS, within CACHE_SECONDS: answered from the reading it has (the
    # guarantee: tables at most CACHE_SECONDS old), while a new reading is taken off the caller's time.
    clock.now += REFRESH_AHEAD_SECONDS + 0.1
    assert stepped_identity.confirms(ip_address_for(1), slot_mac(1))
    stepped_identity.wait_for_refresh()
    assert stepped_identity.readings == 2
    assert not stepped_identity.confirms(ip_address_for(1), slot_mac(1))


def test_a_refused_source_costs_one_reading_per_interval_however_often_it_asks(
        site: Site, stepped_identity: LinkIdentity, clock: SteppedClock) -> None:
    site.guest_talks(1)
    for _ in range(100):
        assert not stepped_identity.confirms(ip_address_for(1), slot_mac(2))
    assert stepped_identity.readings == 1
    assert stepped_identity.refusals == 1
    clock.now += CACHE_SECONDS
    assert not stepped_identity.confirms(ip_address_for(1), slot_mac(2))
    assert stepped_identity.readings == 2
