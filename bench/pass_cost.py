"""Benchmark: what one reconcile pass costs over a full, unchanged node (issue 15 items 2 and 5).

Runs the real `vacd` (the daemon, its loop, its publishing) re-rooted in a scratch prefix
with the libvirt test driver (`test:///default`: domains are bookkeeping only, so the
figures are vacd's own cost), at each slot count given. For each:

1. start vacd with one 1-processor slot per processor and `cycle_seconds = 1`, and wait
   until status.json shows every slot Running (the fill time is printed too);
2. let a few passes settle, then read /metrics twice, `--passes` passes apart:
   CPU per pass = delta `vac_pass_cpu_seconds_total` / delta `vac_passes_total` (the loop
   thread's thread_time, its publishing included) and wall time per pass from
   `vac_pass_duration_seconds`;
3. RSS (VmRSS, VmHWM) from /proc/<pid>/status;
4. with `--strace` (and strace installed), attach `strace -f -c` for `--passes` more passes
   and print the openat / fsync / rename / stat counts per pass (strace slows vacd, so
   this window is separate from the CPU window);
5. with `--profile DIR`, vacd runs under bench/profiled_vacd.py, and its loop thread is
   profiled (cProfile on the thread's CPU time) for `--passes` more passes, again outside
   the CPU window; the stats go to DIR/<tree>-<slots>.pstats and the top functions are
   printed.

`--code DIR` runs the vacd found in DIR (a checkout or `git archive` export), so two trees
can be measured side by side in one run: `--code /tmp/vac-before --code .` prints both
and their ratios.

Usage: .venv/bin/python bench/pass_cost.py [--slots 16,64,128,256] [--passes 20]
       [--code DIR ...] [--strace] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

REPOSITORY = Path(__file__).resolve().parents[1]
FACTORY_NAME = "f1.passcost.invalid"
FILL_TIMEOUT_SECONDS = 600.0
SETTLE_PASSES = 3
METRICS_TRIES = 3
STRACE_CALLS = ("openat", "fsync", "rename", "newfstatat", "statx", "utimensat")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(prefix: Path, slots: int) -> int:
    """A test-driver factory of `slots` one-processor slots; returns its metrics port."""
    kernel = prefix / "guest/vmlinuz"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"not a kernel: the test driver boots nothing")
    metrics_port = free_port(socket.SOCK_STREAM)
    (prefix / "etc").mkdir(parents=True)
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = passcost.invalid
factory_name = {FACTORY_NAME}
host_processors = {slots}
total_processors = {slots}
mb_per_processor = 64
libvirt_uri = test:///default
vacquery_port = {free_port(socket.SOCK_DGRAM)}
vacquery_bind_address = 127.0.0.1
metrics_address = 127.0.0.1:{metrics_port}
cycle_seconds = 1
max_creations_per_cycle = {slots}
# The host is shared and busy (load above 2.5 on 2 processors): the overload gate would
# hold the fill back, and the test driver creates nothing that loads it.
overload_per_processor = 1000

[machinetype bench]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
max_wallclock_seconds = 86400
min_wallclock_seconds = 86400
""")
    return metrics_port


def metric_sums(port: int) -> dict[str, float]:
    """The pass counters on /metrics, summed over their labels."""
    for attempt in range(METRICS_TRIES):
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            break
        except OSError:  # a scrape lost on a loaded machine (seen under load 15): ask again
            if attempt == METRICS_TRIES - 1:
                raise
    sums: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(vac_passes_total|vac_pass_cpu_seconds_total|vac_pass_duration_seconds_(?:sum|count))"
                         r"(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            sums[match.group(1)] = sums.get(match.group(1), 0.0) + float(match.group(2))
    return sums


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def running_slots(prefix: Path) -> int:
    try:
        document = json.loads((prefix / "var/lib/vac/status.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for slot in document.get("slots", []) if slot.get("state") == "Running")


def wait_until(condition: Callable[[], bool], timeout: float, process: "subprocess.Popen[bytes]") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vacd exited with {process.returncode}")
        if condition():
            return True
        time.sleep(0.2)
    return False


def wait_for_passes(port: int, count: int, process: "subprocess.Popen[bytes]") -> dict[str, float]:
    start = metric_sums(port).get("vac_passes_total", 0.0)
    wait_until(lambda: metric_sums(port).get("vac_passes_total", 0.0) >= start + count, 60.0 + 5 * count, process)
    return metric_sums(port)


def strace_counts(pid: int, port: int, passes: int, process: "subprocess.Popen[bytes]") -> dict[str, float]:
    """System calls per pass over `passes` passes, by `strace -f -c` attached to vacd."""
    output = Path(tempfile.mktemp(prefix="vac-strace-"))
    before = metric_sums(port)["vac_passes_total"]
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(output), "-e", "trace=" + ",".join(STRACE_CALLS),
                               "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    after_start = metric_sums(port)["vac_passes_total"]
    wait_for_passes(port, passes, process)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    traced_passes = metric_sums(port)["vac_passes_total"] - min(before, after_start)
    counts: dict[str, float] = {}
    for line in output.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in STRACE_CALLS:
            counts[parts[-1]] = int(parts[3]) / max(1.0, traced_passes)
    output.unlink()
    return counts


def profile_passes(pid: int, port: int, passes: int, output: Path, process: "subprocess.Popen[bytes]") -> None:
    """cProfile vacd's loop thread for `passes` passes (bench/profiled_vacd.py) and print its top."""
    os.kill(pid, signal.SIGUSR2)
    wait_for_passes(port, passes, process)
    os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: output.exists() and output.stat().st_size > 0, 60.0, process)
    time.sleep(0.5)  # dump_stats has created the file; let it finish writing
    print(f"profile of {passes} passes: {output}", flush=True)
    statistics = pstats.Stats(str(output))
    statistics.sort_stats("tottime").print_stats(25)
    statistics.sort_stats("cumulative").print_stats(30)
    sys.stdout.flush()


def measure(code: Path, slots: int, passes: int, trace: bool, profile_dir: Optional[Path] = None) -> dict[str, object]:
    prefix = Path(tempfile.mkdtemp(prefix="vac-passcost-"))
    port = write_config(prefix, slots)
    log_path = prefix / "vacd.log"
    profile_output = profile_dir / f"{code.name}-{slots}.pstats" if profile_dir is not None else None
    command = [sys.executable, "-m", "vacd.daemon"]
    environment = dict(os.environ, PYTHONPATH=str(code))
    if profile_output is not None:
        profile_output.unlink(missing_ok=True)
        command = [sys.executable, str(REPOSITORY / "bench/profiled_vacd.py")]
        environment["VAC_BENCH_PROFILE"] = str(profile_output)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*command, "--prefix", str(prefix), "--stderr"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=code, env=environment,
        )
    try:
        started = time.monotonic()
        if not wait_until(lambda: running_slots(prefix) >= slots, FILL_TIMEOUT_SECONDS, process):
            kept = Path(tempfile.mkdtemp(prefix="vac-passcost-log-")) / "vacd.log"
            shutil.copy(log_path, kept)
            raise RuntimeError(f"{slots} slots not all Running after {FILL_TIMEOUT_SECONDS}s; see {kept}")
        fill_seconds = time.monotonic() - started
        wait_for_passes(port, SETTLE_PASSES, process)
        first = metric_sums(port)
        last = wait_for_passes(port, passes, process)
        counted = last["vac_passes_total"] - first["vac_passes_total"]
        result: dict[str, object] = {
            "slots": slots,
            "fill_seconds": fill_seconds,
            "passes": counted,
            "cpu_ms_per_pass": 1000 * (last["vac_pass_cpu_seconds_total"] - first["vac_pass_cpu_seconds_total"]) / counted,
            "wall_ms_per_pass": 1000 * (last["vac_pass_duration_seconds_sum"] - first["vac_pass_duration_seconds_sum"])
            / (last["vac_pass_duration_seconds_count"] - first["vac_pass_duration_seconds_count"]),
            **{key.lower() + "_mib": value / 1024 for key, value in memory_kib(process.pid).items()},
        }
        if trace and shutil.which("strace"):
            result["syscalls_per_pass"] = strace_counts(process.pid, port, passes, process)
        if profile_output is not None:
            profile_passes(process.pid, port, passes, profile_output, process)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(prefix, ignore_errors=True)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", default="16,64,128,256", help="comma-separated slot counts")
    parser.add_argument("--passes", type=int, default=20, help="unchanged passes measured per slot count")
    parser.add_argument("--code", action="append", type=Path,
                        help="a tree whose vacd is run (repeatable; default this repository)")
    parser.add_argument("--strace", action="store_true", help="also count system calls per pass (slow)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also cProfile the loop thread over --passes more passes; stats go to DIR")
    arguments = parser.parse_args(argv)
    trees = [path.resolve() for path in (arguments.code or [REPOSITORY])]
    slot_counts = [int(part) for part in arguments.slots.split(",")]
    profile_dir: Optional[Path] = None
    if arguments.profile is not None:
        profile_dir = arguments.profile.resolve()
        profile_dir.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load_average()}", flush=True)
    results: dict[Path, list[dict[str, object]]] = {tree: [] for tree in trees}
    for slots in slot_counts:
        for tree in trees:
            result = measure(tree, slots, arguments.passes, arguments.strace, profile_dir)
            results[tree].append(result)
            print(json.dumps({"code": str(tree), **result}), flush=True)
    print(f"load average at end: {load_average()}")
    print()
    header = "| slots | " + " | ".join(f"CPU ms/pass ({tree.name})" for tree in trees)
    header += " | " + " | ".join(f"RSS MiB ({tree.name})" for tree in trees)
    if len(trees) == 2:
        header += " | CPU ratio (2nd/1st)"
    print(header + " |")
    print("|" + "---|" * (header.count("|")))
    for index, slots in enumerate(slot_counts):
        row = [f"{results[tree][index]['cpu_ms_per_pass']:.1f}" for tree in trees]
        row += [f"{results[tree][index]['vmrss_mib']:.0f}" for tree in trees]
        if len(trees) == 2:
            before, after = (float(results[tree][index]["cpu_ms_per_pass"]) for tree in trees)  # type: ignore[arg-type]
            row.append(f"{after / before:.2f}")
        print(f"| {slots} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
