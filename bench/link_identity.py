"""Benchmark: what the guest API's link-layer check (vacd.guestapi.linkidentity) costs its loop.

Issue 15 item 3. The check answers from the kernel's bridge tables, at most CACHE_SECONDS
old. Once per interval every busy slot's source needs a fresh answer; this measures how
long the caller (the guest servers' event loop) waits for all of them, and what a cached
answer costs, for this tree's LinkIdentity and, with `--before TREE`, for another tree's.

Setup (root; everything inside network namespaces this script makes and removes): a
bridge in a host namespace, and `--slots` guests, each in its own namespace behind a veth
pair whose bridge end is a "tap" with libvirt's MAC (the guest's with first octet 0xFE),
as tests/vacd/guestapi/test_link_identity.py builds them. Each guest opens a TCP
connection to the bridge's address, which fills the neighbour table and the forwarding
database as a guest's metadata request does.

    .venv/bin/python bench/link_identity.py --slots 64 --rounds 5 --before /tmp/meta-base
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vacd.guestapi.linkidentity import tap_mac_for  # noqa: E402
from vacd.slots import ip_address_for, mac_address_for  # noqa: E402

BRIDGE = "vacbrbench0"  # not libvirt's vacbr0, and in a namespace of our own
GATEWAY = "169.254.169.253"
CACHED_CALLS = 10_000


def ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


def load_module(tree: Path, name: str) -> ModuleType:
    """vacd/guestapi/linkidentity.py of `tree`, under its own module name."""
    spec = importlib.util.spec_from_file_location(name, tree / "vacd/guestapi/linkidentity.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no vacd/guestapi/linkidentity.py under {tree}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_site(tag: str, slots: int) -> list[str]:
    """The host namespace (first) and one per guest; every guest has talked to the bridge."""
    host = f"vacbench-h{tag}"
    made = [host]
    ip("netns", "add", host)
    ip("-n", host, "link", "add", BRIDGE, "type", "bridge")
    ip("-n", host, "addr", "add", f"{GATEWAY}/16", "dev", BRIDGE)
    ip("-n", host, "link", "set", BRIDGE, "up")
    for ordinal in range(1, slots + 1):
        namespace = f"vacbench-g{ordinal}{tag}"
        ip("netns", "add", namespace)
        made.append(namespace)
        mac = mac_address_for(ip_address_for(ordinal))
        ip("-n", host, "link", "add", f"vnet{ordinal}", "address", tap_mac_for(mac), "type", "veth",
           "peer", "name", "eth0", "address", mac, "netns", namespace)
        ip("-n", host, "link", "set", f"vnet{ordinal}", "master", BRIDGE, "up")
        ip("-n", namespace, "addr", "add", f"{ip_address_for(ordinal)}/16", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
    talk = f"import socket; s = socket.socket(); s.settimeout(3); s.connect_ex(({GATEWAY!r}, 9))"
    for namespace in made[1:]:
        subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", talk], check=True, timeout=30)
    return made


def measure(module: ModuleType, host: str, slots: int, rounds: int) -> dict[str, Any]:
    now = [1000.0]
    checker = module.LinkIdentity(BRIDGE, netns=host, clock=lambda: now[0])
    sources = [(ip_address_for(ordinal), mac_address_for(ip_address_for(ordinal))) for ordinal in range(1, slots + 1)]
    try:
        checker.confirms(*sources[0])  # the netlink socket is opened once, not per round
        waits = []
        for _ in range(rounds):
            now[0] += 10 * module.CACHE_SECONDS
            started = time.perf_counter()
            confirmed = sum(bool(checker.confirms(source, mac)) for source, mac in sources)
            waits.append(time.perf_counter() - started)
            if confirmed != slots:
                raise SystemExit(f"{module.__name__}: only {confirmed} of {slots} guests confirmed")
        started = time.perf_counter()
        for index in range(CACHED_CALLS):
            checker.confirms(*sources[index % slots])
        cached = (time.perf_counter() - started) / CACHED_CALLS
    finally:
        checker.close()
    return {"median_ms": 1000 * statistics.median(waits), "min_ms": 1000 * min(waits),
            "max_ms": 1000 * max(waits), "cached_us": 1e6 * cached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="intervals measured per tree")
    parser.add_argument("--before", type=Path, default=None, help="another tree to measure beside this one")
    arguments = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("network namespaces need root")
    trees = [("this tree", Path(__file__).resolve().parent.parent)]
    if arguments.before is not None:
        trees.insert(0, (f"before ({arguments.before})", arguments.before))
    made: list[str] = []
    try:
        made = build_site(uuid.uuid4().hex[:5], arguments.slots)
        print(f"{arguments.slots} guests on one bridge, {arguments.rounds} intervals, load average "
              f"{os.getloadavg()[0]:.2f}")
        print("| tree | loop's wait for every slot's answer, once per interval: median (min–max) ms "
              "| cached answer µs |")
        print("|---|---:|---:|")
        for index, (label, tree) in enumerate(trees):
            result = measure(load_module(tree, f"linkidentity_{index}"), made[0], arguments.slots, arguments.rounds)
            print(f"| {label} | {result['median_ms']:.1f} ({result['min_ms']:.1f}–{result['max_ms']:.1f}) "
                  f"| {result['cached_us']:.1f} |")
    finally:
        for namespace in reversed(made):
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


if __name__ == "__main__":
    main()
