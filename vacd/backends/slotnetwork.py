"""A container slot's network: its own namespace, a veth on the guest bridge, the slot's addresses.

A container machine talks to the guest API exactly as a VM of the same slot would, so the
guest API needs nothing new to tell containers apart (issue 13): the namespace's end of the
veth has the slot's MAC and IP address (vacd.slots), its default route is the factory's
address 169.254.169.253, and the host's end joins the guest bridge with the slot's MAC
with first octet 0xFE, the MAC libvirt gives a VM's tap. The source-address identity of
vacd.guestapi.machines and the link-layer check of vacd.guestapi.linkidentity (neighbour
entry = slot MAC, FDB port MAC = fe:... of it) then hold for containers unchanged.

Rules:
- One namespace per slot, `/run/netns/vac-slot-NN`, given to podman as `--network ns:PATH`.
  The container runs without CAP_NET_ADMIN (podman's default capabilities), so it cannot
  change its address or MAC: it can only speak as its own slot.
- Names are fixed by the slot, so setting up is idempotent: anything left of an earlier
  machine in this slot (a crash between steps), and the slot's VM tap if a VM had it
  (vacd.backends.slottaps), is removed first; removing what is gone is success.
  Removing the namespace removes its veth end, and the kernel removes the pair.
- Netlink through pyroute2, no `ip` commands (the EL9 pyroute2 0.7.3 and 0.9 APIs used here
  are the same). Calls run on the creating thread, never inside an asyncio loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vacd.errors import BackendError
from vacd.guestapi.linkidentity import tap_mac_for
from vacd.slots import GATEWAY_ADDRESS, ip_address_for, mac_address_for, slot_tap_name

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
# The guest network is 169.254.0.0/16 (§1.9); every slot address is on it.
GUEST_PREFIX_LENGTH = 16
CONTAINER_INTERFACE = "eth0"
_ENODEV = 19


@dataclass(frozen=True)
class SlotNetwork:
    """The names of one slot's namespace and interfaces."""

    ordinal: int
    mac_address: str
    ip_address: str

    @property
    def namespace(self) -> str:
        return f"vac-slot-{self.ordinal:02d}"

    @property
    def namespace_path(self) -> Path:
        return NETNS_DIR / self.namespace

    @property
    def host_interface(self) -> str:
        # IFNAMSIZ is 16 with the NUL: "vacc" + up to 4 digits fits any slot count vacd allows.
        return f"vacc{self.ordinal:02d}"

    @property
    def peer_interface(self) -> str:
        """The namespace end's name while it is still on the host, before it becomes eth0."""
        return f"vacp{self.ordinal:02d}"

    @property
    def vm_tap(self) -> str:
        """The tap a VM in this slot uses (vacd.backends.slottaps): removed while a container has the slot."""
        return slot_tap_name(self.ordinal)


def _pyroute2() -> Any:
    import pyroute2  # type: ignore[import-untyped,unused-ignore]

    return pyroute2


def set_up_slot_network(slot: SlotNetwork, bridge: str) -> None:
    """Make the slot's namespace and veth, the host end on `bridge`; raise OSError-derived errors."""
    pyroute2 = _pyroute2()
    tear_down_slot_network(slot)
    pyroute2.netns.create(slot.namespace)
    try:
        with pyroute2.IPRoute() as host:
            bridges = host.link_lookup(ifname=bridge)
            if not bridges:
                raise FileNotFoundError(f"guest bridge {bridge} does not exist (is the libvirt network up?)")
            host.link("add", ifname=slot.host_interface, kind="veth", peer=slot.peer_interface)
            (host_index,) = host.link_lookup(ifname=slot.host_interface)
            (peer_index,) = host.link_lookup(ifname=slot.peer_interface)
            host.link("set", index=host_index, address=tap_mac_for(slot.mac_address), master=bridges[0])
            host.link("set", index=peer_index, net_ns_fd=slot.namespace)
            host.link("set", index=host_index, state="up")
        with pyroute2.NetNS(slot.namespace) as inside:
            (index,) = inside.link_lookup(ifname=slot.peer_interface)
            inside.link("set", index=index, ifname=CONTAINER_INTERFACE, address=slot.mac_address.lower())
            inside.addr("add", index=index, address=slot.ip_address, prefixlen=GUEST_PREFIX_LENGTH)
            inside.link("set", index=index, state="up")
            (loopback,) = inside.link_lookup(ifname="lo")
            inside.link("set", index=loopback, state="up")
            inside.route("add", dst="0.0.0.0/0", gateway=GATEWAY_ADDRESS)
    except BaseException:
        tear_down_slot_network(slot)
        raise
    log.debug("slot network ready slot=%d namespace=%s host_interface=%s", slot.ordinal, slot.namespace,
              slot.host_interface)


def tear_down_slot_network(slot: SlotNetwork) -> None:
    """Remove the slot's namespace, its veth pair and any VM tap of the slot; gone is success.

    Before a container's veth is made: its host end has the slot's `fe:` MAC, as a VM's tap
    of the slot has (vacd.backends.slottaps), and the bridge must not have both.
    """
    remove_links((slot.host_interface, slot.peer_interface, slot.vm_tap))
    if os.path.exists(slot.namespace_path):
        _pyroute2().netns.remove(slot.namespace)


def remove_container_links(slot: SlotNetwork) -> None:
    """Remove a container's namespace and veth pair of the slot, if any; keep its VM tap.

    Before a VM's tap of the slot is ensured (vacd.backends.slottaps), the reverse of the above.
    """
    remove_links((slot.host_interface, slot.peer_interface))
    if os.path.exists(slot.namespace_path):
        _pyroute2().netns.remove(slot.namespace)


def remove_links(names: tuple[str, ...]) -> int:
    """Remove the host's links of these names; return how many were found (gone is success)."""
    pyroute2 = _pyroute2()
    found = 0
    with pyroute2.IPRoute() as host:
        for name in names:
            for index in host.link_lookup(ifname=name):
                found += 1
                delete_link(host, index)
    return found


def delete_link(host: Any, index: int) -> None:
    """Delete link `index` through the IPRoute `host`; a link gone already is success."""
    try:
        host.link("del", index=index)
    except _pyroute2().NetlinkError as error:
        if error.code != _ENODEV:  # e.g. the other end of a veth pair took it with it
            raise


def remove_slot_network(machine_name: str, ordinal: int) -> None:
    """A destroy's last step for a container machine in slot `ordinal`: its slot network goes.

    A failure is the destroy's (BackendError), so the next destroy of the machine tries again.
    """
    address = ip_address_for(ordinal)
    try:
        remove_container_links(SlotNetwork(ordinal, mac_address_for(address), address))
    except Exception as error:  # pyroute2 errors
        raise BackendError("destroy", machine_name, f"slot network: {error}") from error


def slot_network_exists(slot: SlotNetwork) -> bool:
    return slot.namespace_path.exists()
