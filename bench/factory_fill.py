"""Benchmark: how fast a factory fills its slots and refills a freed one, beside Vac 03's policy.

Runs the real `vacd` twice on this machine, each time re-rooted in a scratch prefix, with a
4-slot factory whose guests (the tiny test guest) run a short payload and power off:

- vacd: this project's defaults for the loop (several creations per pass, woken early by
  libvirt lifecycle events);
- vac03-policy: the same vacd configured as Vac 03 behaved: one creation per pass and a
  60 s wait between passes, no early wake-up (§1.3, Appendix C).

Measured with a libvirt event listener of its own, independent of vacd's logs:
- fill: vacd start -> all 4 slots hold running domains;
- refill: a guest's domain gone (powered off by its payload) -> a new domain running in
  that slot (mean and max over the refills seen).

Usage: .venv/bin/python bench/factory_fill.py [--payload-seconds 200] [--observe-seconds 320]
Needs root, libvirtd (tools/libvirtd-up) and the test guest (tests/guest/build-guest).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import libvirt

REPOSITORY = Path(__file__).resolve().parents[1]
FACTORY_NAME = "bench.vacbench.invalid"
SLOTS = 4


def build_guest() -> dict[str, str]:
    output = subprocess.run([sys.executable, str(REPOSITORY / "tests/guest/build-guest"), "--json"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def write_config(prefix: Path, guest: dict[str, str], payload_seconds: int, vac03_policy: bool) -> None:
    loop_options = (
        "max_creations_per_cycle = 1\ncycle_seconds = 60\nwake_on_events = false\n"
        if vac03_policy else "max_creations_per_cycle = 4\ncycle_seconds = 30\n"
    )
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = vacbench.invalid
factory_name = {FACTORY_NAME}
host_processors = {SLOTS}
total_processors = {SLOTS}
mb_per_processor = 128
vacquery_port = 19996
vacquery_bind_address = 127.0.0.1
{loop_options}
[machinetype bench]
target_share = 1
machine_model = vm-raw
root_kernel = {guest['kernel']}
root_initrd = {guest['initrd']}
kernel_command_line = {guest['cmdline']}
user_data = payload.sh
max_wallclock_seconds = 3600
min_wallclock_seconds = 3600
fizzle_seconds = 1
backoff_seconds = 1
""")
    files = prefix / "var/lib/vac/machinetypes/bench/files"
    files.mkdir(parents=True)
    (files / "payload.sh").write_text(
        f"#!/bin/sh\nsleep {payload_seconds}\nhttp-put http://169.254.169.253/joboutputs/shutdown_message '200 Success'\n"
    )


class DomainWatcher:
    """Records when each slot's domains start and stop, from libvirt lifecycle events."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        libvirt.virEventRegisterDefaultImpl()
        self.connection = libvirt.open("qemu:///system")
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.callback = self.connection.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    def _run(self) -> None:
        while self.running:
            libvirt.virEventRunDefaultImpl()

    def _on_event(self, connection: object, domain: libvirt.virDomain, event: int, detail: int, opaque: object) -> None:
        name = domain.name()
        if not name.startswith("bench-"):
            return
        kind = {libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped"}.get(event)
        if kind:
            with self.lock:
                self.events.append((time.monotonic(), name, kind))

    def running_names(self) -> set[str]:
        return {domain.name() for domain in self.connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if domain.name().startswith("bench-")}

    def close(self) -> None:
        self.connection.domainEventDeregisterAny(self.callback)
        self.running = False
        self.connection.close()


def run_once(guest: dict[str, str], vac03_policy: bool, payload_seconds: int, observe_seconds: float) -> dict[str, object]:
    prefix = Path(tempfile.mkdtemp(prefix="vac-bench-"))
    write_config(prefix, guest, payload_seconds, vac03_policy)
    watcher = DomainWatcher()
    start = time.monotonic()
    vacd = subprocess.Popen([str(REPOSITORY / ".venv/bin/vacd"), "--prefix", str(prefix)], stdin=subprocess.DEVNULL)
    fill_seconds: Optional[float] = None
    try:
        while time.monotonic() - start < observe_seconds:
            if fill_seconds is None and len(watcher.running_names()) == SLOTS:
                fill_seconds = time.monotonic() - start
            time.sleep(0.2)
    finally:
        vacd.send_signal(signal.SIGTERM)
        vacd.wait(timeout=60)
        for record_file in (prefix / "var/lib/vac/machines").glob("*/machine.json"):
            uuid = json.loads(record_file.read_text())["uuid"]
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", uuid], capture_output=True)
        watcher.close()
        shutil.rmtree(prefix, ignore_errors=True)
    refills: list[float] = []
    with watcher.lock:
        events = list(watcher.events)
    for index, (stopped_at, name, kind) in enumerate(events):
        if kind != "stopped":
            continue
        later_start = next((at for at, other, what in events[index + 1:] if other == name and what == "started"), None)
        if later_start is not None:
            refills.append(later_start - stopped_at)
    return {
        "policy": "vac03-policy" if vac03_policy else "vacd",
        "fill_seconds": None if fill_seconds is None else round(fill_seconds, 1),
        "refills": len(refills),
        "refill_mean_seconds": round(statistics.mean(refills), 1) if refills else None,
        "refill_max_seconds": round(max(refills), 1) if refills else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload-seconds", type=int, default=200)
    parser.add_argument("--observe-seconds", type=float, default=320)
    arguments = parser.parse_args()
    guest = build_guest()
    results = [run_once(guest, vac03, arguments.payload_seconds, arguments.observe_seconds) for vac03 in (False, True)]
    ours, vac03 = results
    print(json.dumps(results, indent=1))
    if ours["fill_seconds"] and vac03["fill_seconds"]:
        print(f"fill: vacd {ours['fill_seconds']} s, vac03-policy {vac03['fill_seconds']} s, "
              f"ratio {float(vac03['fill_seconds']) / float(ours['fill_seconds']):.1f}x")  # type: ignore[arg-type]
    if ours["refill_mean_seconds"] and vac03["refill_mean_seconds"]:
        print(f"refill mean: vacd {ours['refill_mean_seconds']} s, vac03-policy {vac03['refill_mean_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
