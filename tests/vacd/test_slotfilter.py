"""vacd's nftables table on the slot taps: what it lets through, and that it stays in force.

The table's rules are tried with real frames: each test builds, in network namespaces it
makes, what libvirt builds for guests on slot taps (a bridge with the gateway's address
and, per slot, a veth pair whose bridge end is named as the slot's tap and whose other end
has the slot's MAC and address), writes the table with the real `nft` in the host
namespace, and sends hand-made Ethernet frames from a guest's end with a raw socket. A
receiver on the bridge (or in a guest) reports which frames arrived. Everything runs inside
the namespaces and is removed afterwards.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vacd.backends.slotfilter import (
    TABLE,
    SlotFilter,
    SlotFilterError,
    TapPin,
    normalised_table,
    pin_for_ordinal,
    pins_in_table,
    read_table,
    ruleset_script,
)
from vacd.guestapi.linkidentity import tap_mac_for
from vacd.slots import MAX_SLOTS, ip_address_for, mac_address_for, slot_tap_name

BRIDGE = "vacbr0"
GATEWAY = "169.254.169.253"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
VICTIM, ATTACKER = 1, 2

# Pure ------------------------------------------------------------------------------------------


def test_the_script_replaces_the_table_whole_and_pins_each_tap_to_its_slot_mac_and_address() -> None:
    script = ruleset_script([pin_for_ordinal(3), pin_for_ordinal(0)])
    lines = script.splitlines()
    # Add (so the delete cannot fail), delete, define: one transaction, no moment without it.
    assert lines[:3] == [f"table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{"]
    assert f'"vact00" . {mac_address_for(ip_address_for(0)).lower()}' in script
    assert f'"vact03" . {ip_address_for(3)}' in script
    assert script.index('"vact00"') < script.index('"vact03"')


def test_a_pin_for_a_tap_not_named_as_a_slot_tap_is_refused() -> None:
    with pytest.raises(ValueError, match="vnet0"):
        ruleset_script([TapPin("vnet0", "56:4d:a9:fe:a9:00", "169.254.169.0")])
    with pytest.raises(ValueError, match="not a slot tap"):
        ruleset_script([TapPin('vact00" accept', "56:4d:a9:fe:a9:00", "169.254.169.0")])


@pytest.mark.parametrize("pin", [
    TapPin("vact00", "56:4d:a9:fe:a9:00 }; accept", "169.254.169.0"),
    TapPin("vact00", "56:4d:a9:fe:a9", "169.254.169.0"),
    TapPin("vact00", "56:4d:a9:fe:a9:00", "169.254.169.0 . accept"),
    TapPin("vact00", "56:4d:a9:fe:a9:00", "169.254.169.000"),
])
def test_a_pin_that_is_not_a_mac_and_an_address_never_reaches_nft(pin: TapPin) -> None:
    with pytest.raises(ValueError):
        ruleset_script([pin])


def listing(elements: Sequence[tuple[str, str]], handle: int, packets: int) -> dict[str, Any]:
    return {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "bridge", "name": "vac_slot_taps", "handle": handle}},
        {"set": {"family": "bridge", "name": "slot_macs", "table": "vac_slot_taps", "type": ["ifname", "ether_addr"],
                 "handle": handle + 1, "elem": [{"concat": [tap, mac]} for tap, mac in elements]}},
        {"rule": {"family": "bridge", "table": "vac_slot_taps", "chain": "from_slot_taps", "handle": handle + 2,
                  "expr": [{"counter": {"packets": packets, "bytes": 60 * packets}}, {"drop": None}]}},
    ]}


@given(st.permutations([(slot_tap_name(n), mac_address_for(ip_address_for(n)).lower()) for n in range(6)]),
       st.integers(1, 1000), st.integers(0, 10**9))
def test_readings_of_an_unchanged_table_are_equal_whatever_its_handles_counters_and_element_order(
        elements: list[tuple[str, str]], handle: int, packets: int) -> None:
    assert normalised_table(listing(elements, handle, packets)) == normalised_table(listing(sorted(elements), 7, 0))


def test_a_changed_rule_or_pin_makes_a_different_reading() -> None:
    base = normalised_table(listing([("vact00", "56:4d:a9:fe:a9:00")], 1, 0))
    moved = normalised_table(listing([("vact00", "56:4d:a9:fe:a9:01")], 1, 0))
    edited = listing([("vact00", "56:4d:a9:fe:a9:00")], 1, 0)
    edited["nftables"][3]["rule"]["expr"][1] = {"accept": None}
    assert base != moved and base != normalised_table(edited)


def test_what_is_not_an_nft_listing_is_refused() -> None:
    with pytest.raises(ValueError, match="not an nft JSON listing"):
        normalised_table({"tables": []})


# With the real nft, in a namespace ----------------------------------------------------------------


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


@pytest.fixture
def host_namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    namespace = f"vactest-f{uuid.uuid4().hex[:6]}"
    ip("netns", "add", namespace)
    try:
        yield namespace
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


def nft_in(namespace: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", namespace, "nft")


def nft(namespace: str, *arguments: str) -> None:
    subprocess.run([*nft_in(namespace), *arguments], check=True, capture_output=True, timeout=30)


@pytest.mark.allow_commands("ip")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, MAX_SLOTS - 1), max_size=40))
def test_any_slots_written_read_back_from_the_kernel_as_exactly_their_pins(
        host_namespace: str, ordinals: set[int]) -> None:
    pins = {pin_for_ordinal(ordinal) for ordinal in ordinals}
    subprocess.run([*nft_in(host_namespace), "-f", "-"], input=ruleset_script(pins), text=True, check=True,
                   capture_output=True, timeout=30)
    assert pins_in_table(read_table(nft_in(host_namespace)) or []) == pins


@pytest.mark.allow_commands("ip")
def test_a_creation_writes_the_table_once_and_the_next_only_reads_it(host_namespace: str) -> None:
    slot_filter = SlotFilter(lambda: [0, 1], nft_command=nft_in(host_namespace))
    assert slot_filter.check() is None
    slot_filter.ensure(pin_for_ordinal(5))
    assert (slot_filter.writes, slot_filter.readings) == (1, 2)  # no table; written; read back
    slot_filter.ensure(pin_for_ordinal(5))
    assert (slot_filter.writes, slot_filter.readings) == (1, 3)
    table = read_table(nft_in(host_namespace))
    assert table is not None
    # The taps the host has (a vacd restarted while their guests run) and the one asked for.
    assert pins_in_table(table) == {pin_for_ordinal(0), pin_for_ordinal(1), pin_for_ordinal(5)}


@pytest.mark.allow_commands("ip")
def test_a_flushed_ruleset_is_written_again_by_the_next_creation_and_by_tending(host_namespace: str) -> None:
    slot_filter = SlotFilter(lambda: [0], nft_command=nft_in(host_namespace))
    slot_filter.ensure(pin_for_ordinal(0))
    assert slot_filter.tend() == []
    nft(host_namespace, "flush", "ruleset")  # what a restart of the nftables service does
    assert slot_filter.tend() == ["slot filter written for 1 taps"]
    nft(host_namespace, "flush", "ruleset")
    slot_filter.ensure(pin_for_ordinal(0))
    assert slot_filter.writes == 3
    assert pins_in_table(read_table(nft_in(host_namespace)) or []) == {pin_for_ordinal(0)}


@pytest.mark.allow_commands("ip")
def test_a_table_edited_by_someone_else_is_replaced_not_trusted(host_namespace: str) -> None:
    slot_filter = SlotFilter(lambda: [0], nft_command=nft_in(host_namespace))
    slot_filter.ensure(pin_for_ordinal(0))
    # An admin's "quick fix" that would let every slot send as any other.
    nft(host_namespace, "insert", "rule", "bridge", "vac_slot_taps", "from_slot_taps", "accept")
    slot_filter.ensure(pin_for_ordinal(0))
    assert slot_filter.writes == 2
    listed = subprocess.run([*nft_in(host_namespace), "list", "chain", "bridge", "vac_slot_taps", "from_slot_taps"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
    assert listed.split("policy accept;")[1].split()[:3] == ["iifname", "!=", '"vact*"']


@pytest.mark.allow_commands("ip")
def test_a_table_from_an_earlier_vacd_is_written_anew_before_it_is_trusted(host_namespace: str) -> None:
    SlotFilter(lambda: [0, 1], nft_command=nft_in(host_namespace)).ensure(pin_for_ordinal(0))
    restarted = SlotFilter(lambda: [0, 1], nft_command=nft_in(host_namespace))
    restarted.ensure(pin_for_ordinal(1))
    assert restarted.writes == 1


@pytest.mark.allow_commands("ip")
def test_creations_started_together_share_readings_and_writes(host_namespace: str) -> None:
    slot_filter = SlotFilter(lambda: [], nft_command=nft_in(host_namespace))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(slot_filter.ensure, [pin_for_ordinal(n) for n in range(32)]))
    assert pins_in_table(read_table(nft_in(host_namespace)) or []) == {pin_for_ordinal(n) for n in range(32)}
    assert slot_filter.writes < 32 and slot_filter.readings < 64


@pytest.mark.allow_commands("ip")
def test_nft_that_fails_says_how_and_a_missing_one_is_a_reason_not_to_use_slot_taps() -> None:
    broken = SlotFilter(lambda: [], nft_command=("ip", "netns", "exec", f"vactest-none{uuid.uuid4().hex[:6]}", "nft"))
    with pytest.raises(SlotFilterError, match="failed 3 times, last: exit status"):
        broken.ensure(pin_for_ordinal(0))
    missing = SlotFilter(lambda: [], nft_command=("vac-no-such-nft",))
    assert "no vac-no-such-nft command" in (missing.check() or "")


# Real frames through the table -------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ipv4_udp(source: str, destination: str, source_port: int, destination_port: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(source).packed, ipaddress.IPv4Address(destination).packed)
    words = struct.unpack("!10H", header)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:] + udp


def ethernet(source_mac: str, ethertype: int, body: bytes, destination_mac: str = BROADCAST_MAC) -> bytes:
    return mac_bytes(destination_mac) + mac_bytes(source_mac) + struct.pack("!H", ethertype) + body


def arp(operation: int, sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, operation, mac_bytes(sender_mac),
                       ipaddress.IPv4Address(sender_ip).packed, bytes(6), ipaddress.IPv4Address(target_ip).packed)


def marker(name: str) -> bytes:
    return b"VACMARK:" + name.encode() + b";"


# Receives until the frame marked "end" or the deadline (seconds), then prints what arrived, by marker
# (an ARP frame is named by its target address: arp-<last octet> of 169.254.200.0/24).
RECEIVER = r"""
import ipaddress, re, select, socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
deadline, seen = time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < deadline:
    if not select.select([s], [], [], 0.2)[0]:
        continue
    frame, address = s.recvfrom(65535)
    if address[2] == socket.PACKET_OUTGOING:
        continue
    found = re.search(rb"VACMARK:([a-z0-9-]+);", frame)
    if found:
        seen.append(found.group(1).decode())
    elif frame[12:14] == b"\x08\x06" and frame[38:41] == bytes([169, 254, 200]):
        seen.append(f"arp-{frame[41]}")
    if seen and seen[-1] == "end":
        break
print(" ".join(seen), flush=True)
"""

SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
    time.sleep(0.002)
"""


@dataclass
class Site:
    host: str
    guests: dict[int, str]  # ordinal -> namespace; its end is eth0

    def send_and_receive(self, sender: str, sender_interface: str, receiver: str, receiver_interface: str,
                         frames: Sequence[bytes], wait_seconds: float = 15.0) -> list[str]:
        """What of `frames`, sent in order from `sender`, arrives at `receiver` (by marker) by
        the frame marked "end" or within `wait_seconds`."""
        receiving = subprocess.Popen(["ip", "netns", "exec", receiver, sys.executable, "-c", RECEIVER,
                                      receiver_interface, str(wait_seconds)], stdout=subprocess.PIPE, text=True)
        try:
            assert receiving.stdout is not None
            assert receiving.stdout.readline().strip() == "ready"
            subprocess.run(["ip", "netns", "exec", sender, sys.executable, "-c", SENDER, sender_interface],
                           input="".join(frame.hex() + "\n" for frame in frames), text=True, check=True,
                           capture_output=True, timeout=30)
            output, _ = receiving.communicate(timeout=30)
        finally:
            if receiving.poll() is None:
                receiving.kill()
                receiving.wait()
        return output.split()


def slot_mac(ordinal: int) -> str:
    return mac_address_for(ip_address_for(ordinal)).lower()


@pytest.fixture
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    host = f"vactest-fh{tag}"
    guests = {VICTIM: f"vactest-f1{tag}", ATTACKER: f"vactest-f2{tag}", 3: f"vactest-f3{tag}"}
    made: list[str] = []
    try:
        for namespace in (host, *guests.values()):
            ip("netns", "add", namespace)
            made.append(namespace)
            # No IPv6 autoconfiguration frames of the guests' own: the table's drop counters
            # then count only the test's frames.
            ip("netns", "exec", namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        h = ["-n", host]
        ip(*h, "link", "add", BRIDGE, "type", "bridge")
        ip(*h, "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
        ip(*h, "link", "set", BRIDGE, "up")
        for ordinal, namespace in guests.items():
            # Slot 3's port is not named as a slot tap: a Vac 03 guest's vnetN, say.
            port = slot_tap_name(ordinal) if ordinal != 3 else "vnet3"
            ip(*h, "link", "add", port, "address", tap_mac_for(slot_mac(ordinal)), "type", "veth",
               "peer", "name", "eth0", "address", slot_mac(ordinal), "netns", namespace)
            ip(*h, "link", "set", port, "master", BRIDGE, "up")
            ip("-n", namespace, "addr", "add", f"{ip_address_for(ordinal)}/16", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
        slot_filter = SlotFilter(lambda: [VICTIM, ATTACKER], nft_command=nft_in(host))
        slot_filter.ensure(pin_for_ordinal(VICTIM))
        yield Site(host, guests)
    finally:
        for namespace in reversed(made):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


def udp_from(mac: str, source: str, name: str, source_port: int = 4000, destination: str = "169.254.255.255",
             destination_port: int = 9) -> bytes:
    return ethernet(mac, 0x0800, ipv4_udp(source, destination, source_port, destination_port, marker(name)))


@pytest.mark.allow_commands("ip")
def test_a_slot_guest_sends_only_as_itself_and_dhcp_while_it_has_no_lease(site: Site) -> None:
    own_mac, own_ip = slot_mac(ATTACKER), ip_address_for(ATTACKER)
    victim_mac, victim_ip = slot_mac(VICTIM), ip_address_for(VICTIM)
    frames = [
        udp_from(own_mac, own_ip, "own-address"),
        udp_from(own_mac, "0.0.0.0", "dhcp-discover", 68, "255.255.255.255", 67),
        ethernet(own_mac, 0x0806, arp(1, own_mac, own_ip, "169.254.200.1")),
        ethernet(own_mac, 0x0806, arp(2, own_mac, own_ip, "169.254.200.2")),
        # Not as itself:
        udp_from(own_mac, victim_ip, "victim-address"),
        udp_from(victim_mac, victim_ip, "victim-mac-and-address"),
        udp_from(victim_mac, own_ip, "victim-mac"),
        udp_from(own_mac, "0.0.0.0", "unconfigured-not-dhcp", 5000, "255.255.255.255", 9),
        ethernet(own_mac, 0x0806, arp(2, own_mac, victim_ip, "169.254.200.10")),
        ethernet(own_mac, 0x0806, arp(2, victim_mac, own_ip, "169.254.200.11")),
        ethernet(own_mac, 0x0806, arp(3, own_mac, own_ip, "169.254.200.12")),
        ethernet(own_mac, 0x86DD, bytes(40) + marker("ipv6")),
        ethernet(own_mac, 0x8100, struct.pack("!HH", 5, 0x0800) + ipv4_udp(own_ip, "169.254.255.255", 1, 9,
                                                                              marker("vlan-tagged"))),
        ethernet(own_mac, 0x8035, arp(3, own_mac, "0.0.0.0", "0.0.0.0") + marker("rarp")),
        udp_from(own_mac, own_ip, "end"),
    ]
    arrived = site.send_and_receive(site.guests[ATTACKER], "eth0", site.host, BRIDGE, frames)
    assert arrived == ["own-address", "dhcp-discover", "arp-1", "arp-2", "end"]
    # An admin sees the ten refused frames counted (`nft list table bridge vac_slot_taps`).
    assert dropped_frames(site.host) == 10


def dropped_frames(namespace: str) -> int:
    listed = subprocess.run([*nft_in(namespace), "-j", "list", "chain", "bridge", "vac_slot_taps", "from_slot_taps"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
    return sum(expression["counter"]["packets"] for item in json.loads(listed)["nftables"] if "rule" in item
               for expression in item["rule"]["expr"] if "counter" in expression)


@pytest.mark.allow_commands("ip")
def test_a_guest_gets_only_ipv4_and_arp_through_its_slot_tap(site: Site) -> None:
    bridge_mac = tap_mac_for(slot_mac(0))  # any source: frames to the guest are not pinned
    frames = [
        ethernet(bridge_mac, 0x86DD, bytes(40) + marker("ipv6")),
        ethernet(bridge_mac, 0x88B5, marker("other-ethertype")),
        udp_from(bridge_mac, GATEWAY, "ipv4"),
        ethernet(bridge_mac, 0x0806, arp(1, bridge_mac, GATEWAY, "169.254.200.3")),
        udp_from(bridge_mac, GATEWAY, "end"),
    ]
    arrived = site.send_and_receive(site.host, BRIDGE, site.guests[VICTIM], "eth0", frames)
    assert arrived == ["ipv4", "arp-3", "end"]


@pytest.mark.allow_commands("ip")
def test_ports_not_named_as_slot_taps_are_left_to_their_own_filters(site: Site) -> None:
    frames = [udp_from(slot_mac(3), ip_address_for(VICTIM), "not-a-slot-tap"), udp_from(slot_mac(3), "0.0.0.0", "end")]
    assert site.send_and_receive(site.guests[3], "eth0", site.host, BRIDGE, frames) == ["not-a-slot-tap", "end"]


@pytest.mark.allow_commands("ip")
def test_a_slot_tap_with_no_pin_in_the_table_sends_nothing(site: Site) -> None:
    # Written pinning only the victim's tap: the attacker's tap is a slot tap with no pin.
    subprocess.run([*nft_in(site.host), "-f", "-"], input=ruleset_script([pin_for_ordinal(VICTIM)]), text=True,
                   check=True, capture_output=True, timeout=30)
    attacker = [udp_from(slot_mac(ATTACKER), ip_address_for(ATTACKER), name) for name in ("own-address", "end")]
    # Nothing to wait for if the table holds: "end" is dropped too, so the receiver's 2 s run out.
    assert site.send_and_receive(site.guests[ATTACKER], "eth0", site.host, BRIDGE, attacker, wait_seconds=2) == []
    victim = [udp_from(slot_mac(VICTIM), ip_address_for(VICTIM), "end")]
    assert site.send_and_receive(site.guests[VICTIM], "eth0", site.host, BRIDGE, victim) == ["end"]
