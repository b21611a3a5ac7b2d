"""vacd's own filter on the VM slots' taps: one nftables table, replaced whole in one transaction.

Each VM slot has a persistent tap `vactNN` (vacd.backends.slottaps). What may leave a
slot's guest through it is pinned here to the slot's MAC and IPv4 address, as libvirt's
`clean-traffic` filter pinned it when vacd bound that filter to each tap. The binding cost
1.3–1.4 s a slot, one slot at a time under libvirt's nwfilter lock (126 ebtables and
iptables commands each), paid again after every host boot: a 32-slot node's first fill took
62 s. The same protection for every slot as one `nft -f` transaction costs tens of
milliseconds (docs/benchmarks.md, "What a binding costs, counted").

The table (`bridge vac_slot_taps`, TABLE):
- Two sets pin each tap to its slot: `slot_macs` (tap . MAC) and `slot_ipv4` (tap . IPv4).
- Frames from a slot tap (prerouting, before the bridge decides anything) are dropped
  unless their source MAC is the tap's slot's, and then passed only if they are IPv4 from
  the slot's address; a DHCP request from 0.0.0.0 (UDP 68 to 67, to 255.255.255.255) while
  the guest has no lease; or an ARP request or reply whose sender MAC and address are the
  slot's. Everything else is dropped: IPv6, VLAN tags, other EtherTypes, RARP (QEMU's
  announce-self only follows a migration, and vacd never migrates a domain). libvirt's
  filter also let through any UDP from 0.0.0.0; this one only DHCP's.
- Frames to a slot tap (postrouting) pass only as IPv4 or ARP, as libvirt's did.
- A tap named as a slot tap but in no set (a slot's tap whose pin is not in the table)
  can send nothing: the filter fails closed.
- Drops are counted (`nft list table bridge vac_slot_taps` shows them). An accept here ends
  only this table's chain; libvirt's and the admin's own rules still see what passes.

Rules:
- The table is made by one script that adds, deletes and defines it (`ruleset_script`), so
  the kernel swaps the old table for the new one atomically: a guest is never unfiltered
  while it changes, and a table left by an earlier vacd (or an admin's edit) is replaced,
  not merged.
- It pins every slot tap the host has when it is written, and every tap a creation in this
  process has asked for: a vacd restarted while guests run keeps their taps pinned.
- Trust only what the kernel shows, read after the creation asked (`SlotFilter.ensure`):
  the table as read back right after vacd wrote it is kept, and a later reading must equal
  it (counters and handles aside) and hold the slot's pins, else the table is written
  again and read again; still not in force fails the creation (SlotTapError). So an
  `nft flush ruleset` (a restart of the nftables service does one) is undone at the next
  creation, or at the next network check (`SlotFilter.tend`, once a minute).
- Readings are shared as the ebtables readings were: threads waiting while one is taken
  are served by the next, so a batch of creations started together costs two or three.
- `ruleset_script`, `normalised_table` and `pins_in_table` are pure; the nft command is the
  caller's (`nft_command`, e.g. run inside a network namespace by the tests).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from vacd.slots import ip_address_for, mac_address_for, ordinal_of_slot_tap, slot_tap_name

log = logging.getLogger(__name__)

TABLE_FAMILY = "bridge"
TABLE_NAME = "vac_slot_taps"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
SLOT_TAP_PATTERN = "vact*"
# nft answers in tens of milliseconds; one that hangs holds every creation waiting behind
# the filter's lock, so it is given up on soon and the creation fails (the slot is tried again).
NFT_TIMEOUT_SECONDS = 10.0
# A listing that fails while other rules change (libvirt's, the admin's) is tried again
# after 0.05 and 0.1 s; a missing table is an answer, not a failure.
READ_ATTEMPTS = 3
READ_RETRY_SECONDS = 0.05
_MAC_ADDRESS = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# Before the bridge decides, as ebtables' nat PREROUTING (where libvirt's rules were).
PRIORITY = -300


class SlotFilterError(Exception):
    """The table could not be written or read; the message has nft's words."""


@dataclass(frozen=True)
class TapPin:
    """What one slot tap is pinned to: the slot's guest MAC and IPv4 address."""

    tap: str
    mac_address: str
    ip_address: str


def pin_for_ordinal(ordinal: int) -> TapPin:
    """The pin of slot `ordinal`'s tap: its identity is a function of the ordinal (vacd.slots)."""
    ip_address = ip_address_for(ordinal)
    return TapPin(slot_tap_name(ordinal), mac_address_for(ip_address).lower(), ip_address)


def _elements(pairs: Iterable[str]) -> str:
    listed = ",\n\t\t\t".join(pairs)
    return f"\t\telements = {{ {listed} }}\n" if listed else ""


def ruleset_script(pins: Iterable[TapPin]) -> str:
    """The nft script that replaces the table with one pinning each of `pins` (pure).

    Raises:
        ValueError: a pin whose tap is not named as a slot tap (it would not match the
            table's `vact*` rules, and nft would read a stray quote as script).
    """
    ordered = sorted(pins, key=lambda pin: pin.tap)
    for pin in ordered:
        # Checked, not trusted: each value is written into nft's script as it stands.
        if ordinal_of_slot_tap(pin.tap) is None:
            raise ValueError(f"{pin.tap!r} is not a slot tap's name")
        if not _MAC_ADDRESS.fullmatch(pin.mac_address.lower()):
            raise ValueError(f"tap {pin.tap}: {pin.mac_address!r} is not a MAC address")
        if str(ipaddress.IPv4Address(pin.ip_address)) != pin.ip_address:
            raise ValueError(f"tap {pin.tap}: {pin.ip_address!r} is not an IPv4 address as nft lists it")
    macs = _elements(f'"{pin.tap}" . {pin.mac_address.lower()}' for pin in ordered)
    addresses = _elements(f'"{pin.tap}" . {pin.ip_address}' for pin in ordered)
    return (
        f"table {TABLE}\n"
        f"delete table {TABLE}\n"
        f"table {TABLE} {{\n"
        "\tset slot_macs {\n"
        "\t\ttype ifname . ether_addr\n"
        f"{macs}"
        "\t}\n"
        "\tset slot_ipv4 {\n"
        "\t\ttype ifname . ipv4_addr\n"
        f"{addresses}"
        "\t}\n"
        "\tchain from_slot_taps {\n"
        f"\t\ttype filter hook prerouting priority {PRIORITY}; policy accept;\n"
        f'\t\tiifname != "{SLOT_TAP_PATTERN}" accept\n'
        "\t\tiifname . ether saddr != @slot_macs counter drop\n"
        "\t\tether type ip iifname . ip saddr @slot_ipv4 accept\n"
        "\t\tether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept\n"
        "\t\tether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp operation { request, reply }"
        " iifname . arp saddr ether @slot_macs iifname . arp saddr ip @slot_ipv4 accept\n"
        "\t\tcounter drop\n"
        "\t}\n"
        "\tchain to_slot_taps {\n"
        f"\t\ttype filter hook postrouting priority {PRIORITY}; policy accept;\n"
        f'\t\toifname != "{SLOT_TAP_PATTERN}" accept\n'
        "\t\tether type { ip, arp } accept\n"
        "\t\tcounter drop\n"
        "\t}\n"
        "}\n"
    )


# What may differ between two readings of an unchanged table: the kernel's handles, the
# counters' figures, and the order it lists set elements in.
_UNSTABLE_KEYS = frozenset({"handle", "packets", "bytes"})


def _without_unstable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_unstable(item) for key, item in value.items() if key not in _UNSTABLE_KEYS}
    if isinstance(value, list):
        return [_without_unstable(item) for item in value]
    return value


def normalised_table(listing: Mapping[str, Any]) -> list[Any]:
    """`nft -j list table` output without what changes while the table does not (pure).

    Raises:
        ValueError: it is not nft's JSON listing.
    """
    objects = listing.get("nftables")
    if not isinstance(objects, list):
        raise ValueError("not an nft JSON listing (no 'nftables' list)")
    kept = []
    for item in objects:
        if not isinstance(item, dict) or "metainfo" in item:
            continue
        item = _without_unstable(item)
        set_object = item.get("set")
        if isinstance(set_object, dict) and isinstance(set_object.get("elem"), list):
            set_object["elem"] = sorted(set_object["elem"], key=lambda element: json.dumps(element, sort_keys=True))
        kept.append(item)
    return kept


def _set_elements(table: Sequence[Any], name: str) -> set[tuple[str, str]]:
    pairs = set()
    for item in table:
        set_object = item.get("set") if isinstance(item, dict) else None
        if not isinstance(set_object, dict) or set_object.get("name") != name:
            continue
        for element in set_object.get("elem", []):
            concat = element.get("concat") if isinstance(element, dict) else None
            if isinstance(concat, list) and len(concat) == 2 and all(isinstance(part, str) for part in concat):
                pairs.add((concat[0], concat[1].lower()))
    return pairs


def pins_in_table(table: Sequence[Any]) -> set[TapPin]:
    """The taps a normalised table pins to both a MAC and an address (pure)."""
    macs = dict(_set_elements(table, "slot_macs"))
    addresses = dict(_set_elements(table, "slot_ipv4"))
    return {TapPin(tap, mac, addresses[tap]) for tap, mac in macs.items() if tap in addresses}


def _no_such_table(completed: subprocess.CompletedProcess[str]) -> bool:
    # nft's own words for a table that is not there (not a namespace or file nft could not open).
    return completed.returncode == 1 and "Error: No such file or directory" in completed.stderr


def run_nft(nft_command: Sequence[str], arguments: Sequence[str],
            script: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """`nft` with `arguments` (and `script` on its standard input).

    Raises:
        SlotFilterError: it could not be run or gave no answer in time.
    """
    try:
        return subprocess.run([*nft_command, *arguments], input=script, capture_output=True, text=True,
                              timeout=NFT_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired as error:
        raise SlotFilterError(f"nft {' '.join(arguments)}: no answer in {NFT_TIMEOUT_SECONDS:.0f} s") from error
    except OSError as error:
        raise SlotFilterError(f"nft {' '.join(arguments)}: {error}") from error


def read_table(nft_command: Sequence[str] = ("nft",), attempts: int = READ_ATTEMPTS,
               sleep: Callable[[float], None] = time.sleep) -> Optional[list[Any]]:
    """The table as the kernel has it now, normalised (`normalised_table`); None if there is none.

    Raises:
        SlotFilterError: nft failed `attempts` times, or did not answer with its JSON listing.
    """
    for attempt in range(attempts):
        if attempt:
            sleep(READ_RETRY_SECONDS * 2 ** (attempt - 1))
        completed = run_nft(nft_command, ["-j", "list", "table", TABLE_FAMILY, TABLE_NAME])
        if completed.returncode == 0 or _no_such_table(completed):
            break
    else:
        raise SlotFilterError(f"nft list table {TABLE} failed {attempts} times, last: exit status "
                              f"{completed.returncode}: {completed.stderr.strip()[-300:] or 'no message'}")
    if completed.returncode != 0:
        return None
    try:
        return normalised_table(json.loads(completed.stdout))
    except (ValueError, AttributeError) as error:
        raise SlotFilterError(f"nft list table {TABLE} gave what is not its JSON listing: {error}") from error


@dataclass(frozen=True)
class Reading:
    """The table as one reading found it (None: no table) and when (the reader's clock) it began."""

    started_at: float
    table: Optional[list[Any]]


class SlotFilter:
    """The slot taps' nftables table on this host: written whole, read back, shared by creations."""

    def __init__(self, present_ordinals: Callable[[], Iterable[int]],
                 nft_command: Sequence[str] = ("nft",), clock: Callable[[], float] = time.monotonic) -> None:
        """`present_ordinals`: the ordinals of the slot taps the host has now (a link dump)."""
        self._present_ordinals = present_ordinals
        self._nft = tuple(nft_command)
        self._clock = clock
        self._lock = threading.Lock()  # one reading or writing at a time
        self._pins_lock = threading.Lock()
        self._asked: dict[str, TapPin] = {}  # every tap a creation asked for, by name
        self._latest: Optional[Reading] = None
        self._written: Optional[list[Any]] = None  # the table as read right after vacd wrote it
        self.readings = 0
        self.writes = 0

    # The kernel ------------------------------------------------------------------------

    def _read(self) -> Reading:
        started_at = self._clock()
        table = read_table(self._nft)
        self.readings += 1
        return Reading(started_at, table)

    def _write(self, pins: Iterable[TapPin]) -> None:
        script = ruleset_script(pins)
        completed = run_nft(self._nft, ["-f", "-"], script)
        if completed.returncode != 0:
            raise SlotFilterError(f"nft -f (table {TABLE}): exit status {completed.returncode}: "
                                  f"{completed.stderr.strip()[-500:] or 'no message'}")
        self.writes += 1

    # What creations and the network check call -----------------------------------------------

    def check(self) -> Optional[str]:
        """Why this host cannot have the table (None if it can): nft missing, or the kernel
        refusing it. Writes nothing (`nft -c`)."""
        if shutil.which(self._nft[0]) is None:
            return f"no {self._nft[0]} command (the nftables package) to filter the slot taps with"
        completed = run_nft(self._nft, ["-c", "-f", "-"], ruleset_script([pin_for_ordinal(0)]))
        if completed.returncode != 0:
            return f"the kernel or nft refuses the slot filter table: {completed.stderr.strip()[-300:] or 'no message'}"
        return None

    def ensure(self, pin: TapPin) -> None:
        """Return once `pin` is in force in a reading begun after this call; write the table if not.

        Raises:
            SlotFilterError: nft failed, or the table vacd wrote does not read back with the pin.
        """
        asked_at = self._clock()
        with self._pins_lock:
            self._asked[pin.tap] = pin
        with self._lock:
            reading = self._reading_since(asked_at)
            why = self._not_in_force(reading, [pin])
            if not why:
                return
            pins = self._pins_to_write()
            log.info("writing slot filter table=%s taps=%d for tap=%s: %s", TABLE, len(pins), pin.tap,
                     why)
            self._write_and_read_back(pins)
            still = self._not_in_force(self._latest, [pin])
            if still:
                raise SlotFilterError(f"table {TABLE} read back without tap {pin.tap}'s pin "
                                      f"({pin.mac_address}, {pin.ip_address}) after vacd wrote it: {still}")

    def tend(self) -> list[str]:
        """With each network check: the table back in force for every slot tap the host has.

        Returns what was done ([] = nothing). Raises SlotFilterError as `ensure`.
        """
        with self._lock:
            pins = self._pins_to_write()
            reading = self._reading_since(self._clock())
            why = self._not_in_force(reading, pins)
            if not why:
                return []
            if self._written is not None:
                # Not when this vacd has yet to write it: a table left by an earlier one is expected.
                log.warning("slot filter table=%s not in force (%s); writing it again", TABLE, why)
            self._write_and_read_back(pins)
            still = self._not_in_force(self._latest, pins)
            if still:
                raise SlotFilterError(f"table {TABLE} read back without the pins vacd wrote: {still}")
            return [f"slot filter written for {len(pins)} taps"]

    # Helpers, called with self._lock held ---------------------------------------------------------

    def _reading_since(self, moment: float) -> Reading:
        latest = self._latest
        if latest is not None and latest.started_at >= moment:
            return latest
        self._latest = self._read()
        return self._latest

    def _not_in_force(self, reading: Optional[Reading], pins: Iterable[TapPin]) -> str:
        """Why `pins` are not in force in `reading` ("" if they are)."""
        if reading is None or reading.table is None:
            return "no table"
        if self._written is None:
            return "not written by this vacd yet"
        if reading.table != self._written:
            return "the table differs from what vacd wrote"
        in_table = pins_in_table(reading.table)
        missing = [pin.tap for pin in pins if _lowered(pin) not in in_table]
        return f"no pin for {', '.join(missing)} in the table" if missing else ""

    def _pins_to_write(self) -> list[TapPin]:
        with self._pins_lock:
            pins = dict(self._asked)
        for ordinal in self._present_ordinals():
            pins.setdefault(slot_tap_name(ordinal), pin_for_ordinal(ordinal))
        return sorted(pins.values(), key=lambda pin: pin.tap)

    def _write_and_read_back(self, pins: Sequence[TapPin]) -> None:
        self._write(pins)
        self._written = None
        reading = self._read()
        self._latest = reading
        self._written = reading.table


def _lowered(pin: TapPin) -> TapPin:
    return TapPin(pin.tap, pin.mac_address.lower(), pin.ip_address)


__all__ = [
    "SlotFilter",
    "SlotFilterError",
    "TABLE",
    "TapPin",
    "normalised_table",
    "pin_for_ordinal",
    "pins_in_table",
    "read_table",
    "ruleset_script",
    "run_nft",
]
