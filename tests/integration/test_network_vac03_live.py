"""Vac 03's network with a real guest on it: vacd updates it live and never cuts the guest off.

Issue 10 item 2, on qemu:///system. Vac 03 left `vac_169.254.0.0` with 100 DHCP hosts named
by FQDN, no dnsmasq `no-ping` and a bridge libvirt named. vacd wants short names, its own
slot count and no-ping: the hosts are edited live (dnsmasq re-reads them, same pid), the
no-ping difference is kept while a guest is on the network, and the guest goes on talking
to the factory's addresses. A taken responder port stops vacd before it changes anything.

The two networks cannot be up together (one subnet), so for each test the shared test
network (tests/integration/conftest.py) is put aside while no guest is on it, Vac 03's is
made in its place, and the shared one is put back afterwards with 169.254.169.254 on its
bridge, whatever the test did.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import libvirt
import pytest

from tests.integration.conftest import REPOSITORY, TEST_FACTORY_NAME, VacNetwork
from tests.integration.test_guest_boots import GuestServers, console_tail
from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from vacd.network import NETWORK_NAME, ensure_guest_network, ensure_interface_address, guests_on_network
from vacd.paths import Paths
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS, slot_identity

pytestmark = pytest.mark.vm

VAC03_HOSTS = 100  # ordinals 0-99, §1.9
SLOTS_WANTED = 102  # two more than Vac 03 defined, so vacd has hosts to add as well as to rename
GUEST_ORDINAL = 14
DNSMASQ_RUN_DIR = Path("/run/libvirt/network")
DNSMASQ_STATE_DIR = Path("/var/lib/libvirt/dnsmasq")
BOOT_DEADLINE_SECONDS = 120.0
# Waiting for another session's guests to leave the shared network before it is put aside.
NETWORK_FREE_DEADLINE_SECONDS = 300.0

# The guest says it is alive every second for 5 minutes (it is destroyed at teardown).
TICKING_USER_DATA = """#!/bin/sh
n=0
while [ $n -lt 300 ]; do
    http-put http://169.254.169.253/joboutputs/tick "$n"
    n=$((n+1))
    sleep 1
done
"""


def vac03_network_xml(factory_name: str) -> str:
    """`vac_169.254.0.0` as Vac 03 defined it (§1.9)."""
    network = ElementTree.Element("network")
    ElementTree.SubElement(network, "name").text = NETWORK_NAME
    ElementTree.SubElement(network, "forward", mode="nat")
    address = ElementTree.SubElement(network, "ip", address=GATEWAY_ADDRESS, netmask="255.255.0.0")
    dhcp = ElementTree.SubElement(address, "dhcp")
    for ordinal in range(VAC03_HOSTS):
        identity = slot_identity(factory_name, ordinal)
        ElementTree.SubElement(dhcp, "host", mac=identity.mac_address, name=identity.machine_name,
                               ip=identity.ip_address)
    return ElementTree.tostring(network, encoding="unicode")


@dataclass(frozen=True)
class Vac03Network:
    uuid: str
    bridge: str
    dnsmasq_pid: str


def dnsmasq_pid() -> str:
    return (DNSMASQ_RUN_DIR / f"{NETWORK_NAME}.pid").read_text().strip()


def hosts_by_ordinal(connection: libvirt.virConnect) -> dict[int, str]:
    """Each DHCP host's name by the slot ordinal its address belongs to (live definition)."""
    description = ElementTree.fromstring(connection.networkLookupByName(NETWORK_NAME).XMLDesc(0))
    return {int(str(host.get("ip")).rsplit(".", 1)[1]): str(host.get("name")) for host in description.iter("host")}


def wait_until_no_guest_is_on_the_network(connection: libvirt.virConnect) -> None:
    deadline = time.monotonic() + NETWORK_FREE_DEADLINE_SECONDS
    while True:
        network = connection.networkLookupByName(NETWORK_NAME)
        guests = guests_on_network(connection, NETWORK_NAME, network.bridgeName() if network.isActive() else None)
        if not guests:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the shared network cannot be put aside: guests of another test run are on it ({guests})",
                        pytrace=False)
        time.sleep(2)


@pytest.fixture
def vac03_network(libvirtd: str, vac_network: VacNetwork) -> Iterator[Vac03Network]:
    """Vac 03's network in place of the shared one, with 169.254.169.254 on its bridge as Vac 03 had it."""
    connection = libvirt.open(libvirtd)
    try:
        wait_until_no_guest_is_on_the_network(connection)
        shared = connection.networkLookupByName(NETWORK_NAME)
        shared_xml = shared.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        shared.destroy()
        shared.undefine()
        try:
            network = connection.networkDefineXML(vac03_network_xml(TEST_FACTORY_NAME))
            network.create()
            # Vac 03 put the metadata address on dummy0; this kernel has none, the bridge will do.
            ensure_interface_address(network.bridgeName(), f"{METADATA_ADDRESS}/32")
            yield Vac03Network(network.UUIDString(), network.bridgeName(), dnsmasq_pid())
        finally:
            _put_the_shared_network_back(connection, shared_xml)
    finally:
        connection.close()


def _put_the_shared_network_back(connection: libvirt.virConnect, shared_xml: str) -> None:
    try:
        network: Optional[libvirt.virNetwork] = connection.networkLookupByName(NETWORK_NAME)
    except libvirt.libvirtError:
        network = None
    if network is not None:
        if network.isActive():
            network.destroy()
        if network.isPersistent():
            network.undefine()
    shared = connection.networkDefineXML(shared_xml)
    shared.create()
    shared.setAutostart(1)
    ensure_interface_address(shared.bridgeName(), f"{METADATA_ADDRESS}/32")


def ticks_after(servers: GuestServers, since: float, deadline: float) -> list[str]:
    """Sources of the guest's tick PUTs that arrived after `since`, waiting until one does."""
    with servers.arrived:
        while True:
            sources = [request.client_address for request in servers.requests
                       if request.path == "/joboutputs/tick" and request.monotonic_time > since]
            remaining = deadline - time.monotonic()
            if sources or remaining <= 0:
                return sources
            servers.arrived.wait(remaining)


def test_vac03s_network_is_updated_live_under_a_running_guest_and_not_replaced(
    vac03_network: Vac03Network,
    libvirtd: str,
    libvirt_backend: LibvirtBackend,
    guest_spec: Callable[..., MachineSpec],
    tmp_path: Path,
) -> None:
    spec = guest_spec(GUEST_ORDINAL)
    servers = GuestServers(TICKING_USER_DATA)
    servers.start()
    try:
        libvirt_backend.create(spec)
        booted = ticks_after(servers, 0.0, time.monotonic() + BOOT_DEADLINE_SECONDS)
        assert booted, f"guest never came up; console:\n{console_tail(spec)}"

        updated_at = time.monotonic()
        result = ensure_guest_network(libvirtd, Paths(tmp_path), factory_name=TEST_FACTORY_NAME,
                                      num_slots=SLOTS_WANTED)

        # Not replaced: the same network, bridge and dnsmasq; the no-ping difference is kept.
        connection = libvirt.open(libvirtd)
        try:
            network = connection.networkLookupByName(NETWORK_NAME)
            assert network.UUIDString() == vac03_network.uuid and network.isActive()
            assert network.bridgeName() == vac03_network.bridge == result.bridge
            assert result.kept_differences == ("dnsmasq option no-ping missing",)
            hosts = hosts_by_ordinal(connection)
            domain_state = connection.lookupByName(spec.name).state()[0]
        finally:
            connection.close()
        assert dnsmasq_pid() == vac03_network.dnsmasq_pid
        assert domain_state == libvirt.VIR_DOMAIN_RUNNING
        # Every slot's entry has vacd's short name: Vac 03's 100 renamed live, 100 and 101 added.
        short_name = TEST_FACTORY_NAME.partition(".")[0]
        assert hosts == {ordinal: f"{short_name}-{ordinal:02d}" for ordinal in range(SLOTS_WANTED)}
        # dnsmasq was told: its hosts file has the new entries.
        hostsfile = (DNSMASQ_STATE_DIR / f"{NETWORK_NAME}.hostsfile").read_text().lower()
        assert f"{slot_identity(TEST_FACTORY_NAME, 101).mac_address.lower()},169.254.169.101,{short_name}-101" \
            in hostsfile
        # And the guest is still on the air from its own address.
        after = ticks_after(servers, updated_at + 1.0, time.monotonic() + 30.0)
        assert after and set(after) == {spec.ip_address}, f"guest cut off; console:\n{console_tail(spec)}"
    finally:
        servers.stop()


@pytest.mark.allow_commands(sys.executable)
def test_a_taken_responder_port_stops_vacd_before_vac03s_network_is_touched(
    vac03_network: Vac03Network, libvirtd: str, tmp_path: Path,
) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    metadata_port = _free_tcp_port()
    config = tmp_path / "etc" / "vac.conf"
    config.parent.mkdir(parents=True)
    config.write_text(f"""[settings]
vac_space = vac01.example.com
factory_name = {TEST_FACTORY_NAME}
host_processors = 2
libvirt_uri = {libvirtd}
vacquery_bind_address = 127.0.0.1
vacquery_port = {port}
metadata_port = {metadata_port}
""")
    connection = libvirt.open(libvirtd)
    try:
        before = connection.networkLookupByName(NETWORK_NAME).XMLDesc(0)
        try:
            result = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr"],
                                    capture_output=True, text=True, cwd=REPOSITORY, timeout=120)
        finally:
            holder.close()
        after = connection.networkLookupByName(NETWORK_NAME).XMLDesc(0)
    finally:
        connection.close()
    assert result.returncode == 1, result.stderr
    assert f"cannot listen for VacQuery on 127.0.0.1 port {port} (UDP): in use by pid" in result.stderr
    # vacd would have renamed 100 hosts and replaced the network (no guest is on it): it did neither.
    assert after == before
    assert dnsmasq_pid() == vac03_network.dnsmasq_pid
    assert not (tmp_path / "etc" / "hosts").exists()


def _free_tcp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()
