"""Run a real vac factory in a scratch prefix, show it working, and clean everything up.

Called by ./demo after the dependencies are installed and libvirtd answers. Two
machinetypes share the factory 3:1: `work` runs a payload for a while and reports
`200 Success`; `nowork` finds nothing to do and reports `300 No more work`, so the factory
backs it off. Everything the demo makes is removed on exit: the vacd process (by PID),
every domain it created (by UUID from the slot records), the slot taps its vacd made (and
vacd's filter table, if no slot tap is left), the vac network if the demo made it, and the
scratch prefix.

The demo exits non-zero, with the reason, when no machine reached Running (issue 8 item
12: from a clone under /root it printed four `700 Failed to start` machines and exited 0).
The scratch prefix is in /var/tmp, traversable by the user QEMU runs as, never in the clone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vacd.backends.slottaps import (
    SlotTapError,
    present_slot_tap_ordinals,
    remove_filter_if_no_slot_taps,
    remove_slot_tap,
)
from vacd.slots import slot_tap_name

REPOSITORY = Path(__file__).resolve().parents[1]
VENV_BIN = REPOSITORY / ".venv" / "bin"
NETWORK_NAME = "vac_169.254.0.0"
FACTORY_NAME = "factory1.vacdemo.invalid"
SPACE = "vacdemo.invalid"
RESPONDER_ADDRESS = "127.0.0.1"
RESPONDER_PORT = 19995

WORK_PAYLOAD = """#!/bin/sh
echo "payload: ##user_data_machinetype## on ##user_data_machine_hostname## uuid=##user_data_uuid##"
cat /run/meta_data.json 2>/dev/null | head -c 300; echo
sleep 25
http-put http://169.254.169.253/joboutputs/shutdown_message "200 Success"
"""

NOWORK_PAYLOAD = """#!/bin/sh
echo "payload: ##user_data_machinetype## finds no work"
http-put http://169.254.169.253/joboutputs/shutdown_message "300 No more work"
"""


def build_guest() -> dict[str, str]:
    output = subprocess.run(
        [sys.executable, str(REPOSITORY / "tests" / "guest" / "build-guest"), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output)  # type: ignore[no-any-return]


def write_configuration(prefix: Path, guest: dict[str, str]) -> None:
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc" / "vac.conf").write_text(f"""\
[settings]
vac_space = {SPACE}
factory_name = {FACTORY_NAME}
factories = {FACTORY_NAME}={RESPONDER_ADDRESS}
host_processors = 4
total_processors = 4
mb_per_processor = 128
hs06_per_processor = 10
cycle_seconds = 10
shutdown_grace_seconds = 10
vacquery_port = {RESPONDER_PORT}
vacquery_bind_address = {RESPONDER_ADDRESS}
udp_timeout_seconds = 1

[machinetype work]
target_share = 3
machine_model = vm-raw
root_kernel = {guest['kernel']}
root_initrd = {guest['initrd']}
kernel_command_line = {guest['cmdline']}
user_data = work.sh
max_wallclock_seconds = 300
min_wallclock_seconds = 300
fizzle_seconds = 10
backoff_seconds = 10

[machinetype nowork]
target_share = 1
machine_model = vm-raw
root_kernel = {guest['kernel']}
root_initrd = {guest['initrd']}
kernel_command_line = {guest['cmdline']}
user_data = nowork.sh
max_wallclock_seconds = 300
min_wallclock_seconds = 300
fizzle_seconds = 20
backoff_seconds = 40
""")
    for machinetype, payload in (("work", WORK_PAYLOAD), ("nowork", NOWORK_PAYLOAD)):
        files = prefix / "var/lib/vac/machinetypes" / machinetype / "files"
        files.mkdir(parents=True)
        (files / f"{machinetype}.sh").write_text(payload)


def machines_that_ran(prefix: Path) -> set[str]:
    """Names of the machines libvirt started: vacd writes `started` once create succeeded."""
    return {started.parent.name for started in (prefix / "var/lib/vac/machines").glob("*/started")}


def last_creation_error(prefix: Path, log_file: Path) -> str:
    """Why creations failed, from the factory's error file or else its log."""
    error_file = prefix / "var/lib/vac/factory-error"
    try:
        return error_file.read_text().strip()
    except OSError:
        pass
    try:
        failures = [line for line in log_file.read_text().splitlines() if "creation failed" in line]
    except OSError:
        failures = []
    if failures:
        return failures[-1]
    gate = last_gate(prefix)
    if gate:
        # Vac's load gate takes the largest of the 1, 5 and 15 minute load averages (§4.1):
        # after other heavy work the machine must be quiet for a while before the demo creates.
        return (f"no creation was attempted: every pass was held by the gate ({gate}); run the demo again "
                "once `uptime` shows all three load averages below that")
    return "no creation was attempted (see the log above)"


def last_gate(prefix: Path) -> str:
    """What held the factory's last pass from creating (status.json's gate), or ""."""
    try:
        document = json.loads((prefix / "var/lib/vac/status.json").read_text())
    except (OSError, ValueError):
        return ""
    gate = document.get("gate") if isinstance(document, dict) else None
    return gate if isinstance(gate, str) else ""


def network_exists() -> bool:
    return subprocess.run(["virsh", "-c", "qemu:///system", "net-info", NETWORK_NAME],
                          capture_output=True).returncode == 0


def show(prefix: Path, command: list[str]) -> None:
    result = subprocess.run([str(VENV_BIN / "vac"), "--prefix", str(prefix), *command],
                            capture_output=True, text=True, timeout=30)
    print(f"$ vac {' '.join(command)}")
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stdout.write(result.stderr)


def new_log_lines(log_file: Path, offset: int) -> tuple[list[str], int]:
    if not log_file.exists():
        return [], offset
    with open(log_file) as handle:
        handle.seek(offset)
        text = handle.read()
        return [line for line in text.splitlines() if " INFO " in line or " WARNING " in line
                or " ERROR " in line], handle.tell()


def destroy_recorded_domains(prefix: Path) -> None:
    """Destroy, by UUID, every domain the demo factory created (nothing else is touched)."""
    for record_file in (prefix / "var/lib/vac/machines").glob("*/machine.json"):
        uuid = json.loads(record_file.read_text())["uuid"]
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", uuid], capture_output=True)


def remove_slot_taps(taps_before: set[int]) -> None:
    """The slot taps the demo's vacd made (those the host did not have before it), then vacd's
    filter table if no slot tap is left: a factory's own taps and table are left alone."""
    try:
        for ordinal in set(present_slot_tap_ordinals()) - taps_before:
            remove_slot_tap(slot_tap_name(ordinal))
        remove_filter_if_no_slot_taps()
    except (SlotTapError, OSError) as error:
        print(f"demo: slot taps not all removed: {error}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a real vac factory demo on this machine.")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: Ctrl-C)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch prefix for inspection")
    arguments = parser.parse_args()

    print("demo: building the test guest (cached after the first run)")
    guest = build_guest()
    # Not under the clone, and traversable (0711, not listable): QEMU runs as libvirt-qemu
    # and opens overlays and consoles below the prefix.
    prefix = Path(tempfile.mkdtemp(prefix=f"vac-demo-{os.getpid()}-", dir="/var/tmp"))
    prefix.chmod(0o711)
    network_was_there = network_exists()
    taps_before = set(present_slot_tap_ordinals())
    write_configuration(prefix, guest)
    print(f"demo: factory {FACTORY_NAME} re-rooted in {prefix}; configuration:")
    subprocess.run([str(VENV_BIN / "vacd"), "--prefix", str(prefix), "--check-config"], check=True)
    log_file = prefix / "var/log/vacd"
    vacd = subprocess.Popen([str(VENV_BIN / "vacd"), "--prefix", str(prefix)], stdin=subprocess.DEVNULL)
    print(f"demo: vacd started, pid {vacd.pid}; Ctrl-C stops the demo and cleans up\n")
    interrupted = False
    failure = ""

    def stop(*_: object) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    offset = 0
    next_listing = started + 8
    try:
        while not interrupted and vacd.poll() is None:
            if arguments.duration and time.monotonic() - started > arguments.duration:
                break
            lines, offset = new_log_lines(log_file, offset)
            for line in lines:
                print("  log:", line)
            if time.monotonic() >= next_listing:
                print(f"\n--- {time.monotonic() - started:5.0f} s ---")
                show(prefix, ["status"])
                show(prefix, ["machines"])
                print()
                next_listing = time.monotonic() + 15
            time.sleep(1)
        if vacd.poll() is not None:
            print(f"demo: vacd exited with status {vacd.returncode}", file=sys.stderr)
        ran = machines_that_ran(prefix)
        if not ran:
            failure = f"no machine reached Running: {last_creation_error(prefix, log_file)}"
    finally:
        print("\ndemo: stopping vacd and cleaning up")
        if vacd.poll() is None:
            vacd.send_signal(signal.SIGTERM)
            try:
                vacd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                vacd.kill()
                vacd.wait()
        destroy_recorded_domains(prefix)
        remove_slot_taps(taps_before)
        if not network_was_there and network_exists():
            subprocess.run(["virsh", "-c", "qemu:///system", "net-destroy", NETWORK_NAME], capture_output=True)
            subprocess.run(["virsh", "-c", "qemu:///system", "net-undefine", NETWORK_NAME], capture_output=True)
        if arguments.keep:
            print(f"demo: prefix kept at {prefix}")
        else:
            shutil.rmtree(prefix, ignore_errors=True)
    if failure:
        print(f"demo: FAILED: {failure}", file=sys.stderr)
        return 1
    return 0 if vacd.returncode in (0, None, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
