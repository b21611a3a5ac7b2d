"""Benchmark: how fast a factory fills N slots with real guests, by phase, beside Vac 03's policy.

Runs the real `vacd` (this worktree's code) twice on this machine, each time re-rooted in a
scratch prefix, with an N-slot factory (`--slots`, 128 MiB guests) whose guests (the tiny
test guest) run a payload and power off:

- vacd: up to `--max-creations` creations per cycle (default: the slot count, what a site
  that wants its node full fast sets; vacd's default is 4), woken early by libvirt events;
- vac03-policy: the same vacd configured as Vac 03 behaved: one creation per pass and a
  60 s wait between passes, no early wake-up (§1.3, Appendix C). At one creation a minute a
  32-slot fill takes half an hour, so this run stops after `--vac03-creations` guests run and
  its fill time is that rate carried to N slots (first guest + (N - 1) x the mean interval).

Measured with a libvirt event listener of its own, independent of vacd's logs:
- fill: vacd start -> all N slots hold running domains; per slot = fill / N;
- first domain: vacd start -> the first running domain (start-up: network, first pass);
- first decision: vacd start -> the first machine directory (the factory makes it when it
  decides a creation), and from there to all N running (what start-up does not explain);
- refill: a guest's domain gone (powered off by its payload) -> a new domain running in
  that slot (mean and max over the refills seen; only with --observe-seconds past the payload);
- the load average (1 min) at start and when the slots are full;
- rules in force: for how many running guests the kernel shows their slot's filter (the
  slot's pin in vacd's nftables table on its tap), once all N run;
- vac_creation_phase_seconds from vacd's own /metrics: count, mean and max bucket per phase.

Both runs set overload_per_processor = 100, as the real-VM tests do: this 2-processor machine
is shared, and Vac's load gate (load > 1.25 x host processors) would otherwise hold the first
pass for minutes whenever other work runs, which measures the neighbours, not the fill.

With `--rounds R` the vacd fill runs R times in a row, each a new vacd with its guests
destroyed in between: VM slots keep their taps from one round to the next, and vacd's
filter table stays (vacd.backends.slottaps), so round 0 after `--fresh-slot-taps` (every
slot tap, the table and any libvirt binding of a slot tap removed first) is the first fill
after a host boot, and later rounds are a vacd restart or a refill. The bench removes every
slot tap and the table at its end.

Usage: .venv/bin/python bench/factory_fill.py --slots 16 [--max-creations 16] [--payload-seconds 600]
       [--observe-seconds 0] [--vac03-creations 3] [--rounds 1] [--fresh-slot-taps]
Needs root, libvirtd (tools/libvirtd-up) and the test guest (tests/guest/build-guest); real
guests: run under `flock /tmp/vac-realvm.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import libvirt

REPOSITORY = Path(__file__).resolve().parents[1]
FACTORY_NAME = "bench.vacbench.invalid"
METRICS_ADDRESS = "127.0.0.1:19997"
# After the last slot runs, this long for the STARTED events and the last phases to land.
SETTLE_SECONDS = 2.0
GIVE_UP_SECONDS = 1800.0


def build_guest() -> dict[str, str]:
    output = subprocess.run([sys.executable, str(REPOSITORY / "tests/guest/build-guest"), "--json"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def write_config(prefix: Path, guest: dict[str, str], payload_seconds: int, vac03_policy: bool, slots: int,
                 max_creations: int) -> None:
    loop_options = (
        "max_creations_per_cycle = 1\ncycle_seconds = 60\nwake_on_events = false\n"
        if vac03_policy else f"max_creations_per_cycle = {max_creations}\ncycle_seconds = 30\n"
    )
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = vacbench.invalid
factory_name = {FACTORY_NAME}
host_processors = {slots}
total_processors = {slots}
mb_per_processor = 128
vacquery_port = 19996
vacquery_bind_address = 127.0.0.1
metrics_address = {METRICS_ADDRESS}
overload_per_processor = 100
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
        # Running, not merely active: libvirt lists a domain while QEMU waits paused for its
        # network filter, before createXML returns.
        return {domain.name() for domain in self.connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
                if domain.name().startswith("bench-")}

    def close(self) -> None:
        self.connection.domainEventDeregisterAny(self.callback)
        self.running = False
        self.connection.close()


def phase_histogram(metrics_text: str) -> dict[str, dict[str, float]]:
    """vac_creation_phase_seconds per phase: count, mean and the upper bound holding 95 %."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = re.match(r'vac_creation_phase_seconds_(bucket|sum|count)\{(.*)\} (\S+)$', line)
        if not match:
            continue
        kind, labels, value = match.group(1), dict(re.findall(r'(\w+)="([^"]*)"', match.group(2))), float(match.group(3))
        phase = labels["phase"]
        if kind == "bucket":
            buckets.setdefault(phase, []).append((float(labels["le"]), value))
        elif kind == "sum":
            sums[phase] = value
        else:
            counts[phase] = value
    table: dict[str, dict[str, float]] = {}
    for phase, count in counts.items():
        if not count:
            continue
        p95 = next(bound for bound, seen in sorted(buckets[phase]) if seen >= 0.95 * count)
        table[phase] = {"count": count, "mean_seconds": round(sums[phase] / count, 3), "p95_le_seconds": p95}
    return table


def rules_in_force(connection: libvirt.virConnect) -> str:
    """For how many running bench guests the kernel shows their slot's filter, and on what interfaces.

    A slot tap's filter is its pin in vacd's nftables table (vacd.backends.slotfilter); a
    `<filterref>` interface's is libvirt's clean-traffic rules in the ebtables nat table.
    """
    import xml.etree.ElementTree as ElementTree

    from tests.integration.ebtables_rules import clean_traffic_problems, read_nat_chains
    from vacd.backends.slotfilter import TapPin, pins_in_table, read_table
    from vacd.slots import ordinal_of_machine_name, slot_identity

    pins = pins_in_table(read_table() or [])
    chains = None
    good, kinds = 0, set()
    domains = [domain for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
               if domain.name().startswith("bench-")]
    for domain in domains:
        interface = ElementTree.fromstring(domain.XMLDesc(0)).find("devices/interface")
        target = None if interface is None else interface.find("target")
        ordinal = ordinal_of_machine_name(FACTORY_NAME, domain.name())
        if interface is None or target is None or ordinal is None:
            continue
        kinds.add(interface.get("type", "?"))
        identity = slot_identity(FACTORY_NAME, ordinal)
        tap = target.get("dev", "")
        if interface.get("type") == "ethernet":
            good += TapPin(tap, identity.mac_address.lower(), identity.ip_address) in pins
        else:
            chains = chains if chains is not None else read_nat_chains()
            good += not clean_traffic_problems(chains, tap, identity.mac_address, identity.ip_address)
    return f"{good} of {len(domains)} (interfaces: {', '.join(sorted(kinds))})"


def remove_slot_taps() -> list[str]:
    """What a host boot removes: every slot tap no domain holds, vacd's filter table and any
    libvirt binding of a slot tap (made by vacd releases that bound clean-traffic to each tap)."""
    from vacd.backends.slottaps import remove_idle_slot_taps_and_filter
    from vacd.network import BRIDGE_NAME
    from vacd.slots import ordinal_of_slot_tap

    done = remove_idle_slot_taps_and_filter(BRIDGE_NAME)
    connection = libvirt.open("qemu:///system")
    try:
        for binding in connection.listAllNWFilterBindings(0):
            if ordinal_of_slot_tap(binding.portDev()) is not None:
                binding.delete()
                done.append(f"unbound {binding.portDev()}")
    finally:
        connection.close()
    return done


def scrape_metrics() -> str:
    with urllib.request.urlopen(f"http://{METRICS_ADDRESS}/metrics", timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def run_once(guest: dict[str, str], vac03_policy: bool, slots: int, max_creations: int, payload_seconds: int,
             observe_seconds: float, stop_after_running: int) -> dict[str, object]:
    prefix = Path(tempfile.mkdtemp(prefix="vac-bench-"))
    write_config(prefix, guest, payload_seconds, vac03_policy, slots, max_creations)
    watcher = DomainWatcher()
    load_at_start = os.getloadavg()[0]
    start = time.monotonic()
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    log = open(Path(tempfile.gettempdir()) / f"vac-bench-fill-{'vac03' if vac03_policy else 'vacd'}.log", "wb")
    vacd = subprocess.Popen([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment, cwd=REPOSITORY)
    fill_seconds: Optional[float] = None
    first_seconds: Optional[float] = None
    first_decision_seconds: Optional[float] = None
    machines = prefix / "var/lib/vac/machines"
    running_at: list[float] = []
    load_at_fill: Optional[float] = None
    phases: dict[str, dict[str, float]] = {}
    rules = ""
    try:
        while time.monotonic() - start < max(observe_seconds, GIVE_UP_SECONDS):
            running = len(watcher.running_names())
            while len(running_at) < min(running, stop_after_running):
                running_at.append(time.monotonic() - start)
            if first_seconds is None and running:
                first_seconds = time.monotonic() - start
            if first_decision_seconds is None and machines.is_dir() and any(machines.iterdir()):
                first_decision_seconds = time.monotonic() - start
            if fill_seconds is None and running == slots:
                fill_seconds = time.monotonic() - start
                load_at_fill = os.getloadavg()[0]
            elapsed = time.monotonic() - start
            if (len(running_at) >= stop_after_running and elapsed - running_at[-1] > SETTLE_SECONDS
                    and elapsed >= observe_seconds):
                break
            if vacd.poll() is not None:
                raise RuntimeError(f"vacd exited {vacd.returncode}")
            time.sleep(0.1)
        rules = rules_in_force(watcher.connection)
        try:
            phases = phase_histogram(scrape_metrics())
        except OSError as error:
            print(f"cannot read vacd's /metrics: {error}", file=sys.stderr)
    finally:
        vacd.send_signal(signal.SIGTERM)
        vacd.wait(timeout=60)
        for record_file in (prefix / "var/lib/vac/machines").glob("*/machine.json"):
            uuid = json.loads(record_file.read_text())["uuid"]
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", uuid], capture_output=True)
        watcher.close()
        log.close()
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
    result: dict[str, object] = {
        "policy": "vac03-policy" if vac03_policy else f"vacd max_creations_per_cycle={max_creations}",
        "slots": slots,
        "first_running_seconds": None if first_seconds is None else round(first_seconds, 1),
        "first_decision_seconds": None if first_decision_seconds is None else round(first_decision_seconds, 1),
        "first_decision_to_all_running_seconds": None if fill_seconds is None or first_decision_seconds is None
        else round(fill_seconds - first_decision_seconds, 1),
        "fill_seconds": None if fill_seconds is None else round(fill_seconds, 1),
        "per_slot_seconds": None if fill_seconds is None else round(fill_seconds / slots, 2),
        "load_average_start": round(load_at_start, 2),
        "load_average_full": None if load_at_fill is None else round(load_at_fill, 2),
        "refills": len(refills),
        "refill_mean_seconds": round(statistics.mean(refills), 1) if refills else None,
        "refill_max_seconds": round(max(refills), 1) if refills else None,
        "rules_in_force": rules,
        "phases": phases,
    }
    if fill_seconds is None and len(running_at) >= 2:
        interval = (running_at[-1] - running_at[0]) / (len(running_at) - 1)
        result["measured_running"] = len(running_at)
        result["interval_seconds"] = round(interval, 1)
        result["fill_seconds_at_this_rate"] = round(running_at[0] + (slots - 1) * interval, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--max-creations", type=int, default=None, help="max_creations_per_cycle (default: --slots)")
    parser.add_argument("--payload-seconds", type=int, default=600)
    parser.add_argument("--observe-seconds", type=float, default=0,
                        help="keep watching this long (refills need it past --payload-seconds); 0: stop when full")
    parser.add_argument("--vac03-creations", type=int, default=3,
                        help="Vac 03 policy: stop after this many guests run and carry the rate to --slots (0: skip)")
    parser.add_argument("--rounds", type=int, default=1, help="vacd fills in a row (slot taps kept between them)")
    parser.add_argument("--fresh-slot-taps", action="store_true",
                        help="remove every slot tap, the filter table and bindings first: round 0 is a first fill after a host boot")
    arguments = parser.parse_args()
    guest = build_guest()
    if arguments.fresh_slot_taps:
        print(json.dumps({"slot_taps_removed_first": remove_slot_taps()}), flush=True)
    results = []
    try:
        for round_number in range(arguments.rounds):
            ours = run_once(guest, False, arguments.slots, arguments.max_creations or arguments.slots,
                            arguments.payload_seconds, arguments.observe_seconds, arguments.slots)
            ours["round"] = round_number
            print(json.dumps(ours), flush=True)
            results.append(ours)
        if arguments.vac03_creations:
            results.append(run_once(guest, True, arguments.slots, 1, arguments.payload_seconds,
                                    arguments.observe_seconds, min(arguments.vac03_creations, arguments.slots)))
    finally:
        removed = remove_slot_taps()
        print(json.dumps({"slot_taps_removed_at_end": len(removed)}), flush=True)
    print(json.dumps(results, indent=1))
    vac03 = results[-1] if arguments.vac03_creations else None
    vac03_fill = None if vac03 is None else (vac03["fill_seconds"] or vac03.get("fill_seconds_at_this_rate"))
    if ours["fill_seconds"] and vac03_fill:
        print(f"fill of {arguments.slots}: vacd {ours['fill_seconds']} s ({ours['per_slot_seconds']} s/slot), "
              f"vac03-policy {vac03_fill} s, ratio {float(vac03_fill) / float(ours['fill_seconds']):.1f}x")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
