"""The ebtables reader the real-VM tests use for libvirt's clean-traffic (tests/integration/ebtables_rules.py).

vacd pins its slot taps with its own nftables table (vacd.backends.slotfilter); where it
cannot, domains keep libvirt's `<filterref>`, and the real-VM tests read libvirt's rules
for them in the ebtables nat table with this reader. Its parsing and comparison are pinned
here without a hypervisor, so a real-VM test that passes cannot pass by a reader that
sees nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.integration.ebtables_rules import (
    NatTableUnreadable,
    chains_naming,
    clean_traffic_problems,
    parse_nat_listing,
    read_nat_chains,
)
from vacd.slots import ip_address_for, mac_address_for, slot_tap_name

ORDINAL = 9990


def slot_tap(ordinal: int) -> tuple[str, str, str]:
    """(tap, MAC, address) of slot `ordinal`."""
    address = ip_address_for(ordinal)
    return slot_tap_name(ordinal), mac_address_for(address), address


# What libvirt 9.0 put in the ebtables nat table for a binding of vact9990 (read from a real one).
BOUND_LISTING = """Bridge table: nat

Bridge chain: PREROUTING, entries: 1, policy: ACCEPT
-i vact9990 -j libvirt-I-vact9990

Bridge chain: OUTPUT, entries: 0, policy: ACCEPT

Bridge chain: POSTROUTING, entries: 1, policy: ACCEPT
-o vact9990 -j libvirt-O-vact9990

Bridge chain: I-vact9990-arp-ip, entries: 2, policy: RETURN
-p ARP --arp-ip-src 169.254.208.240 -j RETURN
-j DROP

Bridge chain: I-vact9990-arp-mac, entries: 2, policy: RETURN
-p ARP --arp-mac-src 56:4d:a9:fe:d0:f0 -j RETURN
-j DROP

Bridge chain: I-vact9990-ipv4-ip, entries: 3, policy: RETURN
-p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN
-p IPv4 --ip-src 169.254.208.240 -j RETURN
-j DROP

Bridge chain: I-vact9990-mac, entries: 2, policy: RETURN
-s 56:4d:a9:fe:d0:f0 -j RETURN
-j DROP

Bridge chain: libvirt-I-vact9990, entries: 9, policy: RETURN
-j I-vact9990-mac
-p IPv4 -j I-vact9990-ipv4-ip
-p IPv4 -j ACCEPT
-p ARP -j I-vact9990-arp-mac
-p ARP -j I-vact9990-arp-ip
-p ARP -j ACCEPT
-p RARP -j I-vact9990-rarp
-p 0x835 -j ACCEPT
-j DROP

Bridge chain: libvirt-O-vact9990, entries: 4, policy: RETURN
-p IPv4 -j O-vact9990-ipv4
-p ARP -j ACCEPT
-p RARP -j O-vact9990-rarp
-j DROP
"""


# Reading libvirt's rules ---------------------------------------------------------------------------


def test_a_bound_taps_rules_read_from_the_nat_table_are_clean_traffic_for_its_slot() -> None:
    chains = parse_nat_listing(BOUND_LISTING)
    assert clean_traffic_problems(chains, *slot_tap(ORDINAL)) == []
    assert chains_naming(chains, "vact9991") == []


@pytest.mark.parametrize("edit", [
    ("-i vact9990 -j libvirt-I-vact9990\n", ""),  # the jump gone: nothing from the tap is checked
    ("-s 56:4d:a9:fe:d0:f0 -j RETURN", "-s 56:4d:a9:fe:d0:f1 -j RETURN"),  # another slot's MAC
    ("--ip-src 169.254.208.240 -j RETURN", "--ip-src 169.254.208.241 -j RETURN"),  # another address
    ("-p IPv4 -j I-vact9990-ipv4-ip\n", ""),  # no address check for IPv4
])
def test_rules_that_are_not_the_slots_clean_traffic_are_problems(edit: tuple[str, str]) -> None:
    listing = BOUND_LISTING.replace(*edit)
    assert listing != BOUND_LISTING
    assert clean_traffic_problems(parse_nat_listing(listing), *slot_tap(ORDINAL)) != []


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True),
                       st.lists(st.from_regex(r"-[a-z] [A-Za-z0-9:. -]{0,30}[A-Za-z0-9]", fullmatch=True),
                                max_size=5), max_size=6))
def test_a_nat_listing_reads_back_as_the_chains_it_lists(chains: dict[str, list[str]]) -> None:
    listing = "Bridge table: nat\n\n" + "".join(
        f"Bridge chain: {name}, entries: {len(rules)}, policy: ACCEPT\n" + "".join(f"{rule}\n" for rule in rules)
        + "\n" for name, rules in chains.items())
    assert parse_nat_listing(listing) == chains


def fake_ebtables(directory: Path, failures: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `ebtables` first on PATH that fails `failures` times as nf_tables does under contention, then lists."""
    count = directory / "calls"
    (directory / "listing").write_text(BOUND_LISTING)
    script = directory / "ebtables"
    script.write_text(f"""#!/bin/sh
echo x >> {count}
if [ "$(wc -l < {count})" -le {failures} ]; then
    echo "ebtables v1.8.9 (nf_tables): RULE_LIST failed (Resource busy)" >&2
    exit 4
fi
cat {directory / "listing"}
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return count


@pytest.mark.allow_commands("ebtables")
def test_a_listing_that_fails_while_libvirt_changes_the_table_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_ebtables(tmp_path, 2, monkeypatch)
    pauses: list[float] = []
    chains = read_nat_chains(sleep=pauses.append)
    assert clean_traffic_problems(chains, *slot_tap(ORDINAL)) == []
    assert len(calls.read_text().split()) == 3
    assert pauses == [0.05, 0.1]


@pytest.mark.allow_commands("ebtables")
def test_a_listing_that_keeps_failing_says_how_it_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ebtables(tmp_path, 99, monkeypatch)
    with pytest.raises(NatTableUnreadable, match=r"failed 5 times, last: exit status 4: .*Resource busy"):
        read_nat_chains(sleep=lambda seconds: None)
