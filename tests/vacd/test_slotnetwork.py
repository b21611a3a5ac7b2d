"""A container slot's namespace and veth (vacd.backends.slotnetwork), made for real with netlink.

The test makes its own bridge and uses slot 97, which no test factory has (they have 16
slots), so nothing here touches the guest network or a real factory's slots.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from pyroute2 import IPRoute, NetNS

from vacd.backends.slotnetwork import SlotNetwork, set_up_slot_network, slot_network_exists, tear_down_slot_network
from vacd.slots import ip_address_for, mac_address_for

# pyroute2 runs `ldconfig -p` to find libc for setns(); nothing else runs a command here.
pytestmark = pytest.mark.allow_commands("ldconfig")

ORDINAL = 97
SLOT = SlotNetwork(ORDINAL, mac_address_for(ip_address_for(ORDINAL)), ip_address_for(ORDINAL))


@pytest.fixture
def bridge() -> Iterator[str]:
    name = "vactb" + uuid.uuid4().hex[:8]
    with IPRoute() as host:
        host.link("add", ifname=name, kind="bridge")
    try:
        yield name
    finally:
        tear_down_slot_network(SLOT)
        with IPRoute() as host:
            for index in host.link_lookup(ifname=name):
                host.link("del", index=index)


def test_the_slot_has_its_mac_and_address_inside_and_a_tap_mac_on_the_bridge(bridge: str) -> None:
    set_up_slot_network(SLOT, bridge)
    with IPRoute() as host:
        (bridge_index,) = host.link_lookup(ifname=bridge)
        (host_end,) = host.get_links(host.link_lookup(ifname=SLOT.host_interface)[0])
        # The MAC libvirt gives a VM's tap, which the guest API's link check looks for.
        assert host_end.get_attr("IFLA_ADDRESS") == "fe" + SLOT.mac_address.lower()[2:]
        assert host_end.get_attr("IFLA_MASTER") == bridge_index
        assert not host.link_lookup(ifname=SLOT.peer_interface)
    with NetNS(SLOT.namespace) as inside:
        (index,) = inside.link_lookup(ifname="eth0")
        (link,) = inside.get_links(index)
        assert link.get_attr("IFLA_ADDRESS") == SLOT.mac_address.lower()
        addresses = [(address.get_attr("IFA_ADDRESS"), address["prefixlen"])
                     for address in inside.get_addr(index=index, family=2)]
        assert addresses == [(SLOT.ip_address, 16)]
        gateways = [route.get_attr("RTA_GATEWAY") for route in inside.get_routes(family=2)
                    if route.get_attr("RTA_GATEWAY")]
        assert gateways == ["169.254.169.253"]


def test_setting_up_again_replaces_what_an_earlier_machine_left(bridge: str) -> None:
    set_up_slot_network(SLOT, bridge)
    set_up_slot_network(SLOT, bridge)
    assert slot_network_exists(SLOT)


def test_tearing_down_removes_namespace_and_both_ends_and_gone_is_success(bridge: str) -> None:
    set_up_slot_network(SLOT, bridge)
    tear_down_slot_network(SLOT)
    tear_down_slot_network(SLOT)
    assert not slot_network_exists(SLOT)
    with IPRoute() as host:
        assert not host.link_lookup(ifname=SLOT.host_interface)


def test_a_missing_bridge_fails_and_leaves_nothing_behind() -> None:
    with pytest.raises(FileNotFoundError, match="guest bridge vacnosuchbr does not exist"):
        set_up_slot_network(SLOT, "vacnosuchbr")
    assert not slot_network_exists(SLOT)
