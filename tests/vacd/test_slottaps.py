"""A VM slot's own tap and its clean-traffic binding (vacd.backends.slottaps), without a hypervisor.

The pure parts (names, the binding's XML, what to repair, what to remove, reading the nat
table) are tested directly; the kernel's part is made for real with netlink on a bridge of
the test's own, with slot ordinals 9990 and up, which no factory here has, so nothing
touches the guest network or a real factory's taps. Binding for real, guests on the taps,
and tending (which acts on every slot tap of the host) are the real-VM tests' part, under
their lock (tests/integration/test_guest_filter_rules_real_vm.py).
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

import libvirt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import IPRoute

from vacd.backends.base import MachineSpec
from vacd.backends.cleantraffic import (
    NatTable,
    NatTableUnreadable,
    chains_naming,
    clean_traffic_problems,
    parse_nat_listing,
    read_nat_chains,
)
from vacd.backends.domainxml import domain_xml
from vacd.backends.libvirt import LibvirtBackend
from vacd.backends.slotnetwork import SlotNetwork, remove_container_links, set_up_slot_network
from vacd.backends.slottaps import (
    SlotTap,
    TapLink,
    binding_xml,
    bindings_supported,
    ensure_slot_tap,
    remove_slot_tap,
    tap_repairs,
    taps_to_remove,
)
from vacd.network import domain_is_on_network
from vacd.slots import MAX_SLOTS, ip_address_for, mac_address_for, ordinal_of_slot_tap, slot_tap_name

ORDINAL = 9990


def slot_tap(ordinal: int) -> SlotTap:
    address = ip_address_for(ordinal)
    return SlotTap(ordinal, mac_address_for(address), address)


# What libvirt 9.0 put in the ebtables nat table for a binding of vact9990 (read from a real one).
BOUND_LISTING = """Bridge table: nat

Bridge chain: PREROUTING, entries: 1, policy: ACCEPT
-i vact9990 -j libvirt-I-vact9990

Bridge chain: OUTPUT, entries: 0, policy: ACCEPT

Bridge chain: POSTROUTING, entries: 1, policy: ACCEPT
-o vact9990 -j libvirt-O-vact9990

Bridge chain: I-vact9990-arp-ip, entries: 2, policy: RETURN
-p ARP --arp-ip-src 169.254.208.240 -j RETURN
-j DROP

Bridge chain: I-vact9990-arp-mac, entries: 2, policy: RETURN
-p ARP --arp-mac-src 56:4d:a9:fe:d0:f0 -j RETURN
-j DROP

Bridge chain: I-vact9990-ipv4-ip, entries: 3, policy: RETURN
-p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN
-p IPv4 --ip-src 169.254.208.240 -j RETURN
-j DROP

Bridge chain: I-vact9990-mac, entries: 2, policy: RETURN
-s 56:4d:a9:fe:d0:f0 -j RETURN
-j DROP

Bridge chain: libvirt-I-vact9990, entries: 9, policy: RETURN
-j I-vact9990-mac
-p IPv4 -j I-vact9990-ipv4-ip
-p IPv4 -j ACCEPT
-p ARP -j I-vact9990-arp-mac
-p ARP -j I-vact9990-arp-ip
-p ARP -j ACCEPT
-p RARP -j I-vact9990-rarp
-p 0x835 -j ACCEPT
-j DROP

Bridge chain: libvirt-O-vact9990, entries: 4, policy: RETURN
-p IPv4 -j O-vact9990-ipv4
-p ARP -j ACCEPT
-p RARP -j O-vact9990-rarp
-j DROP
"""


# Names ------------------------------------------------------------------------------


def test_slot_taps_are_named_vact_and_the_ordinal_with_two_digits_at_least() -> None:
    assert slot_tap_name(3) == "vact03"
    assert slot_tap_name(9990) == "vact9990"
    assert len(slot_tap_name(MAX_SLOTS - 1)) <= 15
    for other in ("vact3", "vact003", "vacc03", "vactb1234abcd", "vnet3", "vact", "vact-1", "vact٣٣"):
        assert ordinal_of_slot_tap(other) is None, other


@given(st.integers(min_value=0, max_value=MAX_SLOTS - 1))
def test_a_slot_tap_name_gives_back_its_ordinal(ordinal: int) -> None:
    assert ordinal_of_slot_tap(slot_tap_name(ordinal)) == ordinal


@given(st.text(max_size=12))
def test_only_vacds_own_tap_names_read_as_slot_taps(name: str) -> None:
    ordinal = ordinal_of_slot_tap(name)
    assert ordinal is None or slot_tap_name(ordinal) == name


# The binding and the domain's interface -----------------------------------------------


def test_the_binding_pins_clean_traffic_to_the_slot_mac_and_address_on_its_tap() -> None:
    tap = slot_tap(7)
    binding = ElementTree.fromstring(binding_xml(tap))
    assert binding.find("portdev").get("name") == "vact07"  # type: ignore[union-attr]
    assert binding.find("mac").get("address") == "56:4d:a9:fe:a9:07"  # type: ignore[union-attr]
    filterref = binding.find("filterref")
    assert filterref is not None and filterref.get("filter") == "clean-traffic"
    assert {p.get("name"): p.get("value") for p in filterref.findall("parameter")} == {"IP": "169.254.169.7"}
    # The owner is the tap's, the same every time: virsh says whose binding it is.
    assert binding.findtext("owner/name") == "vac-slot-tap-vact07"
    assert binding.findtext("owner/uuid") == ElementTree.fromstring(binding_xml(tap)).findtext("owner/uuid")
    assert binding.findtext("owner/uuid") != ElementTree.fromstring(binding_xml(slot_tap(8))).findtext("owner/uuid")


def spec_for(ordinal: int, tmp_path: Path) -> MachineSpec:
    address = ip_address_for(ordinal)
    return MachineSpec(name=f"f1-{ordinal:02d}.example.com", uuid=str(uuid.uuid4()), ordinal=ordinal,
                       mac_address=mac_address_for(address), ip_address=address, vnc_port=5900 + ordinal,
                       processors=1, memory_mib=128, machine_dir=tmp_path,
                       root_kernel=Path("/boot/vmlinuz"), kernel_command_line="console=ttyS0")


def test_a_domain_on_its_slot_tap_has_an_unmanaged_ethernet_interface_and_no_filterref(tmp_path: Path) -> None:
    spec = spec_for(5, tmp_path)
    interfaces = ElementTree.fromstring(domain_xml(spec, domain_type="qemu", network_name="vac_169.254.0.0",
                                                   slot_tap="vact05")).findall("devices/interface")
    assert len(interfaces) == 1
    interface = interfaces[0]
    assert interface.get("type") == "ethernet"
    assert interface.find("target").attrib == {"dev": "vact05", "managed": "no"}  # type: ignore[union-attr]
    assert interface.find("mac").get("address") == spec.mac_address  # type: ignore[union-attr]
    assert interface.find("source") is None and interface.find("filterref") is None
    assert interface.find("model").get("type") == "virtio"  # type: ignore[union-attr]


def test_a_domain_on_a_slot_tap_counts_as_on_the_network_and_one_elsewhere_does_not(tmp_path: Path) -> None:
    spec = spec_for(5, tmp_path)
    on_tap = ElementTree.fromstring(domain_xml(spec, domain_type="qemu", network_name="vac_169.254.0.0",
                                               slot_tap="vact05"))
    assert domain_is_on_network(on_tap, "vac_169.254.0.0", "vacbr0")
    on_network = ElementTree.fromstring(domain_xml(spec, domain_type="qemu", network_name="vac_169.254.0.0"))
    assert domain_is_on_network(on_network, "vac_169.254.0.0", None)
    elsewhere = ElementTree.fromstring(
        "<domain><devices><interface type='ethernet'><target dev='tap0' managed='no'/></interface>"
        "<interface type='network'><source network='default'/></interface></devices></domain>")
    assert not domain_is_on_network(elsewhere, "vac_169.254.0.0", "vacbr0")


# Decisions -----------------------------------------------------------------------------


def link(**overrides: object) -> TapLink:
    tap = slot_tap(4)
    fields: dict[str, object] = dict(name=tap.name, index=40, kind="tun", mac=tap.tap_mac, master=7, up=True,
                                     carrier=False)
    fields.update(overrides)
    return TapLink(**fields)  # type: ignore[arg-type]


def test_a_tap_as_wanted_needs_nothing_and_each_difference_its_own_repair() -> None:
    tap = slot_tap(4)
    assert tap_repairs(link(), tap, 7) == []
    assert tap_repairs(None, tap, 7) == ["create", "address", "master", "up"]
    assert tap_repairs(link(mac="aa:bb:cc:dd:ee:ff"), tap, 7) == ["address"]
    assert tap_repairs(link(master=None), tap, 7) == ["master"]
    # A network restart made the bridge anew: another index.
    assert tap_repairs(link(master=7), tap, 9) == ["master"]
    assert tap_repairs(link(up=False), tap, 7) == ["up"]
    assert tap_repairs(link(kind="veth"), tap, 7) == ["replace", "create", "address", "master", "up"]


def test_only_taps_of_slots_gone_and_held_by_no_domain_are_removed() -> None:
    links = {
        "vact02": link(name="vact02"),
        "vact04": link(name="vact04"),
        "vact05": link(name="vact05", carrier=True),  # its guest still runs: kept until it ends
        "vact06": link(name="vact06"),
    }
    assert taps_to_remove(links, 4) == ["vact04", "vact06"]
    assert taps_to_remove(links, 0) == ["vact02", "vact04", "vact06"]
    assert taps_to_remove(links, 16) == []


# The nat table ---------------------------------------------------------------------------


def test_a_bound_taps_rules_read_from_the_nat_table_are_clean_traffic_for_its_slot() -> None:
    chains = parse_nat_listing(BOUND_LISTING)
    tap = slot_tap(ORDINAL)
    assert clean_traffic_problems(chains, tap.name, tap.mac_address, tap.ip_address) == []
    assert chains_naming(chains, "vact9991") == []


@pytest.mark.parametrize("edit", [
    ("-i vact9990 -j libvirt-I-vact9990\n", ""),  # the jump gone: nothing from the tap is checked
    ("-s 56:4d:a9:fe:d0:f0 -j RETURN", "-s 56:4d:a9:fe:d0:f1 -j RETURN"),  # another slot's MAC
    ("--ip-src 169.254.208.240 -j RETURN", "--ip-src 169.254.208.241 -j RETURN"),  # another address
    ("-p IPv4 -j I-vact9990-ipv4-ip\n", ""),  # no address check for IPv4
])
def test_rules_that_are_not_the_slots_clean_traffic_are_problems(edit: tuple[str, str]) -> None:
    listing = BOUND_LISTING.replace(*edit)
    assert listing != BOUND_LISTING
    tap = slot_tap(ORDINAL)
    assert clean_traffic_problems(parse_nat_listing(listing), tap.name, tap.mac_address, tap.ip_address) != []


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True),
                       st.lists(st.from_regex(r"-[a-z] [A-Za-z0-9:. -]{0,30}[A-Za-z0-9]", fullmatch=True),
                                max_size=5), max_size=6))
def test_a_nat_listing_reads_back_as_the_chains_it_lists(chains: dict[str, list[str]]) -> None:
    listing = "Bridge table: nat\n\n" + "".join(
        f"Bridge chain: {name}, entries: {len(rules)}, policy: ACCEPT\n" + "".join(f"{rule}\n" for rule in rules)
        + "\n" for name, rules in chains.items())
    assert parse_nat_listing(listing) == chains


def test_a_reading_serves_every_creation_that_asked_before_it_began_and_no_later_one() -> None:
    now = [100.0]
    readings: list[float] = []

    def read() -> dict[str, list[str]]:
        readings.append(now[0])
        now[0] += 0.01  # a reading takes time: later askers come after it began
        return parse_nat_listing(BOUND_LISTING)

    table = NatTable(read, clock=lambda: now[0])
    asked = [now[0] - 0.005 * waiting for waiting in range(32)]  # 32 creations waiting when it begins
    for moment in asked:
        table.chains_since(moment)
    assert readings == [100.0]
    # A creation that asks afterwards never gets rules read before it asked.
    table.chains_since(now[0])
    assert readings == [100.0, 100.01]


def fake_ebtables(directory: Path, failures: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `ebtables` first on PATH that fails `failures` times as nf_tables does under contention, then lists."""
    count = directory / "calls"
    (directory / "listing").write_text(BOUND_LISTING)
    script = directory / "ebtables"
    script.write_text(f"""#!/bin/sh
echo x >> {count}
if [ "$(wc -l < {count})" -le {failures} ]; then
    echo "ebtables v1.8.9 (nf_tables): RULE_LIST failed (Resource busy)" >&2
    exit 4
fi
cat {directory / "listing"}
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return count


@pytest.mark.allow_commands("ebtables")
def test_a_listing_that_fails_while_libvirt_changes_the_table_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ebtables(tmp_path, 2, monkeypatch)
    pauses: list[float] = []
    chains = read_nat_chains(sleep=pauses.append)
    tap = slot_tap(ORDINAL)
    assert clean_traffic_problems(chains, tap.name, tap.mac_address, tap.ip_address) == []
    assert len(calls.read_text().split()) == 3
    assert pauses == [0.05, 0.1]


@pytest.mark.allow_commands("ebtables")
def test_a_listing_that_keeps_failing_says_how_it_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ebtables(tmp_path, 99, monkeypatch)
    with pytest.raises(NatTableUnreadable, match=r"failed 5 times, last: exit status 4: .*Resource busy"):
        read_nat_chains(sleep=lambda seconds: None)


# Where bindings cannot be used --------------------------------------------------------


@pytest.mark.libvirt_test_driver
def test_the_test_driver_keeps_filterref_on_the_network(tmp_path: Path) -> None:
    connection = libvirt.open("test:///default")
    try:
        assert bindings_supported(connection, "test:///default") == "libvirt's test driver has no network filters"
    finally:
        connection.close()
    backend = LibvirtBackend("test:///default", domain_type="kvm", network_name="default", tmp_dir=tmp_path,
                             slot_taps=True)
    try:
        spec = spec_for(3, tmp_path)
        backend.create(spec)
        live = ElementTree.fromstring(backend._connect("look", spec.name).lookupByName(spec.name).XMLDesc(0))
    finally:
        backend.close()
    interface = live.find("devices/interface")
    assert interface is not None and interface.get("type") == "network"
    assert interface.find("filterref") is not None
    assert interface.find("source").get("network") == "default"  # type: ignore[union-attr]


# The kernel's part, on a bridge of the test's own ----------------------------------------


@pytest.fixture
def bridge() -> Iterator[str]:
    name = "vacstb" + uuid.uuid4().hex[:8]
    with IPRoute() as host:
        host.link("add", ifname=name, kind="bridge")
    try:
        yield name
    finally:
        for ordinal in range(ORDINAL, ORDINAL + 3):
            remove_slot_tap(slot_tap_name(ordinal))
            remove_container_links(SlotNetwork(ordinal, slot_tap(ordinal).mac_address, slot_tap(ordinal).ip_address))
        with IPRoute() as host:
            for index in host.link_lookup(ifname=name):
                host.link("del", index=index)


def tap_state(name: str) -> tuple[str, int, bool, str]:
    with IPRoute() as host:
        (message,) = host.get_links(host.link_lookup(ifname=name)[0])
        linkinfo = message.get_attr("IFLA_LINKINFO")
        return (message.get_attr("IFLA_ADDRESS"), message.get_attr("IFLA_MASTER"),
                bool(message["flags"] & 1), linkinfo.get_attr("IFLA_INFO_KIND"))


def bridge_index(bridge: str) -> int:
    with IPRoute() as host:
        return int(host.link_lookup(ifname=bridge)[0])


@pytest.mark.allow_commands("ldconfig")
def test_a_slot_tap_is_made_once_with_the_fe_mac_on_the_bridge_and_up_and_mended_when_changed(bridge: str) -> None:
    tap = slot_tap(ORDINAL)
    assert ensure_slot_tap(tap, bridge) == ["create", "address", "master", "up"]
    assert tap_state(tap.name) == ("fe:4d:a9:fe:d0:f0", bridge_index(bridge), True, "tun")
    assert ensure_slot_tap(tap, bridge) == []
    with IPRoute() as host:
        index = host.link_lookup(ifname=tap.name)[0]
        host.link("set", index=index, master=0)
        host.link("set", index=index, state="down")
    assert ensure_slot_tap(tap, bridge) == ["master", "up"]
    assert tap_state(tap.name) == ("fe:4d:a9:fe:d0:f0", bridge_index(bridge), True, "tun")


@pytest.mark.allow_commands("ldconfig")
def test_a_container_in_the_slot_removes_its_vm_tap_and_a_vm_removes_the_containers_veth(bridge: str) -> None:
    tap = slot_tap(ORDINAL)
    slot = SlotNetwork(ORDINAL, tap.mac_address, tap.ip_address)
    ensure_slot_tap(tap, bridge)
    set_up_slot_network(slot, bridge)
    with IPRoute() as host:
        assert not host.link_lookup(ifname=tap.name)
        assert host.link_lookup(ifname=slot.host_interface)
    remove_container_links(slot)
    ensure_slot_tap(tap, bridge)
    with IPRoute() as host:
        assert not host.link_lookup(ifname=slot.host_interface)
        # One port with the slot's fe: MAC on the bridge, the tap.
        ports = [message.get_attr("IFLA_IFNAME") for message in host.get_links()
                 if message.get_attr("IFLA_MASTER") == bridge_index(bridge)
                 and message.get_attr("IFLA_ADDRESS") == tap.tap_mac]
    assert ports == [tap.name]
