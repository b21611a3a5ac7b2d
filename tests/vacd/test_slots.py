"""Slot identity is Vac 03's (acceptance 7), extended past 99 slots without clashing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vacd.slots import MAX_SLOTS, ordinal_for_ip_address, slot_identity


def test_slot_3_of_f1_is_vac_compatible() -> None:
    identity = slot_identity("f1.example.com", 3)
    assert identity.machine_name == "f1-03.example.com"
    assert identity.ip_address == "169.254.169.3"
    assert identity.mac_address == "56:4D:A9:FE:A9:03"
    assert identity.vnc_port == 5903


def test_slot_names_above_99_get_three_digits() -> None:
    assert slot_identity("f1.example.com", 100).machine_name == "f1-100.example.com"


def test_no_slot_takes_the_factory_service_addresses() -> None:
    addresses = {slot_identity("f.example.com", ordinal).ip_address for ordinal in range(MAX_SLOTS)}
    assert "169.254.169.253" not in addresses and "169.254.169.254" not in addresses
    assert len(addresses) == MAX_SLOTS


@given(st.integers(min_value=0, max_value=MAX_SLOTS - 1))
def test_address_maps_back_to_its_slot(ordinal: int) -> None:
    assert ordinal_for_ip_address(slot_identity("f.example.com", ordinal).ip_address) == ordinal


def test_other_addresses_belong_to_no_slot() -> None:
    for address in ("127.0.0.1", "169.254.169.253", "169.254.169.254", "10.0.0.3", "not an address", "::1"):
        assert ordinal_for_ip_address(address) is None
