"""Benchmark: vacd's asyncio guest metadata server against a Vac-style forking HTTP/1.0 server.

Both servers answer the same requests with the same bytes from the same machine
directories: 64 machines made with the real Store and prepare_machine_dir under a
temporary prefix. The baseline is what Vac 03 ran (§1.2): socketserver.ForkingMixIn with
BaseHTTPRequestHandler, HTTP/1.0, one fork per request, the slot looked up on disk every
time. vacd's server runs GuestApiServer unchanged, in its own process and event loop.

Load (`bench/metadata_load.py`): `--clients` concurrent clients (default 200) spread over `--processes` load
processes, each client bound to one of 64 loopback source addresses 127.0.0.1-64, which
both servers map to slots 1-64. Clients alternate GET /openstack/latest/meta_data.json and
GET /latest/user-data in a closed loop (no think time). Each request is timed from
connect (or send, on a kept-alive connection) to the last byte. The first `--warmup`
seconds are not counted.

Runs, one after the other against fresh server processes:
- the forking server, a connection per request (all it can do);
- vacd, a connection per request (what cloud-init's readurl does);
- vacd, HTTP/1.1 keep-alive (what a payload polling MJF with one session does);
- vacd, a connection per request, paced: the clients offer a fixed total rate (default
  20 x the forking server's measured throughput) with exponential think times, and
  latency counts from each request's scheduled start (no coordinated omission).

`--runs` picks runs, `--loop` vacd's event loop (default: uvloop where installed, as vacd
picks), `--load-nice` and `--pin` how the load processes share the CPUs with the server.
Where the host tracks connections (nf_conntrack), each run first waits for room in the
table, and reports the packets the table dropped during it ("ct drops": non-zero means
SYNs were lost and the latencies are not the server's).

Besides latency and throughput each run reports the CPU per request of the server ("srv
us/req") and of the load processes ("load us/req": what the apparatus takes from the same
CPUs), each with the kernel's part of it ("of it sys": on loopback the kernel's TCP work for
both ends of a connection lands mostly on the sender), and for vacd's server the collector's full passes after start-up and its longest
pause ("gc full", "gc max ms"; vacd.gcfreeze).

Run as root or not (loopback only):
    .venv/bin/python bench/metadata_service.py --duration 10
"""

from __future__ import annotations

import argparse
import gc
import asyncio
import http.server
import json
import logging
import multiprocessing
import os
import queue
import signal
import socketserver
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Only what the forking baseline needs is imported here, so its process stays as small as
# Vac's was; the factory side (contextualise, cryptography, requests) and vacd's server are
# imported where they are used.
from vacd.config import Machinetype, Settings  # noqa: E402
from vacd.guestapi.guest import GuestMachine  # noqa: E402
from vacd.guestapi.metadata import metadata_response  # noqa: E402
from vacd.guestapi.requestpath import normalise_path  # noqa: E402
from vacd.paths import Paths  # noqa: E402
from vacd.slots import slot_identity  # noqa: E402
from vacd.records import MachineRecord  # noqa: E402
from vacd.store import Store  # noqa: E402
from bench.metadata_load import (SERVER_ADDRESS, SLOT_SERVER_ADDRESS, SLOTS, pin_to,  # noqa: E402
                                  run_load_process)

# A realistic template: a cloud-config of about 3 KiB with the usual substitutions.
TEMPLATE = (
    "#cloud-config\n"
    "hostname: ##user_data_machine_hostname##\n"
    "write_files:\n"
    "  - path: /etc/vac-machine\n"
    "    content: |\n"
    "      space=##user_data_space## machinetype=##user_data_machinetype## uuid=##user_data_uuid##\n"
    "      machinefeatures=##user_data_machinefeatures_url## jobfeatures=##user_data_jobfeatures_url##\n"
    "      joboutputs=##user_data_joboutputs_url## manager=##user_data_manager_version##\n"
    + "".join(f"  - path: /etc/payload/option{index}\n    content: ##user_data_option_payload##\n" for index in range(40))
)


def source_to_ordinal(source: str) -> Optional[int]:
    """127.0.0.n -> slot n, for n in 1..SLOTS (the benchmark's stand-in for 169.254.169.n)."""
    if not source.startswith("127.0.0."):
        return None
    last = int(source.rsplit(".", 1)[1])
    return last if 1 <= last <= SLOTS else None


def server_address(slot_addresses: bool) -> str:
    return SLOT_SERVER_ADDRESS if slot_addresses else SERVER_ADDRESS


def ordinal_of(source: str, slot_addresses: bool) -> Optional[int]:
    """The slot a client's source address is: vacd's own mapping with --slot-addresses."""
    if slot_addresses:
        from vacd.slots import ordinal_for_ip_address

        return ordinal_for_ip_address(source)
    return source_to_ordinal(source)


# The load is ~130 requests/s per slot, over the per-slot rate a real guest gets; this
# measures the server's throughput, so the request buckets are opened wide
# (bench/guest_flood.py measures them).
def wide_open_limits() -> Any:
    from vacd.guestapi.connection import ConnectionLimits

    return ConnectionLimits(requests_per_second_per_slot=1e12, request_burst_per_slot=10**12)


def make_site(prefix: Path) -> tuple[Paths, Settings]:
    from vacd.guestapi.contextualise import prepare_machine_dir

    paths = Paths(prefix)
    paths.ensure_state_dirs()
    settings = Settings(
        vac_space="vac01.example.com",
        factory_name="f1.example.com",
        total_processors=SLOTS,
        host_processors=SLOTS,
        gocdb_sitename="UKI-BENCH",
        hs06_per_processor=10.0,
    )
    machinetype_path = paths.machinetypes_dir / "bench"
    (machinetype_path / "files").mkdir(parents=True, exist_ok=True)
    (machinetype_path / "files" / "user_data").write_text(TEMPLATE)
    machinetype = Machinetype(
        name="bench",
        machinegroup="bench",
        machinetype_path=machinetype_path,
        user_data="user_data",
        user_data_options={"payload": "x" * 40},
    )
    key_path = paths.under_prefix(settings.root_public_key)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyBenchmarkKeyBenchmarkKey root@f1\n")
    store = Store(paths)
    # Old enough that the stat cache trusts the files (machines.RACY_SECONDS).
    created = int(time.time()) - 600
    for ordinal in range(1, SLOTS + 1):
        identity = slot_identity(settings.factory_name, ordinal)
        record = MachineRecord(
            name=identity.machine_name,
            ordinal=ordinal,
            uuid=f"00000000-0000-4000-8000-{ordinal:012d}",
            machinetype="bench",
            machine_model="vm-raw",
            processors=1,
            created_time=created,
            shutdown_time=created + 86400,
            ip_address=identity.ip_address,
            hs06=10.0,
            mb=2048,
        )
        directory = store.begin_creation(record)
        prepare_machine_dir(paths, settings, machinetype, record, directory, now=created)
    old = time.time() - 60
    for root, directories, files in os.walk(paths.state_dir):
        for name in directories + files:
            os.utime(os.path.join(root, name), (old, old))
    return paths, settings


# Servers
def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """An event loop of `kind`, chosen here rather than through vacd.eventloop, so that the
    same script can run a tree from before that module (`--loop asyncio`)."""
    if kind == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class CollectorPauses:
    """How often the cyclic garbage collector ran in this process, and how long it stopped it.

    A full (generation 2) pass stops every thread of the server for as long as it walks the
    heap, and each request in flight waits for it: the server's part of the closed loop's tail.
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.passes = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.total_ms = [0.0, 0.0, 0.0]

    def observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        generation = info["generation"]
        took = 1000 * (time.perf_counter() - self.started)
        self.passes[generation] += 1
        self.total_ms[generation] += took
        self.longest_ms[generation] = max(self.longest_ms[generation], took)

    def summary(self) -> dict[str, Any]:
        return {"gc_full_passes": self.passes[2], "gc_full_total_ms": self.total_ms[2],
                "gc_longest_pause_ms": max(self.longest_ms)}


def freeze_startup_heap_as_vacd_does() -> None:
    """Freeze the server's start-up heap, as vacd does once it has started (vacd.gcfreeze);
    a tree from before vacd.gcfreeze (an older tree run beside this one) did not."""
    try:
        from vacd.gcfreeze import freeze_startup_heap
    except ImportError:
        return
    freeze_startup_heap()


def run_vacd_server(prefix: str, port_queue: "multiprocessing.Queue[Any]", loop_kind: str = "asyncio",
                    cpus: Optional[set[int]] = None, slot_addresses: bool = False, processes: int = 0) -> None:
    """vacd's guest server on one loop in this process; or, with `processes`, vacd's GuestApiWorkers."""
    from vacd.guestapi.server import GuestApiServer
    from vacd.guestapi.workers import GuestApiWorkers

    pin_to(cpus)
    paths = Paths(Path(prefix))
    settings = make_settings_only()

    async def main() -> None:
        server: Any
        if processes:
            server = GuestApiWorkers(
                paths, lambda: settings, processes, log_destination="stderr", log_file=paths.log_file,
                log_level=logging.WARNING, metadata_addresses=(server_address(slot_addresses),), mjf_addresses=(),
                port=0, loop_kind=loop_kind, limits=wide_open_limits())
        else:
            server = GuestApiServer(
                paths,
                Store(paths),
                lambda: settings,
                metadata_addresses=(server_address(slot_addresses),),
                mjf_addresses=(),
                port=0,
                source_to_ordinal=None if slot_addresses else source_to_ordinal,
                limits=wide_open_limits(),
            )
        await server.start()
        freeze_startup_heap_as_vacd_does()
        # Watched from here, once start-up (and its collection) is over.
        gc.callbacks.append(pauses.observe)
        port_queue.put((server.listening[0].port, server.pids() if processes else []))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()

    pauses = CollectorPauses()
    loop = new_loop(loop_kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        if pauses.observe in gc.callbacks:
            gc.callbacks.remove(pauses.observe)
        # From start-up's end to the stop (warm-up and the measured seconds): read by stop_server.
        # With processes, only this process's collector (vacd's side) is watched.
        port_queue.put(pauses.summary())


def make_settings_only() -> Settings:
    return Settings(
        vac_space="vac01.example.com",
        factory_name="f1.example.com",
        total_processors=SLOTS,
        host_processors=SLOTS,
        gocdb_sitename="UKI-BENCH",
        hs06_per_processor=10.0,
    )


class UncachedFiles:
    """What Vac did: read every file from disk on every request."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read(self, relative_path: str) -> Optional[bytes]:
        try:
            return (self.directory / relative_path).read_bytes()
        except OSError:
            return None

    def list(self, subdirectory: str) -> list[str]:
        try:
            return sorted(os.listdir(self.directory / subdirectory))
        except OSError:
            return []


def run_forking_server(prefix: str, port_queue: "multiprocessing.Queue[Any]", loop_kind: str = "asyncio",
                       cpus: Optional[set[int]] = None, slot_addresses: bool = False, processes: int = 0) -> None:
    pin_to(cpus)
    paths = Paths(Path(prefix))
    settings = make_settings_only()
    store = Store(paths)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            ordinal = ordinal_of(self.client_address[0], slot_addresses)
            stored = None
            if ordinal is not None:
                stored = store.slot_binding(slot_identity(settings.factory_name, ordinal).machine_name)
            path = normalise_path(self.path)
            if stored is None or stored.has_finished or path is None:
                self.send_response(404)
                self.end_headers()
                return
            machine = GuestMachine(
                record=stored.record,
                directory=stored.directory,
                mac_address=slot_identity(settings.factory_name, ordinal or 0).mac_address,
                factory_name=settings.factory_name,
                vac_space=settings.vac_space,
                files=UncachedFiles(stored.directory),
            )
            response = metadata_response(path, machine)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            return None

    class ForkingServer(socketserver.ForkingMixIn, http.server.HTTPServer):
        request_queue_size = 256  # Vac's listen backlog (§1.2)
        max_children = 10000  # do not let the mixin's default of 40 throttle the baseline

    server = ForkingServer((server_address(slot_addresses), 0), Handler)
    port_queue.put((server.server_address[1], []))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    server.server_close()
    port_queue.put({})  # nothing to report; stop_server waits for this




def cpu_seconds(pid: int, kernel_only: bool = False) -> float:
    """User + system CPU of a process and its reaped children (forked handlers).

    With `kernel_only`, the system part alone: on loopback the kernel's TCP work for both
    ends of a connection is mostly charged to whichever process sends, so this says how
    much of a process's cost no user-space change could remove.
    """
    with open(f"/proc/{pid}/stat") as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime (proc(5) fields 14-17)
    ticks = int(fields[12]) + int(fields[14]) if kernel_only else sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(
    port: int,
    server_pids: list[int],
    clients: int,
    processes: int,
    keepalive: bool,
    warmup: float,
    duration: float,
    rate: Optional[float] = None,
    load_nice: int = 0,
    load_cpus: Optional[set[int]] = None,
    slot_addresses: bool = False,
) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    pipes = []
    workers = []
    per_process = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    first = 0
    for count in per_process:
        receiver, sender = context.Pipe(duplex=False)
        interval = clients / rate if rate else None
        worker = context.Process(
            target=run_load_process, args=(first, count, port, keepalive, warmup, duration, sender, interval, load_nice,
                                              load_cpus, slot_addresses)
        )
        worker.start()
        sender.close()
        pipes.append(receiver)
        workers.append(worker)
        first += count
    time.sleep(warmup)
    server_cpu_before = sum(cpu_seconds(pid) for pid in server_pids)
    server_kernel_before = sum(cpu_seconds(pid, kernel_only=True) for pid in server_pids)
    load_cpu_before = sum(cpu_seconds(worker.pid or 0) for worker in workers)
    load_kernel_before = sum(cpu_seconds(worker.pid or 0, kernel_only=True) for worker in workers)
    wall_before = time.perf_counter()
    latencies: list[float] = []
    errors = 0
    for receiver in pipes:
        process_latencies, process_errors = receiver.recv()
        latencies += process_latencies
        errors += process_errors
    wall = time.perf_counter() - wall_before
    server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - server_cpu_before
    server_kernel = sum(cpu_seconds(pid, kernel_only=True) for pid in server_pids) - server_kernel_before
    load_cpu = sum(cpu_seconds(worker.pid or 0) for worker in workers) - load_cpu_before
    load_kernel = sum(cpu_seconds(worker.pid or 0, kernel_only=True) for worker in workers) - load_kernel_before
    for worker in workers:
        worker.join()
    latencies.sort()
    count = len(latencies)

    def percentile(fraction: float) -> float:
        return latencies[min(count - 1, int(fraction * count))] * 1000 if count else float("nan")

    return {
        "requests": count,
        "errors": errors,
        "requests_per_second": count / duration,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": latencies[-1] * 1000 if count else float("nan"),
        "mean_ms": statistics.fmean(latencies) * 1000 if count else float("nan"),
        "server_cpu_percent": 100 * server_cpu / wall,
        "server_cpu_us_per_request": 1e6 * server_cpu / count if count else float("nan"),
        "load_cpu_percent": 100 * load_cpu / wall,
        # The clients' CPU per request: what the apparatus takes from the server's 2 vCPUs.
        "load_cpu_us_per_request": 1e6 * load_cpu / count if count else float("nan"),
        # Of each, the kernel's part (system time).
        "server_kernel_us_per_request": 1e6 * server_kernel / count if count else float("nan"),
        "load_kernel_us_per_request": 1e6 * load_kernel / count if count else float("nan"),
    }


def start_server(target: Any, prefix: str, loop_kind: str = "asyncio", cpus: Optional[set[int]] = None,
                 slot_addresses: bool = False, processes: int = 0,
                 ) -> tuple[multiprocessing.process.BaseProcess, int, list[int], Any]:
    """The server process, its port, the PIDs of its serving processes (if any) and its queue."""
    # A fresh interpreter, not a fork of this one (which has imported the factory side).
    context = multiprocessing.get_context("spawn")
    port_queue: "multiprocessing.Queue[Any]" = context.Queue()
    process = context.Process(target=target, args=(prefix, port_queue, loop_kind, cpus, slot_addresses, processes))
    process.start()
    port, serving_pids = port_queue.get(timeout=60)
    return process, port, serving_pids, port_queue


def stop_server(process: multiprocessing.process.BaseProcess, port_queue: Any) -> dict[str, Any]:
    """Stop the server; what it reported as it stopped (vacd's: CollectorPauses), else {}."""
    if process.pid is not None and process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
    try:
        reported: dict[str, Any] = port_queue.get(timeout=10)
    except queue.Empty:
        reported = {}
    process.join(timeout=10)
    if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    return reported


RUNS = ("fork", "close", "keepalive", "paced", "processes")
DEFAULT_RUNS = ("fork", "close", "keepalive", "paced")
CONNTRACK_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")
CONNTRACK_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
CONNTRACK_STAT = Path("/proc/net/stat/nf_conntrack")
# Where the host loads nf_conntrack (libvirt's NAT rules do), every loopback connection of a
# run is tracked for 120 s after it closes. A full table drops SYNs, and the clients then wait
# out 1 s and 3 s retransmissions, which would be charged to the server: before each run the
# table must have room for this many entries (about 12 s at 10,000 connections a second).
CONNTRACK_ROOM = 130_000
CONNTRACK_WAIT_SECONDS = 180.0


def conntrack_drops() -> int:
    """Packets nf_conntrack dropped so far (table full), summed over CPUs; 0 without conntrack."""
    try:
        lines = CONNTRACK_STAT.read_text().split("\n")
    except OSError:
        return 0
    column = lines[0].split().index("drop")
    return sum(int(line.split()[column], 16) for line in lines[1:] if line.strip())


def wait_for_conntrack_room() -> float:
    """Wait (at most CONNTRACK_WAIT_SECONDS) until the table has CONNTRACK_ROOM free; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < CONNTRACK_WAIT_SECONDS:
        try:
            free = int(CONNTRACK_MAX.read_text()) - int(CONNTRACK_COUNT.read_text())
        except (OSError, ValueError):
            return 0.0
        if free >= CONNTRACK_ROOM:
            break
        time.sleep(5)
    return time.monotonic() - started


def refuse_without_slot_addresses(parser: argparse.ArgumentParser) -> None:
    """Exit with how to run it if the clients cannot speak from 169.254.169.n to 169.254.169.254 here."""
    import socket

    for address in (SLOT_SERVER_ADDRESS, "169.254.169.1"):
        probe = socket.socket()
        try:
            probe.bind((address, 0))
        except OSError as error:
            parser.error(f"--slot-addresses: {address} is not an address of this network namespace "
                         f"({error.strerror}); run it as: unshare -n sh -c 'ip link set lo up; "
                         f"ip addr add {SLOT_SERVER_ADDRESS}/16 dev lo; ...'")
        finally:
            probe.close()


def default_loop_kind() -> str:
    """What vacd's guest servers run on here (vacd.eventloop's `auto`): uvloop if it imports."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=None,
        help="offered requests/s of the paced run (default: 20 x the forking server's throughput)",
    )
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"which runs, comma-separated, of {','.join(RUNS)} (paced without fork needs --paced-rate; "
                             f"processes: a connection per request to --guest-processes serving processes)")
    parser.add_argument("--guest-processes", type=int, default=2,
                        help="serving processes of the `processes` run (vacd's guest_api_processes)")
    parser.add_argument("--slot-addresses", action="store_true",
                        help="clients speak from their slots' own 169.254.169.n to 169.254.169.254, mapped by vacd's "
                             "own code (the `processes` run needs it: its processes use vacd's mapping); run in a "
                             "namespace whose loopback holds 169.254.0.0/16")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="vacd's event loop (default: what vacd picks here, uvloop if installed)")
    parser.add_argument("--load-nice", type=int, default=0, help="niceness of the load processes")
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 0, load processes on CPU 1 (each its own core)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    arguments = parser.parse_args()
    wanted = arguments.runs.split(",")
    unknown = set(wanted) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {','.join(RUNS)}")
    if "paced" in wanted and "fork" not in wanted and arguments.paced_rate is None:
        parser.error("the paced run without the forking one needs --paced-rate")
    if "processes" in wanted and not arguments.slot_addresses:
        parser.error("the processes run needs --slot-addresses")
    if arguments.slot_addresses:
        refuse_without_slot_addresses(parser)
    loop_kind = arguments.loop or default_loop_kind()
    server_cpus = {0} if arguments.pin else None
    load_cpus = {1} if arguments.pin else None

    results: dict[str, dict[str, Any]] = {}
    forking = "forking HTTP/1.0 (Vac 03)"
    with tempfile.TemporaryDirectory(prefix="vac-bench-") as prefix:
        make_site(Path(prefix))
        processes = arguments.guest_processes
        runs: list[tuple[str, str, Any, bool, Optional[float]]] = [
            ("fork", forking, run_forking_server, False, None),
            ("close", f"vacd {loop_kind}, connection per request", run_vacd_server, False, None),
            ("processes", f"vacd {loop_kind} x{processes} processes, conn/req", run_vacd_server, False, None),
            ("keepalive", f"vacd {loop_kind}, HTTP/1.1 keep-alive", run_vacd_server, True, None),
            ("paced", f"vacd {loop_kind}, conn/request, paced", run_vacd_server, False, -1.0),
        ]
        for key, name, target, keepalive, rate in runs:
            if key not in wanted:
                continue
            if rate is not None:
                rate = arguments.paced_rate or 20 * results[forking]["requests_per_second"]
                name = f"{name} {rate:.0f}/s"
            waited = wait_for_conntrack_room()
            process, port, serving_pids, port_queue = start_server(
                target, prefix, loop_kind, server_cpus, arguments.slot_addresses,
                processes if key == "processes" else 0)
            reported: dict[str, Any] = {}
            try:
                assert process.pid is not None
                load_average = os.getloadavg()[0]
                drops_before = conntrack_drops()
                results[name] = measure(
                    port,
                    [process.pid, *serving_pids],
                    arguments.clients,
                    arguments.processes,
                    keepalive,
                    arguments.warmup,
                    arguments.duration,
                    rate,
                    arguments.load_nice,
                    load_cpus,
                    arguments.slot_addresses,
                )
                results[name]["load_average_at_start"] = load_average
                results[name]["conntrack_wait_seconds"] = waited
                # Non-zero: SYNs were lost to a full table and the latencies are not the server's.
                results[name]["conntrack_drops"] = conntrack_drops() - drops_before
            finally:
                reported = stop_server(process, port_queue)
            results[name].update(reported)
    if arguments.json:
        print(json.dumps(results, indent=1))
        return
    baseline = results[forking]["requests_per_second"] if forking in results else float("nan")
    print(f"{arguments.clients} clients, {SLOTS} slots, {arguments.processes} load processes"
          f" (nice {arguments.load_nice}{', pinned' if arguments.pin else ''}), {arguments.duration:.0f} s each,"
          f" {os.cpu_count()} CPUs")
    print(
        f"{'server':40} {'req/s':>9} {'x fork':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}"
        f" {'srv CPU%':>8} {'srv us/req':>10} {'of it sys':>9} {'load CPU%':>9} {'load us/req':>11} {'of it sys':>9}"
        f" {'loadavg':>7} {'ct drops':>8}"
        f" {'gc full':>7} {'gc max ms':>9}"
    )
    for name, result in results.items():
        print(
            f"{name:40} {result['requests_per_second']:9.0f} {result['requests_per_second'] / baseline:7.1f}"
            f" {result['p50_ms']:8.2f} {result['p99_ms']:8.2f} {result['max_ms']:8.1f} {result['errors']:7d}"
            f" {result['server_cpu_percent']:8.0f} {result['server_cpu_us_per_request']:10.0f}"
            f" {result['server_kernel_us_per_request']:9.0f}"
            f" {result['load_cpu_percent']:9.0f} {result['load_cpu_us_per_request']:11.0f}"
            f" {result['load_kernel_us_per_request']:9.0f}"
            f" {result['load_average_at_start']:7.2f}"
            f" {result['conntrack_drops']:8d}"
            f" {result.get('gc_full_passes', -1):7d} {result.get('gc_longest_pause_ms', float('nan')):9.2f}"
        )


if __name__ == "__main__":
    main()
