"""Benchmark: does libvirtd serialise createXML, and what of it: the connection or the filter?

Starts N transient domains of the test guest (the XML vacd makes, 128 MiB, on the network
vac_169.254.0.0) from N threads at once, in four ways, and destroys them after each:

- one connection shared by the threads (what vacd did), or one connection per thread;
- with the `clean-traffic` network filter binding vacd puts on every interface, or without;
- (`--bound-ahead`) with the same binding made beforehand through virNWFilterBindingCreateXML
  for a tap name fixed per slot (`<target dev='vacpNN'/>`), as a factory could make one
  binding per slot once and reuse it: the binding is timed apart, createXML then has none.

Reports the wall time until every createXML returned, the mean call, and the calls' overlap
(sum of call times / wall time: N means fully parallel, 1 means one after another).
This is not vacd: it separates what libvirt serialises from what vacd does.

Usage: .venv/bin/python bench/libvirt_create_parallel.py [--domains 8] [--rounds 1]
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
from typing import Optional

import libvirt

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from vacd.backends.base import MachineSpec  # noqa: E402
from vacd.backends.domainxml import domain_xml, machine_disks  # noqa: E402
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


def binding_xml(guest_xml_text: str, ordinal: int) -> str:
    """The clean-traffic binding libvirt would make for this domain's interface, for tap_name(ordinal)."""
    root = ElementTree.fromstring(guest_xml_text)
    mac = root.find("devices/interface/mac").get("address")  # type: ignore[union-attr]
    identity = slot_identity(FACTORY, ordinal)
    return (f"<filterbinding><owner><name>{root.findtext('name')}</name><uuid>{root.findtext('uuid')}</uuid></owner>"
            f"<portdev name='{tap_name(ordinal)}'/><mac address='{mac}'/>"
            f"<filterref filter='clean-traffic'><parameter name='IP' value='{identity.ip_address}'/></filterref>"
            "</filterbinding>")


def guest_xml(guest: dict[str, str], ordinal: int, emulator: Optional[str], with_filter: bool, scratch: Path,
              fixed_tap: bool = False) -> str:
    identity = slot_identity(FACTORY, ordinal)
    spec = MachineSpec(name=identity.machine_name, uuid=str(uuid.uuid4()), ordinal=ordinal,
                       mac_address=identity.mac_address, ip_address=identity.ip_address, vnc_port=identity.vnc_port,
                       processors=1, memory_mib=128, machine_dir=scratch / identity.machine_name,
                       root_kernel=Path(guest["kernel"]), root_initrd=Path(guest["initrd"]),
                       kernel_command_line=guest["cmdline"])
    spec.machine_dir.mkdir(parents=True, exist_ok=True)
    xml = domain_xml(spec, domain_type="qemu", network_name=NETWORK, disks=machine_disks(spec, scratch),
                     emulator=emulator)
    if with_filter:
        return xml
    root = ElementTree.fromstring(xml)
    for interface in root.iterfind("devices/interface"):
        for filterref in interface.findall("filterref"):
            interface.remove(filterref)
        if fixed_tap:
            ElementTree.SubElement(interface, "target", dev=tap_name(ordinal))
    return ElementTree.tostring(root, encoding="unicode")


def run(guest: dict[str, str], domains: int, shared: bool, with_filter: bool, emulator: Optional[str],
        scratch: Path, bound_ahead: bool = False) -> dict[str, object]:
    connections = [libvirt.open(URI)] if shared else [libvirt.open(URI) for _ in range(domains)]
    xmls = [guest_xml(guest, ordinal, emulator, with_filter, scratch, bound_ahead) for ordinal in range(domains)]
    bindings = []
    binding_started = time.monotonic()
    if bound_ahead:
        for ordinal in range(domains):
            bindings.append(connections[0].nwfilterBindingCreateXML(binding_xml(
                guest_xml(guest, ordinal, emulator, True, scratch), ordinal), 0))
    binding_seconds = time.monotonic() - binding_started
    calls: list[float] = [0.0] * domains
    errors: list[str] = []
    barrier = threading.Barrier(domains + 1)

    def create(index: int) -> None:
        connection = connections[0 if shared else index]
        barrier.wait()
        started = time.monotonic()
        try:
            connection.createXML(xmls[index], 0)
        except libvirt.libvirtError as error:
            errors.append(str(error))
        calls[index] = time.monotonic() - started

    threads = [threading.Thread(target=create, args=(index,)) for index in range(domains)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    for domain in connections[0].listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if domain.name().startswith("probe-"):
            domain.destroy()
    for binding in bindings:
        binding.delete()
    for connection in connections:
        connection.close()
    return {
        "connections": "shared" if shared else "one per thread",
        "filter": "clean-traffic" if with_filter else (
            f"clean-traffic bound ahead per tap ({binding_seconds:.2f} s for all, serially)" if bound_ahead else "none"),
        "domains": domains,
        "wall_seconds": round(wall, 2),
        "mean_call_seconds": round(sum(calls) / domains, 2),
        "overlap": round(sum(calls) / wall, 1),
        "errors": errors[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bound-ahead", action="store_true", help="only the bound-ahead case, per-thread connections")
    arguments = parser.parse_args()
    guest = build_guest()
    connection = libvirt.open(URI)
    capabilities = connection.getDomainCapabilities(None, "x86_64", "pc", "qemu")
    connection.close()
    emulator = ElementTree.fromstring(capabilities).findtext("path")
    scratch = Path("/tmp/vac-bench-probe")
    results = []
    for _ in range(arguments.rounds):
        if arguments.bound_ahead:
            results.append(run(guest, arguments.domains, False, False, emulator, scratch, bound_ahead=True))
            print(json.dumps(results[-1]), flush=True)
            continue
        for shared in (True, False):
            for with_filter in (True, False):
                results.append(run(guest, arguments.domains, shared, with_filter, emulator, scratch))
                print(json.dumps(results[-1]), flush=True)
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
