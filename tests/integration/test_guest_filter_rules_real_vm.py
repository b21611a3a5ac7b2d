"""While a real guest runs, libvirt's clean-traffic rules for its tap are in the kernel (issue 15 item 1).

vacd's domain XML asks for the filter (`<filterref filter='clean-traffic'>` with the slot's
IP, vacd.backends.domainxml); this test reads what is actually in force: the ebtables nat
table must send every frame from the guest's tap through libvirt's chains for that tap,
which return only frames whose source MAC is the slot's MAC and whose IPv4 and ARP source
is the slot's address, and drop the rest. When the domain is gone, no chain names its tap,
so the next guest given that tap name starts from libvirt's rules for it alone.

A binding made through virNWFilterBindingCreateXML before its tap exists is listed by
libvirt but puts no rule in force (libvirt 9.0 skips instantiation when the port device is
missing): docs/benchmarks.md, "Fill: N real guests, by phase". This test is the check any
change to how the filter is attached must pass.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ElementTree
from typing import Callable

import libvirt
import pytest

from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend

pytestmark = pytest.mark.vm

RULES_GONE_DEADLINE_SECONDS = 30.0


def ebtables_nat_chains() -> dict[str, list[str]]:
    """`ebtables -t nat -L` as {chain name: its rules, in order}."""
    listing = subprocess.run(["ebtables", "-t", "nat", "-L"], check=True, capture_output=True, text=True,
                             timeout=30).stdout
    chains: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("Bridge chain: "):
            current = line[len("Bridge chain: "):].split(",", 1)[0]
            chains[current] = []
        elif current is not None and line.strip():
            chains[current].append(line.strip())
    return chains


def chains_naming(chains: dict[str, list[str]], tap: str) -> list[str]:
    return [name for name, rules in chains.items() if tap in name or any(tap in rule for rule in rules)]


def tap_of(uri: str, machine_name: str) -> str:
    connection = libvirt.open(uri)
    try:
        description = connection.lookupByName(machine_name).XMLDesc(0)
    finally:
        connection.close()
    target = ElementTree.fromstring(description).find("devices/interface/target")
    assert target is not None, f"{machine_name} has no tap in its live XML:\n{description}"
    return target.get("dev", "")


def test_running_guest_tap_passes_only_the_slot_mac_and_address(
    libvirtd: str, libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    spec = guest_spec(7)
    libvirt_backend.create(spec)
    tap = tap_of(libvirtd, spec.name)
    chains = ebtables_nat_chains()
    mac = spec.mac_address.lower()

    assert f"-i {tap} -j libvirt-I-{tap}" in chains["PREROUTING"], chains["PREROUTING"]
    assert f"-o {tap} -j libvirt-O-{tap}" in chains["POSTROUTING"], chains["POSTROUTING"]
    incoming = chains[f"libvirt-I-{tap}"]
    # Every frame first passes the MAC check; IPv4 and ARP then pass their address checks;
    # anything not listed is dropped.
    assert incoming[0] == f"-j I-{tap}-mac", incoming
    assert f"-p IPv4 -j I-{tap}-ipv4-ip" in incoming and f"-p ARP -j I-{tap}-arp-ip" in incoming, incoming
    assert incoming[-1] == "-j DROP", incoming
    assert chains[f"I-{tap}-mac"] == [f"-s {mac} -j RETURN", "-j DROP"]
    assert chains[f"I-{tap}-arp-mac"] == [f"-p ARP --arp-mac-src {mac} -j RETURN", "-j DROP"]
    assert chains[f"I-{tap}-arp-ip"] == [f"-p ARP --arp-ip-src {spec.ip_address} -j RETURN", "-j DROP"]
    ipv4 = chains[f"I-{tap}-ipv4-ip"]
    # The one exception is DHCP's unconfigured source, so the guest can ask for its lease.
    assert ipv4 == ["-p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN",
                    f"-p IPv4 --ip-src {spec.ip_address} -j RETURN", "-j DROP"], ipv4

    libvirt_backend.destroy(spec.name, spec.uuid)
    deadline = time.monotonic() + RULES_GONE_DEADLINE_SECONDS
    while chains_naming(ebtables_nat_chains(), tap) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert chains_naming(ebtables_nat_chains(), tap) == [], f"rules for {tap} outlived its domain"
