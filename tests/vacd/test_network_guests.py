"""A network with guests on it is never replaced (issue 10 item 2), on libvirt's test driver.

The test driver keeps networks and domains in the connection's memory: a domain created
with an interface on `vac_169.254.0.0` is a guest on it as far as vacd can tell. Whether
dnsmasq and the guest really keep going is the real-libvirt test's part
(tests/integration/test_network_vac03_live.py).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from vacd.network import (
    NETWORK_NAME,
    NetworkRefused,
    ensure_libvirt_network,
    guests_on_network,
    network_differences,
    network_xml,
)
from vacd.slots import slot_identity

FACTORY = "f1.example.com"
pytestmark = pytest.mark.libvirt_test_driver


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A private libvirt test driver (its state is this connection's alone)."""
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    libvirt.registerErrorHandler(lambda context, error: None, None)
    opened = libvirt.open(f"test://{node}")
    try:
        yield opened
    finally:
        opened.close()


def vac03_network_xml(factory_name: str, wanted_by_vacd: str) -> str:
    """Vac 03's network (§1.9): 100 hosts named by FQDN, no no-ping, no fixed bridge name."""
    network = ElementTree.fromstring(wanted_by_vacd)
    network.remove(network.find("bridge"))  # type: ignore[arg-type]
    dhcp = network.find("ip/dhcp")
    assert dhcp is not None
    for host in list(dhcp):
        dhcp.remove(host)
    for ordinal in range(100):
        identity = slot_identity(factory_name, ordinal)
        ElementTree.SubElement(dhcp, "host", mac=identity.mac_address, name=identity.machine_name,
                               ip=identity.ip_address)
    return ElementTree.tostring(network, encoding="unicode")


def start_guest(connection: libvirt.virConnect, ordinal: int) -> libvirt.virDomain:
    identity = slot_identity(FACTORY, ordinal)
    return connection.createXML(
        f"<domain type='test'><name>{identity.machine_name}</name><memory>65536</memory>"
        f"<os><type>hvm</type></os><devices><interface type='network'>"
        f"<mac address='{identity.mac_address}'/><source network='{NETWORK_NAME}'/></interface>"
        f"</devices></domain>", 0)


def running_network(connection: libvirt.virConnect, xml: str) -> libvirt.virNetwork:
    network = connection.networkDefineXML(xml)
    network.create()
    return network


def test_the_guests_on_the_network_are_the_running_domains_attached_to_it(connection: libvirt.virConnect) -> None:
    running_network(connection, network_xml(FACTORY, 4, dnsmasq_options=()))
    start_guest(connection, 2)
    start_guest(connection, 0)
    # The driver's own domain "test" has no interface on the vac network.
    assert guests_on_network(connection, NETWORK_NAME, None) == ["f1-00.example.com", "f1-02.example.com"]


def test_vac03s_network_with_a_guest_is_updated_live_and_kept(connection: libvirt.virConnect,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # Vac 03's network lacks no-ping; here (no dnsmasq in the test driver) a DHCP range stands in
    # for a difference that only a new definition can make.
    wanted = network_xml(FACTORY, 8, dnsmasq_options=())
    old_xml = vac03_network_xml(FACTORY, wanted).replace(
        "<dhcp>", "<dhcp><range start='169.254.200.1' end='169.254.200.9'/>")
    old = running_network(connection, old_xml)
    start_guest(connection, 3)
    with caplog.at_level(logging.WARNING, logger="vacd.network"):
        result = ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=8, dnsmasq_options=())
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() == old.UUIDString() and network.isActive()
    assert result.kept_differences == ("a DHCP range (vacd wants static hosts only)",)
    # The 8 slots' entries now carry vacd's short names; Vac 03's other 92 are left.
    hosts = {host.get("ip"): host.get("name") for host in ElementTree.fromstring(network.XMLDesc(0)).iter("host")}
    assert len(hosts) == 100
    assert hosts["169.254.169.7"] == "f1-07" and hosts["169.254.169.8"] == "f1-08.example.com"
    assert network_differences(network.XMLDesc(0), wanted) == ["a DHCP range (vacd wants static hosts only)"]
    assert (f"network {NETWORK_NAME} differs from what vacd wants (a DHCP range (vacd wants static hosts only)); "
            "1 running guest is on it (f1-03.example.com); not replacing it while they run; vacd continues "
            "with the existing network") in caplog.text


def test_the_kept_network_is_replaced_at_a_start_once_no_guest_is_on_it(connection: libvirt.virConnect) -> None:
    wanted = network_xml(FACTORY, 4, dnsmasq_options=())
    old = running_network(connection, wanted.replace("<dhcp>", "<dhcp><range start='169.254.200.1' "
                                                               "end='169.254.200.9'/>"))
    guest = start_guest(connection, 1)
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    assert connection.networkLookupByName(NETWORK_NAME).UUIDString() == old.UUIDString()
    guest.destroy()
    # A pass does not replace it (a creation may be under way); the next start does.
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=(), may_replace=False)
    assert connection.networkLookupByName(NETWORK_NAME).UUIDString() == old.UUIDString()
    result = ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() != old.UUIDString() and network.isActive()
    assert result.kept_differences == ()
    assert network_differences(network.XMLDesc(0), wanted) == []


def test_a_network_that_cannot_serve_the_slots_with_guests_on_it_is_refused_untouched(
        connection: libvirt.virConnect) -> None:
    wanted = network_xml(FACTORY, 4, dnsmasq_options=())
    # Another subnet, and entries the slots need missing: nothing may be changed, hosts included.
    old_xml = network_xml(FACTORY, 2, dnsmasq_options=()).replace("169.254.169.253", "10.99.0.1")
    old = running_network(connection, old_xml)
    before = old.XMLDesc(0)
    start_guest(connection, 0)
    with pytest.raises(NetworkRefused) as refused:
        ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    message = str(refused.value)
    assert "bridge address 10.99.0.1/16, wanted 169.254.169.253/16" in message
    assert "1 running guest is on it (f1-00.example.com)" in message
    assert "it cannot give the slots their addresses" in message and "virsh destroy" in message
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() == old.UUIDString() and network.XMLDesc(0) == before
    assert network_differences(network.XMLDesc(0), wanted) != []


def test_a_network_that_cannot_serve_the_slots_is_replaced_in_a_pass_when_no_guest_is_on_it(
        connection: libvirt.virConnect) -> None:
    old = running_network(connection, network_xml(FACTORY, 4, dnsmasq_options=()).replace("169.254.169.253",
                                                                                            "10.99.0.1"))
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=(), may_replace=False)
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() != old.UUIDString()
    assert network_differences(network.XMLDesc(0), network_xml(FACTORY, 4, dnsmasq_options=())) == []
