"""A VM slot's own persistent tap, bound once to libvirt's clean-traffic filter (issue 15 item 1).

libvirt 9.0 instantiates a domain's `<filterref>` (dozens of ebtables rules, one command
each) under its nwfilter driver's lock, about 1.35 s per domain one domain at a time, so 32
guests created together took 55 s. The rules name the tap and stay while the filter's
binding lives, so here each VM slot has a tap of its own, `vactNN` (vacd.slots), made by
vacd and kept from one domain to the next, with a binding (virNWFilterBindingCreateXML)
made while the tap exists: the filter is paid once per slot, and the slot's later domains
are created at libvirt's unfiltered speed with the same rules in force throughout.
docs/benchmarks.md ("Fill: N real guests") has the measurements and libvirt's reasons.

Rules:
- Before every creation (`SlotTaps.prepare`, on the creating thread), level-triggered:
  the slot's container link (vacd.backends.slotnetwork: `vaccNN` veth, namespace) is
  removed if any is left, since both would put the slot's `fe:` MAC on the bridge; the tap
  is made if missing (persistent, no owner: only CAP_NET_ADMIN may attach), given the
  slot's MAC with first octet `fe` (the tap MAC vacd.guestapi.linkidentity checks), put on
  the guest bridge and up; what is already right is left alone.
- Trust no binding the kernel does not show: libvirt lists a binding made while its tap
  was missing (a tap deleted and made again, libvirtd restarted meanwhile) that has no
  rule in force. So the slot's rules are read in the ebtables nat table
  (vacd.backends.cleantraffic) in a reading begun after the creation asked: a reading
  serves every creation that was waiting when it began, so a batch started together costs
  two or three, and no creation trusts rules read before it came) and, if they are not
  clean-traffic pinned to the slot's MAC
  and address, any binding of the tap is deleted and a new one made, and the table is read
  again. Rules still not in force fail the creation (SlotTapError): a domain is never
  created on a tap without them, and never with neither filter.
- The domain then uses the tap as `<interface type='ethernet'>` with
  `<target dev='vactNN' managed='no'/>` (vacd.backends.domainxml): libvirt opens it and
  leaves it, and its rules, when the domain ends. libvirt refuses a second domain on a tap
  in use.
- Where bindings cannot be used, the backend keeps `<filterref>` on the network
  (`bindings_supported`: libvirt's test driver, libvirt older than 4.5, no nwfilter
  driver, no ebtables command to verify with), decided once per connection.
- `SlotTaps.tend`, with each network check (once a minute while it is usable): taps of slots beyond the slot count, not held by a domain
  (no carrier), are removed with their bindings; every other slot tap not on the bridge or
  down is put back (a network restart that made the bridge anew leaves them off it).
  Container backends remove the slot's tap when they set up its veth (vacd.backends.slotnetwork);
  its binding then stays until the slot is a VM's again or goes, harmless: its rules name
  a device that does not exist.
- Netlink through pyroute2, as vacd.backends.slotnetwork, on the caller's thread.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid as uuid_module
import weakref
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Callable, Optional

import libvirt  # type: ignore[import-untyped,unused-ignore]  # no stubs or py.typed

from vacd.backends.cleantraffic import NatTable, NatTableUnreadable, clean_traffic_problems
from vacd.backends.slotnetwork import SlotNetwork, delete_link, remove_container_links, remove_links
from vacd.guestapi.linkidentity import tap_mac_for
from vacd.slots import ordinal_of_slot_tap, slot_tap_name

log = logging.getLogger(__name__)

# libvirt 4.5.0 added virNWFilterBindingCreateXML.
FIRST_LIBVIRT_WITH_BINDINGS = 4_005_000
FILTER_NAME = "clean-traffic"
# Owners of vacd's bindings are named so (and given a UUID made from the tap's name), so
# `virsh nwfilter-binding-list` says whose they are.
BINDING_OWNER_PREFIX = "vac-slot-tap-"
_BINDING_OWNER_NAMESPACE = uuid_module.UUID("6a0c5f2e-8f4b-4d0e-9a61-3c1f0b7d2e45")
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


def binding_xml(tap: SlotTap) -> str:
    """The clean-traffic binding of `tap`, as libvirt would make it for a `<filterref>` with IP."""
    binding = ElementTree.Element("filterbinding")
    owner = ElementTree.SubElement(binding, "owner")
    ElementTree.SubElement(owner, "name").text = BINDING_OWNER_PREFIX + tap.name
    ElementTree.SubElement(owner, "uuid").text = str(uuid_module.uuid5(_BINDING_OWNER_NAMESPACE, tap.name))
    ElementTree.SubElement(binding, "portdev", name=tap.name)
    ElementTree.SubElement(binding, "mac", address=tap.mac_address.lower())
    filterref = ElementTree.SubElement(binding, "filterref", filter=FILTER_NAME)
    ElementTree.SubElement(filterref, "parameter", name="IP", value=tap.ip_address)
    return ElementTree.tostring(binding, encoding="unicode")


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


def bindings_supported(connection: libvirt.virConnect, uri: str) -> Optional[str]:
    """None if slot taps with their own bindings can be used on `connection`, else why not."""
    if uri.startswith("test:"):
        return "libvirt's test driver has no network filters"
    try:
        version = connection.getLibVersion()
    except libvirt.libvirtError as error:
        return f"libvirt's version unknown: {error}"
    if version < FIRST_LIBVIRT_WITH_BINDINGS or not hasattr(connection, "nwfilterBindingCreateXML"):
        return f"libvirt {version // 1_000_000}.{version // 1000 % 1000} has no filter bindings (4.5 or later has)"
    try:
        connection.listAllNWFilterBindings(0)
    except libvirt.libvirtError as error:
        return f"libvirt lists no filter bindings: {error}"
    if shutil.which("ebtables") is None:
        # A listing that fails now and then is the creation's to retry, not a reason to give up slot taps.
        return "no ebtables command to read the nat table and verify the rules with"
    return None


class SlotTapDecisions:
    """Whether each libvirt connection can use slot taps (`bindings_supported`), decided once per connection.

    The backend asks before every creation and tending, on whichever connection it uses
    (one per creating thread): libvirt is asked once a connection, and the decision is
    logged once, and again only if a later connection decides otherwise.
    """

    def __init__(self, uri: str, network_name: str) -> None:
        self._uri = uri
        self._network_name = network_name
        self._lock = threading.Lock()
        # Connection -> why it cannot use slot taps ("" if it can), decided once per connection.
        self._slot_tap_refusals: "weakref.WeakKeyDictionary[libvirt.virConnect, str]" = weakref.WeakKeyDictionary()
        self._slot_tap_decision_said: Optional[str] = None

    def refusal(self, connection: libvirt.virConnect) -> str:
        """Why `connection` cannot use slot taps ("" if it can); asked of libvirt once per connection."""
        with self._lock:
            refusal = self._slot_tap_refusals.get(connection)
        if refusal is not None:
            return refusal
        refusal = bindings_supported(connection, self._uri) or ""
        with self._lock:
            self._slot_tap_refusals[connection] = refusal
            # Said once, and again only if a later connection decides otherwise (one per creating thread).
            unchanged, self._slot_tap_decision_said = self._slot_tap_decision_said == refusal, refusal
        if unchanged:
            log.debug("slot taps uri=%s: %s", self._uri, refusal or "in use")
        elif refusal:
            # Expected of the test driver; elsewhere an admin should know why creations queue.
            log.log(logging.INFO if self._uri.startswith("test:") else logging.WARNING,
                    "no slot taps uri=%s: %s; each domain's interface has libvirt's clean-traffic filter "
                    "(<filterref>), set up one domain at a time", self._uri, refusal)
        else:
            log.info("slot taps in use uri=%s network=%s: each VM slot has its own tap, bound to clean-traffic once",
                     self._uri, self._network_name)
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


def slot_tap_bindings(connection: libvirt.virConnect) -> dict[str, libvirt.virNWFilterBinding]:
    """libvirt's filter bindings whose port device is named as a slot tap, by that name."""
    return {binding.portDev(): binding for binding in connection.listAllNWFilterBindings(0)
            if ordinal_of_slot_tap(binding.portDev()) is not None}


def delete_binding(connection: libvirt.virConnect, tap_name: str) -> bool:
    """Delete the binding of port device `tap_name`; False if there was none."""
    try:
        binding = connection.nwfilterBindingLookupByPortDev(tap_name)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER_BINDING:
            return False
        raise
    try:
        binding.delete()
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER_BINDING:
            return False  # deleted meanwhile
        raise
    return True


class SlotTaps:
    """The VM slots' taps and bindings, and the nat-table readings their creations share.

    The bridge is the caller's to name at each call: the network's bridge as libvirt says
    now (vacbr0, or the bridge of a Vac 03 network kept while its guests run).
    """

    def __init__(self, nat_table: Optional[NatTable] = None) -> None:
        self.nat_table = nat_table if nat_table is not None else NatTable()

    def prepare(self, connection: libvirt.virConnect, tap: SlotTap, bridge: str,
                remove_container_link: Callable[[SlotNetwork], None] = remove_container_links) -> None:
        """Make `tap` ready for a domain: on `bridge`, with clean-traffic's rules in force.

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
        # Only a reading begun from now on: rules read for an earlier creation may have gone since.
        problems = self._problems(tap, self.nat_table.now())
        if not problems:
            return
        log.info("binding %s to slot tap tap=%s slot=%d ip=%s: %s", FILTER_NAME, tap.name, tap.ordinal,
                 tap.ip_address, problems[0])
        try:
            delete_binding(connection, tap.name)
            connection.nwfilterBindingCreateXML(binding_xml(tap), 0)
        except libvirt.libvirtError as error:
            raise SlotTapError(f"binding {FILTER_NAME} to tap {tap.name}: {error}") from error
        problems = self._problems(tap, self.nat_table.now())
        if problems:
            raise SlotTapError(f"tap {tap.name} has a {FILTER_NAME} binding but its rules are not in the ebtables "
                               f"nat table: {'; '.join(problems)}")
        log.info("slot tap bound tap=%s slot=%d: rules in force", tap.name, tap.ordinal)

    def _problems(self, tap: SlotTap, since: float) -> list[str]:
        try:
            chains = self.nat_table.chains_since(since)
        except (OSError, NatTableUnreadable) as error:
            raise SlotTapError(f"cannot read the ebtables nat table to check tap {tap.name}: {error}") from error
        return clean_traffic_problems(chains, tap.name, tap.mac_address, tap.ip_address)

    def tend(self, connection: libvirt.virConnect, num_slots: int, bridge: str) -> list[str]:
        """Remove the taps and bindings of slots beyond `num_slots` no domain holds; put the rest
        back on the bridge and up. Returns what was done, one phrase each.

        Raises:
            SlotTapError: a step failed (the next network check tries again).
        """
        done, present = self.tend_links(num_slots, bridge)
        try:
            for name, binding in slot_tap_bindings(connection).items():
                ordinal = ordinal_of_slot_tap(name)
                if ordinal is not None and ordinal >= num_slots and name not in present:
                    try:
                        binding.delete()
                    except libvirt.libvirtError as error:
                        if error.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER_BINDING:
                            raise
                    done.append(f"unbound {name}")
        except libvirt.libvirtError as error:
            raise SlotTapError(f"removing the bindings of slot taps beyond slot {num_slots - 1}: {error}") from error
        if done:
            log.info("slot taps tended slots=%d: %s", num_slots, ", ".join(done))
        return done

    def tend_links(self, num_slots: int, bridge: str) -> tuple[list[str], set[str]]:
        """The kernel's part of `tend`: (what was done, the slot taps left)."""
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
        return done, {link.name for link in kept}


__all__ = [
    "FILTER_NAME",
    "SlotTap",
    "SlotTapError",
    "SlotTaps",
    "TapLink",
    "binding_xml",
    "bindings_supported",
    "delete_binding",
    "ensure_slot_tap",
    "remove_slot_tap",
    "slot_tap_bindings",
    "tap_repairs",
    "taps_to_remove",
]
