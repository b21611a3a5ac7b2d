"""While a real guest runs, libvirt's clean-traffic rules for its tap are in the kernel (issue 15 item 1).

vacd's domain XML asks for the filter (`<filterref filter='clean-traffic'>` with the slot's
IP, vacd.backends.domainxml); this test reads what is actually in force: the ebtables nat
table must send every frame from the guest's tap through libvirt's chains for that tap,
which return only frames whose source MAC is the slot's MAC and whose IPv4 and ARP source
is the slot's address, and drop the rest. When the domain is gone, no chain names its tap,
so the next guest given that tap name starts from libvirt's rules for it alone.

Why read the kernel and not libvirt: a binding made through virNWFilterBindingCreateXML
before its tap exists is listed by libvirt but puts no rule in force (libvirt 9.0 skips
instantiating a filter whose port device is missing; docs/benchmarks.md, "Fill: N real
guests, by phase"). Any change to how the filter is attached must pass this test.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ElementTree
from typing import Callable

import libvirt
import pytest

from tests.integration.ebtables_rules import chains_naming, clean_traffic_problems, nat_chains
from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend

pytestmark = pytest.mark.vm

RULES_GONE_DEADLINE_SECONDS = 30.0


def tap_of(uri: str, machine_name: str) -> str:
    connection = libvirt.open(uri)
    try:
        description = connection.lookupByName(machine_name).XMLDesc(0)
    finally:
        connection.close()
    target = ElementTree.fromstring(description).find("devices/interface/target")
    assert target is not None, f"{machine_name} has no tap in its live XML:\n{description}"
    return target.get("dev", "")


def test_running_guest_tap_passes_only_the_slot_mac_and_address_and_its_rules_go_with_it(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    spec = guest_spec(7)
    libvirt_backend.create(spec)
    tap = tap_of(libvirtd, spec.name)

    assert clean_traffic_problems(nat_chains(), tap, spec.mac_address, spec.ip_address) == []

    libvirt_backend.destroy(spec.name, spec.uuid)
    deadline = time.monotonic() + RULES_GONE_DEADLINE_SECONDS
    while chains_naming(nat_chains(), tap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert chains_naming(nat_chains(), tap) == [], f"rules for {tap} outlived its domain"
