"""While a real guest runs, the kernel filters what it sends to its slot's MAC and address (issue 15 item 1).

Two ways vacd filters a guest's tap, both read here in the kernel:

- A slot tap (vacd.backends.slottaps, what vacd uses): the slot's own persistent tap
  `vactNN`, pinned to the slot's MAC and address in vacd's nftables table
  (vacd.backends.slotfilter); the pin is there while the guest runs and stays when its
  domain ends, for the slot's next guest. What the table lets through is
  tests/vacd/test_slotfilter.py's, with real frames; a real guest trying is
  tests/integration/test_guest_spoofing_real_vm.py.
- `<filterref>` on the network (the fallback where vacd's table cannot be had): libvirt makes
  the tap and its clean-traffic rules in the ebtables nat table per domain; when the domain
  is gone, no chain names its tap.

Why read the kernel and not what vacd or libvirt says: a table flushed since (a restart of
the nftables service), or a libvirt binding made before its tap existed, is not in force
however it is listed. Any change to how the filter is attached must pass these tests.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from typing import Callable

import libvirt
import pytest

from tests.integration.conftest import VacNetwork
from tests.integration.ebtables_rules import chains_naming, clean_traffic_problems, read_nat_chains
from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from pyroute2 import IPRoute

from vacd.backends.slotfilter import TABLE, pins_in_table, read_table, run_nft
from vacd.backends.slottaps import SlotTap, SlotTaps, ensure_slot_tap

pytestmark = pytest.mark.vm

RULES_GONE_DEADLINE_SECONDS = 30.0


def live_interface(uri: str, machine_name: str) -> ElementTree.Element:
    connection = libvirt.open(uri)
    try:
        description = connection.lookupByName(machine_name).XMLDesc(0)
    finally:
        connection.close()
    interface = ElementTree.fromstring(description).find("devices/interface")
    assert interface is not None, f"{machine_name} has no interface in its live XML:\n{description}"
    return interface


def tap_of(uri: str, machine_name: str) -> str:
    target = live_interface(uri, machine_name).find("target")
    assert target is not None, f"{machine_name} has no tap in its live XML"
    return target.get("dev", "")


def slot_pin_in_force(spec: MachineSpec) -> bool:
    """Whether vacd's filter table, read now, pins the slot's tap to the slot's MAC and address."""
    return SlotTap(spec.ordinal, spec.mac_address, spec.ip_address).pin in pins_in_table(read_table() or [])


def test_filterref_guest_tap_passes_only_the_slot_mac_and_address_and_its_rules_go_with_it(
    libvirtd: str, filterref_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    spec = guest_spec(7)
    filterref_backend.create(spec)
    interface = live_interface(libvirtd, spec.name)
    assert interface.get("type") == "network" and interface.find("filterref") is not None
    tap = tap_of(libvirtd, spec.name)

    assert clean_traffic_problems(read_nat_chains(), tap, spec.mac_address, spec.ip_address) == []

    filterref_backend.destroy(spec.name, spec.uuid)
    deadline = time.monotonic() + RULES_GONE_DEADLINE_SECONDS
    while chains_naming(read_nat_chains(), tap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert chains_naming(read_nat_chains(), tap) == [], f"rules for {tap} outlived its domain"


def test_slot_tap_guest_runs_with_its_slot_pinned_and_the_pin_stays_for_the_slot_next_guest(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    for _ in range(2):
        spec = guest_spec(7)
        libvirt_backend.create(spec)
        interface = live_interface(libvirtd, spec.name)
        assert interface.get("type") == "ethernet", ElementTree.tostring(interface, encoding="unicode")
        assert interface.find("filterref") is None
        assert tap_of(libvirtd, spec.name) == "vact07"

        assert slot_pin_in_force(spec), "the guest runs without its slot's pin"

        libvirt_backend.destroy(spec.name, spec.uuid)
        # The tap and its pin are the slot's, not the domain's.
        assert slot_pin_in_force(spec)


def test_a_filter_table_removed_behind_vacds_back_is_back_before_the_slots_next_guest(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    first = guest_spec(9)
    libvirt_backend.create(first)
    libvirt_backend.destroy(first.name, first.uuid)
    # What `nft flush ruleset` (a restart of the nftables service) does to vacd's table.
    assert run_nft(("nft",), ["delete", "table", *TABLE.split()]).returncode == 0
    assert not slot_pin_in_force(first)

    second = guest_spec(9)
    libvirt_backend.create(second)
    assert tap_of(libvirtd, second.name) == "vact09"
    assert slot_pin_in_force(second), "a guest was created on its tap with no table in force"


def test_tending_removes_idle_taps_of_slots_gone_puts_the_rest_back_on_the_bridge_and_keeps_their_pins(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec],
    vac_network: VacNetwork
) -> None:
    gone, held, kept = guest_spec(12), guest_spec(13), guest_spec(3)
    libvirt_backend.create(gone)
    libvirt_backend.destroy(gone.name, gone.uuid)
    libvirt_backend.create(held)  # still running in a slot beyond the new count: its tap stays
    kept_tap = SlotTap(kept.ordinal, kept.mac_address, kept.ip_address)
    ensure_slot_tap(kept_tap, vac_network.bridge)
    with IPRoute() as host:
        host.link("set", index=host.link_lookup(ifname=kept_tap.name)[0], master=0)  # as a network restart leaves it
    run_nft(("nft",), ["delete", "table", *TABLE.split()])

    # A vacd started afresh: it tends what the host has, its table included.
    done = SlotTaps().tend(12, vac_network.bridge)

    assert "removed vact12" in done and f"vact03 back on {vac_network.bridge}" in done
    assert not any("vact13" in what for what in done)
    assert any(what.startswith("slot filter written") for what in done)
    assert slot_pin_in_force(held), "a guest still running beyond the slot count lost its pin"
    with IPRoute() as host:
        assert not host.link_lookup(ifname="vact12")
        (bridge_index,) = host.link_lookup(ifname=vac_network.bridge)
        assert host.get_links(host.link_lookup(ifname=kept_tap.name)[0])[0].get_attr("IFLA_MASTER") == bridge_index
