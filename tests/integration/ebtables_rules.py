"""What libvirt's clean-traffic filter has actually put in the kernel for a tap (ebtables nat table).

libvirt can list a filter binding whose rules are not in force (a binding made before its
tap existed: docs/benchmarks.md), so the real-VM tests and bench/libvirt_create_parallel.py
read the rules themselves. `clean_traffic_problems` compares one tap's chains with what
libvirt 9.0 installs for `clean-traffic` with parameter IP: every frame from the tap passes
a source-MAC check, IPv4 and ARP a source-address check, and anything else is dropped.
"""

from __future__ import annotations

import subprocess

EBTABLES_TIMEOUT_SECONDS = 30


def nat_chains() -> dict[str, list[str]]:
    """`ebtables -t nat -L` as {chain name: its rules, in order}."""
    listing = subprocess.run(["ebtables", "-t", "nat", "-L"], check=True, capture_output=True, text=True,
                             timeout=EBTABLES_TIMEOUT_SECONDS).stdout
    chains: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("Bridge chain: "):
            current = line[len("Bridge chain: "):].split(",", 1)[0]
            chains[current] = []
        elif current is not None and line.strip():
            chains[current].append(line.strip())
    return chains


def chains_naming(chains: dict[str, list[str]], tap: str) -> list[str]:
    """The chains named for `tap` or holding a rule that names it."""
    return sorted(name for name, rules in chains.items() if tap in name or any(tap in rule for rule in rules))


def clean_traffic_problems(chains: dict[str, list[str]], tap: str, mac: str, ip_address: str) -> list[str]:
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
