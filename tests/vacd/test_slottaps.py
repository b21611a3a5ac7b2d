"""A VM slot's own tap (vacd.backends.slottaps), without a hypervisor.

The pure parts (names, what to repair, what to remove) are tested directly; the kernel's
part is made for real with netlink on a bridge of the test's own, with slot ordinals 9990
and up, which no factory here has, so nothing touches the guest network or a real
factory's taps. The filter table is tests/vacd/test_slotfilter.py's; guests on the taps,
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
from vacd.backends.domainxml import domain_xml
from vacd.backends.libvirt import LibvirtBackend
from vacd.backends.slotnetwork import SlotNetwork, remove_container_links, set_up_slot_network
from vacd.backends.slotfilter import SlotFilter
from vacd.backends.slottaps import (
    SlotTap,
    TapLink,
    slot_taps_refusal,
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


# The domain's interface -----------------------------------------------


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


# Where slot taps cannot be used --------------------------------------------------------


@pytest.mark.libvirt_test_driver
def test_the_test_driver_keeps_filterref_on_the_network(tmp_path: Path) -> None:
    assert slot_taps_refusal("test:///default", SlotFilter(lambda: [])) == (
        "libvirt's test driver has no network to put slot taps on")
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
