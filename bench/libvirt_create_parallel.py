"""Benchmark: does libvirtd serialise createXML, and what of it: the connection or the filter?

Starts N transient domains of the test guest (the XML vacd makes, 128 MiB, on the network
vac_169.254.0.0) from N threads at once, and destroys them after each run. The default runs
four ways:

- one connection shared by the threads (what vacd did), or one connection per thread;
- with the `clean-traffic` network filter vacd puts on every interface, or without.

Three more ways attach the same filter otherwise (each alone, per-thread connections):

- `--bound-ahead`: a binding made beforehand through virNWFilterBindingCreateXML for a tap
  name fixed per slot (`<target dev='vacpNN'/>`, no filterref), libvirt then making the tap.
  libvirt lists the bindings, but puts none of their rules in force (see rules_in_force).
- `--bind-paused`: the domains created paused without a filter, each tap then bound (from N
  threads at once) and the domains resumed: the binding is made while its tap exists.
- `--slot-taps`: a persistent tap per slot made beforehand (`ip tuntap`, the slot's MAC with
  first octet fe, on the network's bridge), bound once while it exists, and then used by
  every round's domain (`<interface type='ethernet'>`, `<target dev='vacpNN' managed='no'/>`):
  the filter is paid once per slot, not once per domain. Round 0 also tries a second domain
  on a tap in use (it must be refused).

Reports the wall time until every createXML returned, the mean call, the calls' overlap
(sum of call times / wall time: N means fully parallel, 1 means one after another), and
rules_in_force: how many running guests' taps had clean-traffic's rules for their slot's
MAC and IP in the ebtables nat table (tests/integration/ebtables_rules.py) once every
createXML had returned (N of N is the only safe answer).
This is not vacd: it separates what libvirt serialises from what vacd does.

Usage: .venv/bin/python bench/libvirt_create_parallel.py [--domains 8] [--rounds 1]
           [--connections both|shared|per-thread]
           [--bound-ahead | --bind-paused | --slot-taps]
Needs root, libvirtd (tools/libvirtd-up), the network vac_169.254.0.0 (a vacd or the real-VM
tests define it) and the test guest; run under `flock /tmp/vac-realvm.lock`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Optional

import libvirt

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.integration.ebtables_rules import clean_traffic_problems, read_nat_chains  # noqa: E402
from vacd.backends.base import MachineSpec  # noqa: E402
from vacd.backends.domainxml import domain_xml, machine_disks  # noqa: E402
from vacd.guestapi.linkidentity import tap_mac_for  # noqa: E402
from vacd.slots import slot_identity  # noqa: E402

URI = "qemu:///system"
NETWORK = "vac_169.254.0.0"
FACTORY = "probe.vacbench.invalid"


def build_guest() -> dict[str, str]:
    output = subprocess.run([sys.executable, str(REPOSITORY / "tests/guest/build-guest"), "--json"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def tap_name(ordinal: int) -> str:
    return f"vacp{ordinal:02d}"


def binding_xml(ordinal: int, tap: str, owner: str = "") -> str:
    """The clean-traffic binding libvirt would make for slot `ordinal`'s interface, for `tap`."""
    identity = slot_identity(FACTORY, ordinal)
    return (f"<filterbinding><owner><name>{owner or identity.machine_name}</name><uuid>{uuid.uuid4()}</uuid></owner>"
            f"<portdev name='{tap}'/><mac address='{identity.mac_address}'/>"
            f"<filterref filter='clean-traffic'><parameter name='IP' value='{identity.ip_address}'/></filterref>"
            "</filterbinding>")


def guest_xml(guest: dict[str, str], ordinal: int, emulator: Optional[str], with_filter: bool, scratch: Path,
              interface: str = "network", name_prefix: str = "") -> str:
    """vacd's XML for slot `ordinal`; without the filter, its interface is `network` (libvirt's tap),
    `fixed` (libvirt's tap named tap_name) or `slot-tap` (the existing tap_name, type ethernet)."""
    identity = slot_identity(FACTORY, ordinal)
    spec = MachineSpec(name=name_prefix + identity.machine_name, uuid=str(uuid.uuid4()), ordinal=ordinal,
                       mac_address=identity.mac_address, ip_address=identity.ip_address, vnc_port=identity.vnc_port,
                       processors=1, memory_mib=128, machine_dir=scratch / (name_prefix + identity.machine_name),
                       root_kernel=Path(guest["kernel"]), root_initrd=Path(guest["initrd"]),
                       kernel_command_line=guest["cmdline"])
    spec.machine_dir.mkdir(parents=True, exist_ok=True)
    xml = domain_xml(spec, domain_type="qemu", network_name=NETWORK, disks=machine_disks(spec, scratch),
                     emulator=emulator)
    if with_filter:
        return xml
    root = ElementTree.fromstring(xml)
    for element in root.iterfind("devices/interface"):
        for filterref in element.findall("filterref"):
            element.remove(filterref)
        if interface == "fixed":
            ElementTree.SubElement(element, "target", dev=tap_name(ordinal))
        elif interface == "slot-tap":
            element.set("type", "ethernet")
            source = element.find("source")
            if source is not None:
                element.remove(source)
            ElementTree.SubElement(element, "target", dev=tap_name(ordinal), managed="no")
    if root.find("devices/graphics") is not None and name_prefix:
        # A second domain of the slot: its own VNC port, so only the tap can refuse it.
        root.find("devices").remove(root.find("devices/graphics"))  # type: ignore[union-attr,arg-type]
    return ElementTree.tostring(root, encoding="unicode")


def live_tap(domain: libvirt.virDomain) -> str:
    target = ElementTree.fromstring(domain.XMLDesc(0)).find("devices/interface/target")
    return "" if target is None else target.get("dev", "")


def rules_in_force(domains: dict[int, libvirt.virDomain]) -> str:
    chains = read_nat_chains()
    good = 0
    for ordinal, domain in domains.items():
        identity = slot_identity(FACTORY, ordinal)
        if not clean_traffic_problems(chains, live_tap(domain), identity.mac_address, identity.ip_address):
            good += 1
    return f"{good} of {len(domains)}"


def create_all(connections: list[libvirt.virConnect], xmls: list[str], flags: int = 0
               ) -> tuple[float, list[float], dict[int, libvirt.virDomain], list[str]]:
    """createXML of every XML from its own thread at once: (wall, call times, domains, errors)."""
    count = len(xmls)
    calls = [0.0] * count
    made: dict[int, libvirt.virDomain] = {}
    errors: list[str] = []
    barrier = threading.Barrier(count + 1)

    def create(index: int) -> None:
        connection = connections[index % len(connections)]
        barrier.wait()
        started = time.monotonic()
        try:
            made[index] = connection.createXML(xmls[index], flags)
        except libvirt.libvirtError as error:
            errors.append(str(error))
        calls[index] = time.monotonic() - started

    threads = [threading.Thread(target=create, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return time.monotonic() - started, calls, made, errors


def in_parallel(work: list[Callable[[], object]]) -> float:
    threads = [threading.Thread(target=job) for job in work]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def destroy_probes(connection: libvirt.virConnect) -> None:
    for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if domain.name().startswith(("probe-", "second-probe-")):
            try:
                domain.destroy()
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise  # gone already is fine: the test guest powers off once it finds no metadata


def release_probes(connections: list[libvirt.virConnect], bindings: list[libvirt.virNWFilterBinding]) -> None:
    """Destroy the probe domains, delete the bindings made for them and close every connection."""
    destroy_probes(connections[0])
    for binding in bindings:
        binding.delete()
    for connection in connections:
        connection.close()


def result(connections: str, filter_text: str, wall: float, calls: list[float], rules: str,
           errors: list[str], calls_wall: Optional[float] = None, **extra: object) -> dict[str, object]:
    """One run's figures; the overlap is of the createXML calls, over `calls_wall` (default `wall`)."""
    calls_wall = wall if calls_wall is None else calls_wall
    return {
        "connections": connections,
        "filter": filter_text,
        "domains": len(calls),
        "wall_seconds": round(wall, 2),
        "mean_call_seconds": round(sum(calls) / len(calls), 2),
        "overlap": round(sum(calls) / calls_wall, 1) if calls_wall else 0.0,
        "rules_in_force": rules,
        "errors": errors[:3],
        **extra,
    }


def run(guest: dict[str, str], domains: int, shared: bool, with_filter: bool, emulator: Optional[str],
        scratch: Path, bound_ahead: bool = False) -> dict[str, object]:
    connections = [libvirt.open(URI)] if shared else [libvirt.open(URI) for _ in range(domains)]
    xmls = [guest_xml(guest, ordinal, emulator, with_filter, scratch, "fixed" if bound_ahead else "network")
            for ordinal in range(domains)]
    bindings = []
    try:
        binding_started = time.monotonic()
        if bound_ahead:
            for ordinal in range(domains):
                bindings.append(connections[0].nwfilterBindingCreateXML(binding_xml(ordinal, tap_name(ordinal)), 0))
        binding_seconds = time.monotonic() - binding_started
        wall, calls, made, errors = create_all(connections, xmls)
        rules = rules_in_force(made)
        listed = len(connections[0].listAllNWFilterBindings(0)) if bound_ahead else 0
    finally:
        release_probes(connections, bindings)
    filter_text = "clean-traffic" if with_filter else "none"
    if bound_ahead:
        filter_text = (f"clean-traffic bound ahead per tap name ({binding_seconds:.2f} s for all, serially; "
                       f"{listed} bindings listed by libvirt while the guests ran)")
    return result("shared" if shared else "one per thread", filter_text, wall, calls, rules, errors)


def run_bind_paused(guest: dict[str, str], domains: int, emulator: Optional[str], scratch: Path) -> dict[str, object]:
    connections = [libvirt.open(URI) for _ in range(domains)]
    xmls = [guest_xml(guest, ordinal, emulator, False, scratch) for ordinal in range(domains)]
    bindings: list[libvirt.virNWFilterBinding] = []
    try:
        wall, calls, made, errors = create_all(connections, xmls, libvirt.VIR_DOMAIN_START_PAUSED)
        taps = {ordinal: live_tap(made[ordinal]) for ordinal in made}
        bind_seconds = in_parallel([
            lambda ordinal=ordinal: bindings.append(  # type: ignore[misc]
                connections[ordinal].nwfilterBindingCreateXML(binding_xml(ordinal, taps[ordinal]), 0))
            for ordinal in made])
        for domain in made.values():
            domain.resume()
        rules = rules_in_force(made)
    finally:
        release_probes(connections, bindings)
    return result("one per thread", f"clean-traffic bound to each paused domain's tap from {domains} threads at once "
                  f"({bind_seconds:.2f} s for all)", wall + bind_seconds, calls, rules, errors,
                  calls_wall=wall, create_paused_seconds=round(wall, 2), bind_seconds=round(bind_seconds, 2))


def run_slot_taps(guest: dict[str, str], domains: int, rounds: int, emulator: Optional[str],
                  scratch: Path) -> list[dict[str, object]]:
    connection = libvirt.open(URI)
    bridge = ElementTree.fromstring(connection.networkLookupByName(NETWORK).XMLDesc(0)).find("bridge")
    assert bridge is not None, f"{NETWORK} has no bridge"
    bindings: list[libvirt.virNWFilterBinding] = []
    results: list[dict[str, object]] = []
    try:
        for ordinal in range(domains):
            tap = tap_name(ordinal)
            subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "link", "set", tap, "address",
                            tap_mac_for(slot_identity(FACTORY, ordinal).mac_address),
                            "master", bridge.get("name", ""), "up"], check=True)
        started = time.monotonic()
        for ordinal in range(domains):
            bindings.append(connection.nwfilterBindingCreateXML(binding_xml(ordinal, tap_name(ordinal)), 0))
        binding_seconds = time.monotonic() - started
        for round_number in range(rounds):
            connections = [libvirt.open(URI) for _ in range(domains)]
            xmls = [guest_xml(guest, ordinal, emulator, False, scratch, "slot-tap") for ordinal in range(domains)]
            wall, calls, made, errors = create_all(connections, xmls)
            rules = rules_in_force(made)
            extra: dict[str, object] = {"round": round_number}
            if round_number == 0:
                try:
                    connection.createXML(guest_xml(guest, 0, emulator, False, scratch, "slot-tap", "second-"), 0)
                    extra["second_domain_on_a_tap_in_use"] = "STARTED (unsafe)"
                except libvirt.libvirtError as error:
                    extra["second_domain_on_a_tap_in_use"] = f"refused: {str(error)[:120]}"
            destroy_probes(connection)
            extra["rules_in_force_after_destroy"] = sum(
                not clean_traffic_problems(read_nat_chains(), tap_name(ordinal), slot_identity(FACTORY, ordinal).mac_address,
                                           slot_identity(FACTORY, ordinal).ip_address) for ordinal in range(domains))
            for each in connections:
                each.close()
            results.append(result("one per thread", f"clean-traffic bound once per persistent slot tap "
                                  f"({binding_seconds:.2f} s for {domains} bindings, serially, before round 0)",
                                  wall, calls, rules, errors, **extra))
    finally:
        destroy_probes(connection)
        for binding in bindings:
            binding.delete()
        for ordinal in range(domains):
            subprocess.run(["ip", "link", "del", tap_name(ordinal)], stderr=subprocess.DEVNULL, check=False)
        connection.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--connections", choices=("both", "shared", "per-thread"), default="both",
                        help="which connection cases the default run measures")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--bound-ahead", action="store_true", help="only bindings made before libvirt makes the taps")
    mode.add_argument("--bind-paused", action="store_true", help="only bindings made for paused domains' taps")
    mode.add_argument("--slot-taps", action="store_true", help="only persistent slot taps, bound once")
    arguments = parser.parse_args()
    guest = build_guest()
    connection = libvirt.open(URI)
    capabilities = connection.getDomainCapabilities(None, "x86_64", "pc", "qemu")
    connection.close()
    emulator = ElementTree.fromstring(capabilities).findtext("path")
    scratch = Path("/tmp/vac-bench-probe")
    if arguments.slot_taps:
        for each in run_slot_taps(guest, arguments.domains, arguments.rounds, emulator, scratch):
            print(json.dumps(each), flush=True)
        return 0
    for _ in range(arguments.rounds):
        if arguments.bound_ahead:
            print(json.dumps(run(guest, arguments.domains, False, False, emulator, scratch, bound_ahead=True)),
                  flush=True)
            continue
        if arguments.bind_paused:
            print(json.dumps(run_bind_paused(guest, arguments.domains, emulator, scratch)), flush=True)
            continue
        for shared in {"both": (True, False), "shared": (True,), "per-thread": (False,)}[arguments.connections]:
            for with_filter in (True, False):
                print(json.dumps(run(guest, arguments.domains, shared, with_filter, emulator, scratch)), flush=True)
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
