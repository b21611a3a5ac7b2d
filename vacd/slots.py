"""Slot identity: what an ordinal fixes (name, address, MAC, VNC port), as Vac 03 did.

Slot n of factory `short.domain` is `short-NN.domain`, 169.254.169.n, MAC 56:4D plus the
four address octets in upper-case hex, VNC 5900+n (behaviour reference §1.5, acceptance 7).

Fix of a Vac 03 weakness (§11): ordinals 253 and 254 collided with the factory's own
service addresses and slots above 99 had no DHCP entry. Ordinals 0 to 249 keep Vac's
addresses exactly; ordinal 250 and above continue in 169.254.170.0 and up, 250 per /24,
so no slot ever takes .253 or .254 of 169.254.169.0/24.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

SLOTS_PER_SUBNET = 250
FIRST_SLOT_THIRD_OCTET = 169
MAX_SLOTS = SLOTS_PER_SUBNET * (254 - FIRST_SLOT_THIRD_OCTET)
# The factory's own addresses on the guest network (§1.9).
GATEWAY_ADDRESS = "169.254.169.253"
METADATA_ADDRESS = "169.254.169.254"
GUEST_NETWORK = "169.254.0.0/16"
VNC_BASE_PORT = 5900


@dataclass(frozen=True)
class SlotIdentity:
    """The fixed identity of one slot of one factory."""

    ordinal: int
    machine_name: str
    ip_address: str
    mac_address: str
    vnc_port: int


def machine_name_for(factory_name: str, ordinal: int) -> str:
    """`f1.example.com`, 3 -> `f1-03.example.com` (a short name gets no domain part)."""
    short, dot, domain = factory_name.partition(".")
    return f"{short}-{ordinal:02d}{dot}{domain}"


def ip_address_for(ordinal: int) -> str:
    if not 0 <= ordinal < MAX_SLOTS:
        raise ValueError(f"slot ordinal {ordinal} outside 0..{MAX_SLOTS - 1}")
    third_octet = FIRST_SLOT_THIRD_OCTET + ordinal // SLOTS_PER_SUBNET
    return f"169.254.{third_octet}.{ordinal % SLOTS_PER_SUBNET}"


def mac_address_for(ip_address: str) -> str:
    octets = ipaddress.IPv4Address(ip_address).packed
    return "56:4D:" + ":".join(f"{octet:02X}" for octet in octets)


# A pure function of its arguments, asked for every slot several times a pass (issue 15
# item 2: 1.5 % of a pass at 128 slots); one factory name and MAX_SLOTS ordinals at most,
# two names for a renamed factory.
@lru_cache(maxsize=4 * MAX_SLOTS)
def slot_identity(factory_name: str, ordinal: int) -> SlotIdentity:
    ip_address = ip_address_for(ordinal)
    return SlotIdentity(
        ordinal=ordinal,
        machine_name=machine_name_for(factory_name, ordinal),
        ip_address=ip_address,
        mac_address=mac_address_for(ip_address),
        vnc_port=VNC_BASE_PORT + ordinal,
    )


def ordinal_for_ip_address(ip_address: str) -> "int | None":
    """The slot ordinal a guest source address belongs to, or None if it is no slot's."""
    try:
        address = ipaddress.IPv4Address(ip_address)
    except ValueError:
        return None
    octets = address.packed
    if octets[0] != 169 or octets[1] != 254:
        return None
    subnet_index = octets[2] - FIRST_SLOT_THIRD_OCTET
    if subnet_index < 0 or octets[3] >= SLOTS_PER_SUBNET:
        return None
    ordinal = subnet_index * SLOTS_PER_SUBNET + octets[3]
    return ordinal if ordinal < MAX_SLOTS else None


def ordinal_of_machine_name(factory_name: str, machine_name: str) -> "int | None":
    """The ordinal if `machine_name` is how this factory names a slot, else None."""
    short, dot, domain = factory_name.partition(".")
    head = f"{short}-"
    tail = f"{dot}{domain}"
    if not (machine_name.startswith(head) and machine_name.endswith(tail)):
        return None
    digits = machine_name[len(head): len(machine_name) - len(tail)]
    if not (digits.isascii() and digits.isdigit() and len(digits) >= 2):
        return None
    ordinal = int(digits)
    if ordinal >= MAX_SLOTS or machine_name_for(factory_name, ordinal) != machine_name:
        return None
    return ordinal


# A VM slot's own tap (vacd.backends.slottaps), named like a container slot's `vaccNN` veth
# (vacd.backends.slotnetwork) and never `vnet`: libvirt takes `vnet` names for its own taps.
SLOT_TAP_PREFIX = "vact"


def slot_tap_name(ordinal: int) -> str:
    """`vact03` for slot 3; at most 9 characters for MAX_SLOTS, within IFNAMSIZ (15)."""
    if not 0 <= ordinal < MAX_SLOTS:
        raise ValueError(f"slot ordinal {ordinal} outside 0..{MAX_SLOTS - 1}")
    return f"{SLOT_TAP_PREFIX}{ordinal:02d}"


def ordinal_of_slot_tap(interface: str) -> "int | None":
    """The ordinal if `interface` is how vacd names a slot's tap, else None."""
    digits = interface[len(SLOT_TAP_PREFIX):]
    if not (interface.startswith(SLOT_TAP_PREFIX) and digits.isascii() and digits.isdigit() and len(digits) >= 2):
        return None
    ordinal = int(digits)
    return ordinal if ordinal < MAX_SLOTS and slot_tap_name(ordinal) == interface else None
