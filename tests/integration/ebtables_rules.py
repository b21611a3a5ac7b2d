"""What libvirt's clean-traffic filter has put in the kernel for a tap (ebtables nat table).

The real-VM tests read it for domains with `<filterref>` (vacd's fallback where its own
nftables table cannot be had, vacd.backends.slotfilter), and the benches to say which
filter a run had. vacd itself no longer reads it: its slot taps are pinned by its own table.

`clean_traffic_problems` compares one tap's chains with what libvirt (9.0) installs for
`clean-traffic` with parameter IP: every frame from the tap passes a source-MAC check,
IPv4 and ARP a source-address check (DHCP's unconfigured source excepted), and anything
else is dropped. Anything else, or anything missing, is a problem.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable, Optional

EBTABLES_TIMEOUT_SECONDS = 30.0
READ_ATTEMPTS = 5
# Pauses between attempts: 0.05, 0.1, 0.2, 0.4 s.
READ_RETRY_SECONDS = 0.05

NatChains = dict[str, list[str]]


def parse_nat_listing(listing: str) -> NatChains:
    """`ebtables -t nat -L` output as {chain name: its rules, in order}."""
    chains: NatChains = {}
    current: Optional[str] = None
    for line in listing.splitlines():
        if line.startswith("Bridge chain: "):
            current = line[len("Bridge chain: "):].split(",", 1)[0]
            chains[current] = []
        elif current is not None and line.strip():
            chains[current].append(line.strip())
    return chains


class NatTableUnreadable(Exception):
    """`ebtables -t nat -L` failed every time it was tried; the message has its last words."""


def read_nat_chains(attempts: int = READ_ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> NatChains:
    """The kernel's ebtables nat table now.

    ebtables (nf_tables) fails a listing now and then while libvirt changes the table (a
    filter being bound for another slot: exit status 4), so a failed listing is tried again
    after a short pause, `attempts` times in all.

    Raises:
        OSError: ebtables is not installed or cannot run.
        NatTableUnreadable: every attempt failed or hung.
    """
    failure = ""
    for attempt in range(attempts):
        if attempt:
            sleep(READ_RETRY_SECONDS * 2 ** (attempt - 1))
        try:
            completed = subprocess.run(["ebtables", "-t", "nat", "-L"], capture_output=True, text=True,
                                       timeout=EBTABLES_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            failure = f"no answer in {EBTABLES_TIMEOUT_SECONDS:.0f} s"
            continue
        if completed.returncode == 0:
            return parse_nat_listing(completed.stdout)
        failure = f"exit status {completed.returncode}: {completed.stderr.strip()[-300:] or 'no message'}"
    raise NatTableUnreadable(f"ebtables -t nat -L failed {attempts} times, last: {failure}")


def chains_naming(chains: NatChains, tap: str) -> list[str]:
    """The chains named for `tap` or holding a rule that names it."""
    return sorted(name for name, rules in chains.items() if tap in name or any(tap in rule for rule in rules))


def clean_traffic_problems(chains: NatChains, tap: str, mac: str, ip_address: str) -> list[str]:
    """How `tap`'s rules differ from clean-traffic pinned to `mac` and `ip_address` ([] = in force)."""
    mac = mac.lower()
    problems = []
    if f"-i {tap} -j libvirt-I-{tap}" not in chains.get("PREROUTING", []):
        problems.append(f"PREROUTING does not send frames from {tap} to libvirt-I-{tap}")
    if f"-o {tap} -j libvirt-O-{tap}" not in chains.get("POSTROUTING", []):
        problems.append(f"POSTROUTING does not send frames to {tap} to libvirt-O-{tap}")
    incoming = chains.get(f"libvirt-I-{tap}", [])
    if not incoming or incoming[0] != f"-j I-{tap}-mac" or incoming[-1] != "-j DROP" \
            or f"-p IPv4 -j I-{tap}-ipv4-ip" not in incoming or f"-p ARP -j I-{tap}-arp-ip" not in incoming:
        problems.append(f"libvirt-I-{tap} is not MAC check, IPv4 and ARP address checks, drop: {incoming}")
    wanted = {
        f"I-{tap}-mac": [f"-s {mac} -j RETURN", "-j DROP"],
        f"I-{tap}-arp-mac": [f"-p ARP --arp-mac-src {mac} -j RETURN", "-j DROP"],
        f"I-{tap}-arp-ip": [f"-p ARP --arp-ip-src {ip_address} -j RETURN", "-j DROP"],
        # The one exception is DHCP's unconfigured source, so the guest can ask for its lease.
        f"I-{tap}-ipv4-ip": ["-p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN",
                             f"-p IPv4 --ip-src {ip_address} -j RETURN", "-j DROP"],
    }
    for chain, rules in wanted.items():
        if chains.get(chain) != rules:
            problems.append(f"{chain} is {chains.get(chain)}, wanted {rules}")
    return problems


__all__ = ["NatChains", "NatTableUnreadable", "chains_naming", "clean_traffic_problems", "parse_nat_listing",
           "read_nat_chains"]
