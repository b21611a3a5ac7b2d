"""While a real guest runs, libvirt's clean-traffic rules for its tap are in the kernel (issue 15 item 1).

Two ways vacd attaches the filter, both read here in the kernel: the ebtables nat table
must send every frame from the guest's tap through libvirt's chains for that tap, which
return only frames whose source MAC is the slot's MAC and whose IPv4 and ARP source is the
slot's address, and drop the rest.

- A slot tap (vacd.backends.slottaps, what vacd uses): the slot's own persistent tap
  `vactNN`, bound to clean-traffic once; the rules are there while the guest runs and stay
  when its domain ends, for the slot's next guest.
- `<filterref>` on the network (the fallback where libvirt has no bindings): libvirt makes
  the tap and the rules per domain; when the domain is gone, no chain names its tap.

Why read the kernel and not libvirt: a binding made through virNWFilterBindingCreateXML
before its tap exists is listed by libvirt but puts no rule in force (libvirt 9.0 skips
instantiating a filter whose port device is missing; docs/benchmarks.md, "Fill: N real
guests, by phase"). Any change to how the filter is attached must pass these tests.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ElementTree
from typing import Callable

import libvirt
import pytest

from tests.integration.conftest import VacNetwork
from tests.integration.ebtables_rules import chains_naming, clean_traffic_problems, nat_chains
from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from pyroute2 import IPRoute

from vacd.backends.slottaps import SlotTap, SlotTaps, ensure_slot_tap, remove_slot_tap

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


def slot_rules_problems(spec: MachineSpec) -> list[str]:
    return clean_traffic_problems(nat_chains(), SlotTap(spec.ordinal, spec.mac_address, spec.ip_address).name,
                                  spec.mac_address, spec.ip_address)


def test_filterref_guest_tap_passes_only_the_slot_mac_and_address_and_its_rules_go_with_it(
    libvirtd: str, filterref_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    spec = guest_spec(7)
    filterref_backend.create(spec)
    interface = live_interface(libvirtd, spec.name)
    assert interface.get("type") == "network" and interface.find("filterref") is not None
    tap = tap_of(libvirtd, spec.name)

    assert clean_traffic_problems(nat_chains(), tap, spec.mac_address, spec.ip_address) == []

    filterref_backend.destroy(spec.name, spec.uuid)
    deadline = time.monotonic() + RULES_GONE_DEADLINE_SECONDS
    while chains_naming(nat_chains(), tap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert chains_naming(nat_chains(), tap) == [], f"rules for {tap} outlived its domain"


def test_slot_tap_guest_runs_with_the_slot_rules_and_they_stay_for_the_slot_next_guest(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    for _ in range(2):
        spec = guest_spec(7)
        libvirt_backend.create(spec)
        interface = live_interface(libvirtd, spec.name)
        assert interface.get("type") == "ethernet", ElementTree.tostring(interface, encoding="unicode")
        assert interface.find("filterref") is None
        assert tap_of(libvirtd, spec.name) == "vact07"

        assert slot_rules_problems(spec) == [], "the guest runs without its slot's rules"

        libvirt_backend.destroy(spec.name, spec.uuid)
        # The tap and its rules are the slot's, not the domain's.
        assert slot_rules_problems(spec) == []


def test_slot_tap_deleted_and_made_again_under_its_binding_has_its_rules_back_before_the_next_guest(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec],
    vac_network: VacNetwork
) -> None:
    first = guest_spec(9)
    libvirt_backend.create(first)
    libvirt_backend.destroy(first.name, first.uuid)
    tap = SlotTap(first.ordinal, first.mac_address, first.ip_address)
    assert remove_slot_tap(tap.name)
    ensure_slot_tap(tap, vac_network.bridge)
    # What a libvirtd restart while the tap was missing leaves: the binding listed, its
    # rules not in the kernel (libvirt instantiates none for a missing port device).
    subprocess.run(["ebtables", "-t", "nat", "-D", "PREROUTING", "-i", tap.name, "-j", f"libvirt-I-{tap.name}"],
                   check=True)
    connection = libvirt.open(libvirtd)
    try:
        assert connection.nwfilterBindingLookupByPortDev(tap.name).portDev() == tap.name
    finally:
        connection.close()
    assert slot_rules_problems(first) != []

    second = guest_spec(9)
    libvirt_backend.create(second)
    assert tap_of(libvirtd, second.name) == tap.name
    assert slot_rules_problems(second) == [], "a binding libvirt listed was trusted without its rules"


def test_tending_removes_idle_taps_of_slots_gone_with_their_bindings_and_puts_the_rest_back_on_the_bridge(
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

    connection = libvirt.open(libvirtd)
    try:
        done = SlotTaps().tend(connection, 12, vac_network.bridge)
        bound = {binding.portDev() for binding in connection.listAllNWFilterBindings(0)}
    finally:
        connection.close()

    assert "removed vact12" in done and "unbound vact12" in done and f"vact03 back on {vac_network.bridge}" in done
    assert not any("vact13" in what for what in done)
    assert "vact12" not in bound and "vact13" in bound
    assert slot_rules_problems(held) == []
    with IPRoute() as host:
        assert not host.link_lookup(ifname="vact12")
        (bridge_index,) = host.link_lookup(ifname=vac_network.bridge)
        assert host.get_links(host.link_lookup(ifname=kept_tap.name)[0])[0].get_attr("IFLA_MASTER") == bridge_index
