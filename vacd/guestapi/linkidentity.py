"""Whether a guest request's source address is really its slot's: the link-layer check.

The guest API tells machines apart by source address (vacd.guestapi.machines), and
the filter on each tap (vacd's nftables table on a slot tap, vacd.backends.slotfilter, or
libvirt's `clean-traffic` where that cannot be had) pins the guest's IP and MAC addresses, so
a guest cannot send from another slot's address. This module is the second lock, for when
the first one is missing (a table flushed since it was last checked, a filter an admin
edited): before a source address is served as slot n,
the kernel's own tables must say that its frames come from slot n's tap.

1. The bridge's neighbour entry for the source address names the MAC the kernel talks to
   for it. It must be slot n's MAC (vacd.slots.mac_address_for): a guest that only moved
   to a neighbour's address answers ARP with its own MAC and fails here.
2. The bridge's forwarding database says which port frames from that MAC arrived on, and
   libvirt gives every tap the guest's MAC with the first octet set to 0xFE (so that the
   bridge never takes a guest's MAC as its own). The port's MAC must be that: a guest that
   takes a neighbour's MAC as well as its address is learnt on its own tap, and fails here.

Rules:
- One refresh reads the bridge's tables whole (its neighbours, IPv4 and IPv6 in one dump,
  and its forwarding database, whose permanent entries are the ports' own MACs), and every source is answered from that snapshot with dictionary lookups. A
  snapshot answers for CACHE_SECONDS from the moment its reading began; then the next
  check waits for a new one. Under traffic it is renewed ahead of time: a check that finds
  it older than REFRESH_AHEAD_SECONDS starts a refresh and answers from the one it has, so
  the guest servers' loop does not wait on netlink while guests keep asking. Before
  (issue 15 item 3) each source had its own lookup of whole-table dumps every CACHE_SECONDS,
  on the loop's time: 64 busy slots made 32 lookups a second.
- The guarantee is unchanged: an answer rests on the kernel's tables as they were at most
  CACHE_SECONDS ago. A refusal from a snapshot taken before this check is confirmed with a
  new reading (a guest's first connection may be younger than the snapshot), and a
  confirmed refusal is remembered per (source, MAC) for CACHE_SECONDS, so a source posing
  as another slot costs at most one reading per interval.
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
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from vacd.slots import ip_address_for, mac_address_for

log = logging.getLogger(__name__)

CACHE_SECONDS = 2.0
# Renewed ahead of expiry, so that a busy server seldom waits for a reading.
REFRESH_AHEAD_SECONDS = 1.0
LOOKUP_TIMEOUT_SECONDS = 2.0
REFUSAL_LOG_SECONDS = 300.0
MAX_CACHED_SOURCES = 4096
# libvirt's tap MAC: the guest's MAC with this first octet (virNetDevTapCreateInBridgePort).
TAP_FIRST_OCTET = "fe"
# <linux/neighbour.h>: entries that hold no usable link-layer address.
_NUD_INCOMPLETE = 0x01
_NUD_FAILED = 0x20
_NUD_NOARP = 0x40
_NUD_PERMANENT = 0x80


@dataclass(frozen=True)
class BridgeTables:
    """What the kernel said about one bridge, read at `taken_at` (the checker's clock)."""

    taken_at: float
    bridge: str
    # IP address (normalised text) -> the MAC the bridge's neighbour entry has for it.
    neighbour_macs: dict[str, str] = field(default_factory=dict)
    # MAC -> index of the bridge port it was learnt on (the first entry, as the kernel lists them).
    fdb_ports: dict[str, int] = field(default_factory=dict)
    # Port index -> the port's own MACs: the bridge keeps a permanent ("local") forwarding
    # entry for each port's address, so the tap's MAC is read with the FDB, no link dump.
    port_macs: dict[int, frozenset[str]] = field(default_factory=dict)

    def refusal(self, address: str, slot_mac: str) -> Optional[str]:
        """None if `address`'s frames come from the tap of the guest whose MAC is `slot_mac`, else why not."""
        neighbour_mac = self.neighbour_macs.get(address)
        if neighbour_mac is None:
            return f"no neighbour entry on {self.bridge}"
        if neighbour_mac != slot_mac:
            return f"its MAC is {neighbour_mac}, the slot's is {slot_mac}"
        port_index = self.fdb_ports.get(slot_mac)
        if port_index is None:
            return f"{slot_mac} is in no forwarding entry of {self.bridge}"
        own_macs = self.port_macs.get(port_index, frozenset())
        if tap_mac_for(slot_mac) not in own_macs:
            shown = ", ".join(sorted(own_macs)) or "unknown"
            return f"{slot_mac} arrives on port ifindex {port_index} whose MAC ({shown}) is not that slot's tap"
        return None


@dataclass(frozen=True)
class FailedReading:
    """A reading of the bridge's tables that failed: it refuses every source, saying why."""

    taken_at: float
    reason: str

    def refusal(self, address: str, slot_mac: str) -> str:
        return self.reason


# What one reading of the bridge gave: its tables, or why there are none.
Reading = Union[BridgeTables, FailedReading]


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
        # The newest snapshot, or why the last reading failed (with when it began).
        self._tables: Optional[Reading] = None
        self._refresh_ahead: Optional["Future[None]"] = None
        self._refusals_confirmed: dict[tuple[str, str], float] = {}
        # (source, MAC) -> the snapshot that confirmed it: the hot path is two dictionary lookups.
        self._confirmed_by: dict[tuple[str, str], BridgeTables] = {}
        self._refusals_logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self.refusals = 0
        self.readings = 0
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
        slot_mac = slot_mac.lower()
        key = (source, slot_mac)
        now = self.clock()
        current = self._tables
        if isinstance(current, BridgeTables) and self._confirmed_by.get(key) is current:
            age = now - current.taken_at
            if 0.0 <= age < CACHE_SECONDS:
                if age >= REFRESH_AHEAD_SECONDS:
                    self._start_refresh_ahead()
                return True
        confirmed = self._refusals_confirmed.get(key)
        if confirmed is not None and now - confirmed < CACHE_SECONDS:
            return False
        try:
            address = str(ipaddress.ip_address(source.split("%", 1)[0]))
        except ValueError:
            return self._refused(key, "not an IP address", now)
        tables, read_now = self._current_tables(now)
        reason = tables.refusal(address, slot_mac)
        if reason is not None and not read_now:
            # The snapshot may predate this guest's first frames: ask the kernel again.
            tables = self._read(now)
            reason = tables.refusal(address, slot_mac)
        if reason is not None:
            return self._refused(key, reason, now)
        if isinstance(tables, BridgeTables):
            if len(self._confirmed_by) >= MAX_CACHED_SOURCES:
                self._confirmed_by.clear()
            self._confirmed_by[key] = tables
        return True

    @property
    def tables(self) -> Optional[BridgeTables]:
        """The newest snapshot, if the last reading succeeded (for tests and diagnostics)."""
        return self._tables if isinstance(self._tables, BridgeTables) else None

    def wait_for_refresh(self, timeout: float = LOOKUP_TIMEOUT_SECONDS) -> None:
        """Wait for a refresh started ahead of time, if any (tests)."""
        pending = self._refresh_ahead
        if pending is not None:
            pending.result(timeout=timeout)

    def _current_tables(self, now: float) -> tuple[Reading, bool]:
        """(a snapshot at most CACHE_SECONDS old, whether it was read for this call)."""
        tables = self._tables
        if not isinstance(tables, BridgeTables) or not 0.0 <= now - tables.taken_at < CACHE_SECONDS:
            return self._read(now), True
        if now - tables.taken_at >= REFRESH_AHEAD_SECONDS:
            self._start_refresh_ahead()
        return tables, False

    def _start_refresh_ahead(self) -> None:
        with self._lock:
            if self._closed or (self._refresh_ahead is not None and not self._refresh_ahead.done()):
                return
            try:
                self._refresh_ahead = self._netlink_thread.submit(self._refresh)
            except RuntimeError:  # shut down between the check and the submit: the daemon is stopping
                self._refresh_ahead = None

    def _refresh(self) -> None:
        """On the netlink thread: read the tables and publish them, unless a newer reading is in."""
        tables = self._read_tables(self.clock())
        current = self._tables
        if current is None or tables.taken_at >= current.taken_at:
            self._tables = tables

    def _read(self, now: float) -> Reading:
        """A new reading, waited for (at most LOOKUP_TIMEOUT_SECONDS), published and returned."""
        try:
            tables = self._netlink_thread.submit(self._read_tables, now).result(timeout=LOOKUP_TIMEOUT_SECONDS)
        except FutureTimeout:
            return FailedReading(now, f"netlink lookup on {self.bridge} took over {LOOKUP_TIMEOUT_SECONDS:.0f}s")
        except RuntimeError as error:  # submit after close: the daemon is stopping
            return FailedReading(now, f"link check closed: {error}")
        self._tables = tables
        return tables

    def _read_tables(self, taken_at: float) -> Reading:
        """On the netlink thread: the bridge's tables now, or why they could not be read."""
        self.readings += 1
        try:
            handle, bridge_index = self._netlink()
            neighbour_macs: dict[str, str] = {}
            # IPv4 and IPv6 in one dump (AF_UNSPEC), of the bridge's entries only.
            for entry in handle.get_neighbours(family=socket.AF_UNSPEC, ifindex=bridge_index):
                if entry["family"] not in (socket.AF_INET, socket.AF_INET6) or \
                        entry["state"] & (_NUD_INCOMPLETE | _NUD_FAILED | _NUD_NOARP):
                    continue
                destination = entry.get_attr("NDA_DST")
                lladdr = entry.get_attr("NDA_LLADDR")
                if destination and lladdr:
                    neighbour_macs.setdefault(str(ipaddress.ip_address(destination)), str(lladdr).lower())
            fdb_ports: dict[str, int] = {}
            port_macs: dict[int, set[str]] = {}
            for entry in handle.get_neighbours(family=socket.AF_BRIDGE, master=bridge_index):
                lladdr = entry.get_attr("NDA_LLADDR")
                if not lladdr:
                    continue
                mac, port_index = str(lladdr).lower(), int(entry["ifindex"])
                fdb_ports.setdefault(mac, port_index)
                if entry["state"] & _NUD_PERMANENT:
                    port_macs.setdefault(port_index, set()).add(mac)
            return BridgeTables(taken_at, self.bridge, neighbour_macs, fdb_ports,
                                {port_index: frozenset(macs) for port_index, macs in port_macs.items()})
        except Exception as error:  # pyroute2 raises NetlinkError and OSError subclasses
            self._close_handle()
            self._bridge_index = None
            return FailedReading(taken_at, f"netlink error on {self.bridge}: {error}")

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

    def _refused(self, key: tuple[str, str], reason: str, now: float) -> bool:
        if len(self._refusals_confirmed) >= MAX_CACHED_SOURCES:
            self._refusals_confirmed.clear()
        self._refusals_confirmed[key] = now
        self._confirmed_by.pop(key, None)
        self.refusals += 1
        self._log_refusal(key[0], reason, now)
        return False

    def _log_refusal(self, source: str, reason: str, now: float) -> None:
        key = (source, reason)
        last = self._refusals_logged.get(key)
        if last is not None and now - last < REFUSAL_LOG_SECONDS:
            return
        if len(self._refusals_logged) >= MAX_CACHED_SOURCES:
            self._refusals_logged.clear()
        self._refusals_logged[key] = now
        log.warning("guest request refused: source=%s is not its slot's guest: %s", source, reason)


__all__ = ["BridgeTables", "CACHE_SECONDS", "LOOKUP_TIMEOUT_SECONDS", "LinkIdentity", "REFRESH_AHEAD_SECONDS", "tap_mac_for"]
