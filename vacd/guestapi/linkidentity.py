"""Whether a guest request's source address is really its slot's: the link-layer check.

The guest API tells machines apart by source address (vacd.guestapi.machines), and
libvirt's `clean-traffic` filter on each tap pins the guest's IP and MAC addresses, so a
guest cannot send from another slot's address. This module is the second lock, for when
the first one is missing (a domain defined without the filter, an nwfilter driver that
failed to load, a filter an admin edited): before a source address is served as slot n,
the kernel's own tables must say that its frames come from slot n's tap.

1. The bridge's neighbour entry for the source address names the MAC the kernel talks to
   for it. It must be slot n's MAC (vacd.slots.mac_address_for): a guest that only moved
   to a neighbour's address answers ARP with its own MAC and fails here.
2. The bridge's forwarding database says which port frames from that MAC arrived on, and
   libvirt gives every tap the guest's MAC with the first octet set to 0xFE (so that the
   bridge never takes a guest's MAC as its own). The port's MAC must be that: a guest that
   takes a neighbour's MAC as well as its address is learnt on its own tap, and fails here.

Rules:
- Answers are cached for CACHE_SECONDS per source address, so a flood of requests costs
  one netlink round trip per address per interval, not one per request.
- Netlink is spoken on one thread of this module's own: the guest API calls the check from
  its asyncio loop, and pyroute2 (0.8 and later) refuses its synchronous calls inside a
  running event loop. The caller waits at most LOOKUP_TIMEOUT_SECONDS.
- Fail closed: no neighbour entry, no FDB entry, or a netlink error is "not this slot".
  The kernel has the neighbour entry whenever a TCP connection from the address is up
  (it had to send the SYN-ACK), so a real guest is never refused for want of one.
- Every refusal is logged at warning level once per source and reason per
  REFUSAL_LOG_SECONDS: an admin should hear of a guest posing as another slot.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Optional

from vacd.slots import ip_address_for, mac_address_for

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0
LOOKUP_TIMEOUT_SECONDS = 2.0
REFUSAL_LOG_SECONDS = 300.0
MAX_CACHED_SOURCES = 4096
# libvirt's tap MAC: the guest's MAC with this first octet (virNetDevTapCreateInBridgePort).
TAP_FIRST_OCTET = "fe"
# <linux/neighbour.h>: entries that hold no usable link-layer address.
_NUD_INCOMPLETE = 0x01
_NUD_FAILED = 0x20
_NUD_NOARP = 0x40


def tap_mac_for(guest_mac: str) -> str:
    """The MAC libvirt gives the host side (tap) of a guest interface with `guest_mac`."""
    return TAP_FIRST_OCTET + guest_mac.lower()[2:]


class LinkIdentity:
    """Checks source addresses against the neighbour table and FDB of one bridge."""

    def __init__(self, bridge: str, *, netns: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bridge = bridge
        self.netns = netns
        self.clock = clock
        self._handle: Optional[Any] = None
        self._bridge_index: Optional[int] = None
        self._answers: dict[tuple[str, str], tuple[float, bool]] = {}
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self.refusals = 0
        self._closed = False
        self._netlink_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vac-linkidentity")

    def close(self) -> None:
        """Close the netlink socket on its own thread, then end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._netlink_thread.submit(self._close_handle).result(timeout=LOOKUP_TIMEOUT_SECONDS)
        except FutureTimeout:
            log.warning("link identity: netlink socket on %s did not close in %.0fs", self.bridge,
                        LOOKUP_TIMEOUT_SECONDS)
        self._netlink_thread.shutdown(wait=False)

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def confirms_slot(self, source: str, ordinal: int) -> bool:
        """Whether frames from `source` come from slot `ordinal`'s tap (the guest API's check)."""
        return self.confirms(source, mac_address_for(ip_address_for(ordinal)))

    def confirms(self, source: str, slot_mac: str) -> bool:
        """Whether frames from `source` come from the tap of the guest whose MAC is `slot_mac`."""
        key = (source, slot_mac.lower())
        now = self.clock()
        cached = self._answers.get(key)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            reason = self._netlink_thread.submit(
                self._refusal, source.split("%", 1)[0], slot_mac.lower()).result(timeout=LOOKUP_TIMEOUT_SECONDS)
        except FutureTimeout:
            reason = f"netlink lookup on {self.bridge} took over {LOOKUP_TIMEOUT_SECONDS:.0f}s"
        except RuntimeError as error:  # submit after close: the daemon is stopping
            reason = f"link check closed: {error}"
        if len(self._answers) >= MAX_CACHED_SOURCES:
            self._answers.clear()
        self._answers[key] = (now, reason is None)
        if reason is not None:
            self.refusals += 1
            self._log_refusal(source, reason, now)
        return reason is None

    def _refusal(self, address_text: str, slot_mac: str) -> Optional[str]:
        try:
            address = ipaddress.ip_address(address_text)
        except ValueError:
            return "not an IP address"
        try:
            handle, bridge_index = self._netlink()
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            neighbour_mac = None
            for entry in handle.get_neighbours(family=family, ifindex=bridge_index):
                if entry.get_attr("NDA_DST") == str(address) and \
                        not entry["state"] & (_NUD_INCOMPLETE | _NUD_FAILED | _NUD_NOARP):
                    neighbour_mac = str(entry.get_attr("NDA_LLADDR") or "").lower()
                    break
            if neighbour_mac is None:
                return f"no neighbour entry on {self.bridge}"
            if neighbour_mac != slot_mac:
                return f"its MAC is {neighbour_mac}, the slot's is {slot_mac}"
            port_index = None
            for entry in handle.get_neighbours(family=socket.AF_BRIDGE, master=bridge_index):
                if str(entry.get_attr("NDA_LLADDR") or "").lower() == slot_mac:
                    port_index = entry["ifindex"]
                    break
            if port_index is None:
                return f"{slot_mac} is in no forwarding entry of {self.bridge}"
            links = handle.get_links(port_index)
            port_mac = str(links[0].get_attr("IFLA_ADDRESS") or "").lower() if links else ""
            if port_mac != tap_mac_for(slot_mac):
                port_name = links[0].get_attr("IFLA_IFNAME") if links else port_index
                return f"{slot_mac} arrives on port {port_name} whose MAC {port_mac} is not that slot's tap"
            return None
        except Exception as error:  # pyroute2 raises NetlinkError and OSError subclasses
            self._close_handle()
            self._bridge_index = None
            return f"netlink error on {self.bridge}: {error}"

    def _netlink(self) -> tuple[Any, int]:
        if self._handle is None:
            # Imported here so that importing the guest API does not load pyroute2.
            from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped,unused-ignore]

            self._handle = NetNS(self.netns) if self.netns else IPRoute()
        if self._bridge_index is None:
            indexes = self._handle.link_lookup(ifname=self.bridge)
            if not indexes:
                raise LookupError(f"no interface {self.bridge}")
            self._bridge_index = int(indexes[0])
        return self._handle, self._bridge_index

    def _log_refusal(self, source: str, reason: str, now: float) -> None:
        key = (source, reason)
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_SECONDS:
            return
        if len(self._refusals_logged) >= MAX_CACHED_SOURCES:
            self._refusals_logged.clear()
        self._refusals_logged[key] = now
        log.warning("guest request refused: source=%s is not its slot's guest: %s", source, reason)


__all__ = ["CACHE_SECONDS", "LOOKUP_TIMEOUT_SECONDS", "LinkIdentity", "tap_mac_for"]
