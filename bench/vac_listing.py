"""Benchmark: `vac machines` on a three-factory loopback space, beside Vac 03's client timing.

Starts three real `vacd` processes, each re-rooted in its own prefix and bound to its own
loopback address (127.0.0.21-23) on one port, creating machines through libvirt's test
driver. Then runs `vac machines` (a new process each time, as an admin would) against the
space and reports the wall time until it has listed every slot of every factory.

Vac 03's client waited for 2 s of silence after the last answer in every round (§3.7), so a
loss-free listing of any space took at least 2 s; that is the figure beside ours.

Usage: .venv/bin/python bench/vac_listing.py [--slots 16] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SPACE = "listing.vacbench.invalid"
PORT = 29960
FACTORIES = {f"l{n}.{SPACE}": f"127.0.0.{20 + n}" for n in (1, 2, 3)}
VAC03_SILENCE_SECONDS = 2.0


def configure(prefix: Path, name: str, address: str, slots: int, kernel: Path) -> None:
    (prefix / "etc").mkdir(parents=True)
    peers = " ".join(f"{peer}={peer_address}" for peer, peer_address in FACTORIES.items())
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = {SPACE}
factory_name = {name}
factories = {peers}
host_processors = {slots}
total_processors = {slots}
libvirt_uri = test:///default
vacquery_port = {PORT}
vacquery_bind_address = {address}
cycle_seconds = 5

[machinetype bench]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--runs", type=int, default=10)
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vac-listing-"))
    kernel = root / "vmlinuz"
    kernel.write_bytes(b"the test driver never boots this")
    processes = []
    try:
        for name, address in FACTORIES.items():
            prefix = root / name
            configure(prefix, name, address, arguments.slots, kernel)
            processes.append(subprocess.Popen(
                [str(REPOSITORY / ".venv/bin/vacd"), "--prefix", str(prefix)], stdin=subprocess.DEVNULL))
        first_prefix = root / next(iter(FACTORIES))
        expected_lines = 1 + len(FACTORIES) * arguments.slots  # a header, then one line per slot
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listing = subprocess.run([str(REPOSITORY / ".venv/bin/vac"), "--prefix", str(first_prefix), "machines"],
                                     capture_output=True, text=True)
            if listing.returncode == 0 and len(listing.stdout.splitlines()) == expected_lines:
                break
            time.sleep(1)
        else:
            print(listing.stdout, listing.stderr, file=sys.stderr)
            raise SystemExit("the space never answered completely")
        times = []
        for _ in range(arguments.runs):
            started = time.monotonic()
            listing = subprocess.run([str(REPOSITORY / ".venv/bin/vac"), "--prefix", str(first_prefix), "machines"],
                                     capture_output=True, text=True, check=True)
            times.append(time.monotonic() - started)
            assert len(listing.stdout.splitlines()) == expected_lines, listing.stdout
        print(listing.stdout)
        print(f"vac machines, 3 factories x {arguments.slots} slots, {arguments.runs} runs: "
              f"median {statistics.median(times):.3f} s, max {max(times):.3f} s "
              f"(Vac 03's client: at least {VAC03_SILENCE_SECONDS:.1f} s of trailing silence per listing; "
              f"ratio {VAC03_SILENCE_SECONDS / statistics.median(times):.1f}x)")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
