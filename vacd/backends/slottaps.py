"""A VM slot's own persistent tap, filtered by vacd's own nftables table (issue 15 item 1).

libvirt 9.0 instantiates a domain's `<filterref>` (dozens of ebtables rules, one command
each) under its nwfilter driver's lock, about 1.35 s per domain one domain at a time, so 32
guests created together took 55 s. Here each VM slot has a tap of its own, `vactNN`
(vacd.slots), made by vacd and kept from one domain to the next, and what its guest may
send is pinned to the slot's MAC and address by vacd's table (vacd.backends.slotfilter),
written for every slot in one transaction: the slot's domains are created at libvirt's
unfiltered speed, after a host boot too, with the same protection in force throughout.
docs/benchmarks.md ("Fill: N real guests") has the measurements and libvirt's reasons.

Rules:
- Before every creation (`SlotTaps.prepare`, on the creating thread), level-triggered:
  the slot's container link (vacd.backends.slotnetwork: `vaccNN` veth, namespace) is
  removed if any is left, since both would put the slot's `fe:` MAC on the bridge; the tap
  is made if missing (persistent, no owner: only CAP_NET_ADMIN may attach), given the
  slot's MAC with first octet `fe` (the tap MAC vacd.guestapi.linkidentity checks), put on
  the guest bridge and up; what is already right is left alone. Then the slot's pin must
  read back in force in the filter table (`SlotFilter.ensure`, which writes the table if
  not); a tap whose pin cannot be shown in force fails the creation (SlotTapError): a
  domain is never created on an unfiltered tap, and never with neither filter.
- The domain then uses the tap as `<interface type='ethernet'>` with
  `<target dev='vactNN' managed='no'/>` (vacd.backends.domainxml): libvirt opens it and
  leaves it when the domain ends. libvirt refuses a second domain on a tap in use.
- Where the table cannot be had, the backend keeps libvirt's `<filterref>` on the network
  (`slot_taps_refusal`: libvirt's test driver, no `nft` command, a kernel without nftables'
  bridge family), decided once per backend and logged.
- `SlotTaps.tend`, with each network check (once a minute while it is usable): taps of
  slots beyond the slot count, not held by a domain (no carrier), are removed; every other
  slot tap not on the bridge or down is put back (a network restart that made the bridge
  anew leaves them off it); and the filter table is written again if something else
  changed or removed it.
  Container backends remove the slot's tap when they set up its veth (vacd.backends.slotnetwork).
- libvirt bindings of slot taps made by the releases that bound `clean-traffic` to each tap
  are left alone (deleting one takes libvirt about a second); they go at the next host boot
  and their rules only repeat the table's.
- Netlink through pyroute2, as vacd.backends.slotnetwork, on the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import libvirt  # type: ignore[import-untyped,unused-ignore]  # no stubs or py.typed

from vacd.backends.slotfilter import TABLE, SlotFilter, SlotFilterError, TapPin, run_nft
from vacd.backends.slotnetwork import SlotNetwork, delete_link, remove_container_links, remove_links
from vacd.guestapi.linkidentity import tap_mac_for
from vacd.slots import ordinal_of_slot_tap, slot_tap_name

log = logging.getLogger(__name__)

_IFF_UP = 0x1


class SlotTapError(Exception):
    """A slot's tap or its filter could not be put in force; the creation must not go on."""


@dataclass(frozen=True)
class SlotTap:
    """One VM slot's tap: its name and the guest addresses its filter pins."""

    ordinal: int
    mac_address: str  # the guest's
    ip_address: str

    @property
    def name(self) -> str:
        return slot_tap_name(self.ordinal)

    @property
    def tap_mac(self) -> str:
        return tap_mac_for(self.mac_address)

    @property
    def pin(self) -> TapPin:
        return TapPin(self.name, self.mac_address.lower(), self.ip_address)


@dataclass(frozen=True)
class TapLink:
    """What the kernel shows of a link with a slot tap's name."""

    name: str
    index: int
    kind: str  # "tun" for a tap
    mac: str
    master: Optional[int]  # the bridge's index, or None
    up: bool
    carrier: bool  # a process (QEMU) has the tap open


def tap_repairs(link: Optional[TapLink], tap: SlotTap, bridge_index: int) -> list[str]:
    """What must be done for `link` to be `tap` on the bridge and up (pure; [] = nothing).

    "create" for a missing link; "replace" for a link of that name that is not a tap
    (then "create" follows); else any of "address", "master", "up".
    """
    if link is None:
        return ["create", "address", "master", "up"]
    if link.kind != "tun":
        return ["replace", "create", "address", "master", "up"]
    repairs = []
    if link.mac.lower() != tap.tap_mac:
        repairs.append("address")
    if link.master != bridge_index:
        repairs.append("master")
    if not link.up:
        repairs.append("up")
    return repairs


def taps_to_remove(links: dict[str, TapLink], num_slots: int) -> list[str]:
    """Slot taps of slots that no longer exist and no domain holds (pure)."""
    return sorted(name for name, link in links.items()
                  if (ordinal_of_slot_tap(name) or 0) >= num_slots and not link.carrier)


def slot_taps_refusal(uri: str, slot_filter: SlotFilter) -> Optional[str]:
    """None if slot taps with vacd's filter table can be used with libvirt at `uri`, else why not."""
    if uri.startswith("test:"):
        return "libvirt's test driver has no network to put slot taps on"
    return slot_filter.check()


class SlotTapDecisions:
    """Whether slot taps can be used (`slot_taps_refusal`), decided once and logged once.

    The backend asks before every creation and tending; the host is asked the first time only.
    """

    def __init__(self, uri: str, network_name: str, slot_filter: SlotFilter) -> None:
        self._uri = uri
        self._network_name = network_name
        self._slot_filter = slot_filter
        self._lock = threading.Lock()
        self._refusal: Optional[str] = None  # "" once decided that slot taps can be used

    def refusal(self) -> str:
        """Why slot taps cannot be used ("" if they can)."""
        with self._lock:
            if self._refusal is not None:
                return self._refusal
            refusal = self._refusal = slot_taps_refusal(self._uri, self._slot_filter) or ""
        if refusal:
            # Expected of the test driver; elsewhere an admin should know why creations queue.
            log.log(logging.INFO if self._uri.startswith("test:") else logging.WARNING,
                    "no slot taps uri=%s: %s; each domain's interface has libvirt's clean-traffic filter "
                    "(<filterref>), set up one domain at a time", self._uri, refusal)
        else:
            log.info("slot taps in use uri=%s network=%s: each VM slot has its own tap, pinned to the slot's MAC "
                     "and address by nftables table %s", self._uri, self._network_name, TABLE)
        return refusal


def network_bridge(connection: libvirt.virConnect, network_name: str) -> str:
    """The guest network's bridge as libvirt has it now (vacbr0, or a kept Vac 03 network's).

    Raises:
        SlotTapError: libvirt does not know the network or its bridge.
    """
    try:
        bridge = connection.networkLookupByName(network_name).bridgeName()
    except libvirt.libvirtError as error:
        raise SlotTapError(f"bridge of network {network_name}: {error}") from error
    if not bridge:
        raise SlotTapError(f"network {network_name} has no bridge")
    return str(bridge)


def _pyroute2() -> Any:
    import pyroute2  # type: ignore[import-untyped,unused-ignore]

    return pyroute2


def _tap_link(message: Any) -> TapLink:
    linkinfo = message.get_attr("IFLA_LINKINFO")
    kind = (linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None) or ""
    return TapLink(
        name=message.get_attr("IFLA_IFNAME"),
        index=message["index"],
        kind=kind,
        mac=message.get_attr("IFLA_ADDRESS") or "",
        master=message.get_attr("IFLA_MASTER"),
        up=bool(message["flags"] & _IFF_UP),
        carrier=bool(message.get_attr("IFLA_CARRIER")),
    )


def read_slot_tap_links(host: Any) -> dict[str, TapLink]:
    """Every link named as a slot tap, by name (one dump of the host's links)."""
    links = {}
    for message in host.get_links():
        name = message.get_attr("IFLA_IFNAME")
        if name and ordinal_of_slot_tap(name) is not None:
            links[name] = _tap_link(message)
    return links


def _bridge_index(host: Any, bridge: str) -> int:
    indexes = host.link_lookup(ifname=bridge)
    if not indexes:
        raise SlotTapError(f"guest bridge {bridge} does not exist (is the libvirt network up?)")
    return int(indexes[0])


def ensure_slot_tap(tap: SlotTap, bridge: str) -> list[str]:
    """Make `tap` exist, with its MAC, on `bridge` and up; return the repairs made ([] = none).

    Raises:
        SlotTapError: the bridge is missing.
        pyroute2.NetlinkError, OSError: the kernel refused a step.
    """
    pyroute2 = _pyroute2()
    with pyroute2.IPRoute() as host:
        bridge_index = _bridge_index(host, bridge)
        indexes = host.link_lookup(ifname=tap.name)
        link = _tap_link(host.get_links(indexes[0])[0]) if indexes else None
        repairs = tap_repairs(link, tap, bridge_index)
        if "replace" in repairs and link is not None:
            delete_link(host, link.index)
        if "create" in repairs:
            host.link("add", ifname=tap.name, kind="tuntap", mode="tap")
        if not repairs:
            return repairs
        (index,) = host.link_lookup(ifname=tap.name)
        if "address" in repairs:
            host.link("set", index=index, address=tap.tap_mac)
        if "master" in repairs:
            host.link("set", index=index, master=bridge_index)
        if "up" in repairs:
            host.link("set", index=index, state="up")
    return repairs


def remove_slot_tap(name: str) -> bool:
    """Remove the tap `name`; False if it was not there."""
    return remove_links((name,)) > 0


def present_slot_tap_ordinals() -> list[int]:
    """The ordinals of the slot taps the host has now (one dump of its links)."""
    with _pyroute2().IPRoute() as host:
        return sorted(ordinal for ordinal in map(ordinal_of_slot_tap, read_slot_tap_links(host)) if ordinal is not None)


class SlotTaps:
    """The VM slots' taps and the filter table that pins them.

    The bridge is the caller's to name at each call: the network's bridge as libvirt says
    now (vacbr0, or the bridge of a Vac 03 network kept while its guests run).
    """

    def __init__(self, slot_filter: Optional[SlotFilter] = None) -> None:
        self.slot_filter = slot_filter if slot_filter is not None else SlotFilter(present_slot_tap_ordinals)

    def prepare(self, tap: SlotTap, bridge: str,
                remove_container_link: Callable[[SlotNetwork], None] = remove_container_links) -> None:
        """Make `tap` ready for a domain: on `bridge`, up, with its slot's pin in force.

        Raises:
            SlotTapError: it cannot be made ready; the message says which step and why.
        """
        try:
            remove_container_link(SlotNetwork(tap.ordinal, tap.mac_address, tap.ip_address))
            repairs = ensure_slot_tap(tap, bridge)
        except SlotTapError:
            raise
        except Exception as error:  # pyroute2's NetlinkError, OSError
            raise SlotTapError(f"tap {tap.name}: {error}") from error
        if repairs:
            log.info("slot tap ready tap=%s slot=%d made=%s bridge=%s", tap.name, tap.ordinal, ",".join(repairs),
                     bridge)
        try:
            self.slot_filter.ensure(tap.pin)
        except SlotFilterError as error:
            raise SlotTapError(f"tap {tap.name} cannot be shown pinned to {tap.mac_address} and {tap.ip_address} "
                               f"in nftables table {TABLE}: {error}") from error

    def tend(self, num_slots: int, bridge: str) -> list[str]:
        """Remove the taps of slots beyond `num_slots` no domain holds; put the rest back on the
        bridge and up; write the filter table again if it is not as vacd wrote it. Returns what
        was done, one phrase each.

        Raises:
            SlotTapError: a step failed (the next network check tries again).
        """
        done = self.tend_links(num_slots, bridge)
        try:
            done += self.slot_filter.tend()
        except SlotFilterError as error:
            raise SlotTapError(f"slot filter table {TABLE}: {error}") from error
        if done:
            log.info("slot taps tended slots=%d: %s", num_slots, ", ".join(done))
        return done

    def tend_links(self, num_slots: int, bridge: str) -> list[str]:
        """The links' part of `tend`: what was done."""
        pyroute2 = _pyroute2()
        done = []
        try:
            with pyroute2.IPRoute() as host:
                links = read_slot_tap_links(host)
                gone = taps_to_remove(links, num_slots)
                for name in gone:
                    delete_link(host, links[name].index)
                    done.append(f"removed {name}")
                # A tap beyond the slots still held by its domain is put back too: its guest runs.
                kept = [link for name, link in links.items() if name not in gone]
                if kept:
                    bridge_index = _bridge_index(host, bridge)
                    for link in kept:
                        if link.master != bridge_index:
                            host.link("set", index=link.index, master=bridge_index)
                            done.append(f"{link.name} back on {bridge}")
                        if not link.up:
                            host.link("set", index=link.index, state="up")
                            done.append(f"{link.name} up")
        except SlotTapError:
            raise
        except Exception as error:  # pyroute2's NetlinkError, OSError
            raise SlotTapError(f"tending slot taps on {bridge}: {error}") from error
        return done


def remove_filter_if_no_slot_taps() -> bool:
    """Delete vacd's filter table if the host has no slot tap left; True if it was deleted.

    Raises:
        SlotTapError: nft could not be run.
    """
    if present_slot_tap_ordinals():
        return False
    try:
        return run_nft(("nft",), ["delete", "table", *TABLE.split()]).returncode == 0
    except SlotFilterError as error:
        raise SlotTapError(f"removing table {TABLE}: {error}") from error


def remove_idle_slot_taps_and_filter(bridge: str) -> list[str]:
    """Remove every slot tap no domain holds and, if none is left, vacd's filter table: what
    a host without vacd's guests needs cleared (the tests' and benches' clean-up; a running
    vacd never calls it, since the table outlives vacd for its guests).

    Raises:
        SlotTapError: a tap could not be removed, or a held one put back on `bridge`.
    """
    done = SlotTaps().tend_links(0, bridge)
    if remove_filter_if_no_slot_taps():
        done.append(f"table {TABLE} removed")
    return done


__all__ = [
    "SlotTap",
    "SlotTapError",
    "SlotTaps",
    "TapLink",
    "ensure_slot_tap",
    "present_slot_tap_ordinals",
    "remove_filter_if_no_slot_taps",
    "remove_idle_slot_taps_and_filter",
    "remove_slot_tap",
    "slot_taps_refusal",
    "tap_repairs",
    "taps_to_remove",
]
