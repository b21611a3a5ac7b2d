"""Benchmark: does one slot flooding the guest servers delay a quiet slot, or VacQuery?

Issue 11 item 3. One server process holds the guest metadata server (GuestApiServer
unchanged, 64 machines made with the real Store, as in bench/metadata_service.py) and a
VacQuery responder (ResponderProtocol, a published snapshot), arranged as vacd arranges
them, in one of two ways measured side by side:
- `before`: both on one event loop thread (vacd.serviceloop.ServiceLoop), with no per-slot
  request rate (how vacd ran before this item);
- `after`: the guest servers and the responder each on their own loop and thread, as
  vacd runs them now, with the default per-slot limits (ConnectionLimits()).
- `processes` (with `--slot-addresses`): the guest servers as `--guest-processes` serving
  processes (vacd.guestapi.workers, `guest_api_processes`), the responder on its own loop
  in the first process, with the default per-slot limits.

Load, all on loopback; 127.0.0.n stands in for slot n (169.254.169.n on a real bridge;
with `--slot-addresses`, 169.254.169.n itself, in a namespace whose loopback holds
169.254.0.0/16, mapped by vacd's own code, as the `processes` layout needs):
- the quiet slot (127.0.0.3): GET /latest/meta-data/instance-id, a new connection each
  time, at `--quiet-rate` per second (default 20) on a fixed schedule; latency counts
  from each request's scheduled start, so a stall is charged in full;
- VacQuery: a factory_query over UDP at `--vacquery-rate` per second (default 50), each
  timed from send to reply (no reply within 2 s counts as lost);
- the flooding slot (127.0.0.4), in the second phase only: `--flood-connections`
  concurrent clients, each a new connection per GET, started at up to `--flood-rate`
  per second (default 10,000).

Each layout runs `--duration` seconds without the flood, then `--duration` seconds with
it. The figure is each p99 with the flood over the same p99 without it ("x quiet"), and
the `before` over `after` ratio of the flooded p99s.

    .venv/bin/python bench/guest_flood.py --duration 10
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.metadata_load import SERVER_ADDRESS, SLOT_SERVER_ADDRESS, slot_source  # noqa: E402
from bench.metadata_service import (  # noqa: E402
    default_loop_kind,
    freeze_startup_heap_as_vacd_does,
    make_site,
    make_settings_only,
    refuse_without_slot_addresses,
    source_to_ordinal,
)
from bench.responder import FACTORY, SPACE, site_snapshot  # noqa: E402

QUIET_SOURCE = "127.0.0.3"
FLOOD_SOURCE = "127.0.0.4"
GUEST_SERVER = SERVER_ADDRESS
REQUEST = b"GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n"
VACQUERY_TIMEOUT_SECONDS = 2.0
LAYOUTS = ("before", "after")
ALL_LAYOUTS = ("before", "after", "processes")


def use_slot_addresses(quiet_slot: int = 3) -> None:
    """Speak from the quiet slot's and slot 4's own addresses to the real metadata address.

    For this process and its forks. With 2 serving processes, slot 3 is served by another
    process than the flooding slot 4, slot 6 by the same one.
    """
    global QUIET_SOURCE, FLOOD_SOURCE, GUEST_SERVER
    QUIET_SOURCE, FLOOD_SOURCE, GUEST_SERVER = slot_source(quiet_slot), slot_source(4), SLOT_SERVER_ADDRESS


# The server process (spawned: a fresh interpreter, as vacd is)
def run_server(prefix: str, layout: str, ports: "multiprocessing.Queue[tuple[int, int, list[int]]]",
               guest_loop_kind: str = "asyncio", slot_addresses: bool = False, guest_processes: int = 2) -> None:
    from vacd.serviceloop import ServiceLoop
    from vacd.guestapi.connection import ConnectionLimits
    from vacd.guestapi.server import GuestApiServer
    from vacd.paths import Paths
    from vacd.store import Store
    from vacquery.responder import ReplyBudget, TokenBuckets
    from vacquery.responder_transport import ResponderProtocol, start_responder

    paths = Paths(Path(prefix))
    settings = make_settings_only()
    if layout == "before":
        # No request bucket worth the name: what vacd did before issue 11 item 3.
        limits = ConnectionLimits(requests_per_second_per_slot=1e12, request_burst_per_slot=10**12)
    else:
        limits = ConnectionLimits()
    # As vacd runs them since issue 15 item 3: the guest loop on uvloop where installed. The
    # keyword is passed only when needed, so this script also runs a tree from before it.
    if layout == "before":
        guest_loop_kind = "asyncio"  # one asyncio loop for both, as before either change
    guest_loop = ServiceLoop("vacd-guestapi", guest_loop_kind) if guest_loop_kind != "asyncio" else \
        ServiceLoop("vacd-guestapi")
    vacquery_loop = guest_loop if layout == "before" else ServiceLoop("vacd-vacquery")
    for loop in {id(guest_loop): guest_loop, id(vacquery_loop): vacquery_loop}.values():
        loop.start()
    server: Any
    if slot_addresses:
        use_slot_addresses()  # the server needs only its own address
    if layout == "processes":
        from vacd.guestapi.workers import GuestApiWorkers

        server = GuestApiWorkers(paths, lambda: settings, guest_processes, log_destination="stderr",
                                 log_file=paths.log_file, log_level=logging.WARNING,
                                 metadata_addresses=(GUEST_SERVER,), mjf_addresses=(), port=0,
                                 loop_kind=guest_loop_kind)
    else:
        server = GuestApiServer(paths, Store(paths), lambda: settings, metadata_addresses=(GUEST_SERVER,),
                                mjf_addresses=(), port=0,
                                source_to_ordinal=None if slot_addresses else source_to_ordinal, limits=limits)
    guest_loop.call(server.start(), timeout=120)
    # The per-source reply budget would throttle the one measuring client; it is not what is measured.
    responder = ResponderProtocol(budget=ReplyBudget(TokenBuckets(1e12, 1e12), TokenBuckets(1e12, 1e12)))
    responder.publish(site_snapshot())
    transport = vacquery_loop.call(start_responder("127.0.0.1", 0, responder))
    if layout != "before":
        freeze_startup_heap_as_vacd_does()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ports.put((server.listening[0].port, transport.get_extra_info("sockname")[1],
               server.pids() if layout == "processes" else []))
    stop.wait()
    print(json.dumps({"counters": {f"{key[1]}/{key[2]}": value for key, value in server.counters.items()}}),
          file=sys.stderr)
    guest_loop.call(server.stop(), timeout=60)
    vacquery_loop.run_soon(transport.close)
    guest_loop.stop()
    vacquery_loop.stop()


# The flooding slot (a forked process: one epoll loop over raw sockets)
KEEPALIVE_REQUEST = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"


def _complete_response(answer: bytearray) -> Optional[tuple[bytes, bool]]:
    """(status code, server closes) once a whole response is in `answer`; it is removed from it."""
    end = answer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(answer[:end]).lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value)
    if len(answer) < end + 4 + length:
        return None
    del answer[:end + 4 + length]
    return head[9:12], b"connection: close" in head


def run_flood(port: int, connections: int, rate: float, duration: float, keepalive: bool, nice: int,
              out: Any) -> None:
    # A guest floods from its own vCPUs; on this small machine the flooder shares the
    # server's, so by default it yields to it rather than take the CPU a real host would
    # leave vacd (--flood-nice 0: it competes as an equal).
    os.nice(nice)
    selector = selectors.DefaultSelector()
    counts = {"started": 0, "200": 0, "429": 0, "other": 0, "reset": 0}
    started_at = time.perf_counter()
    deadline = started_at + duration
    buffers: dict[socket.socket, bytearray] = {}
    waiting: list[socket.socket] = []  # kept-alive connections waiting for the rate to allow a request
    answered: set[socket.socket] = set()
    request = KEEPALIVE_REQUEST if keepalive else REQUEST

    def allowed(now: float) -> bool:
        return counts["started"] < rate * (now - started_at)

    def send(client: socket.socket) -> None:
        counts["started"] += 1
        try:
            client.send(request)
        except OSError:
            finish(client, "reset")

    def start() -> None:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        client.bind((FLOOD_SOURCE, 0))
        try:
            client.connect((GUEST_SERVER, port))
        except BlockingIOError:
            pass
        counts["started"] += 1
        buffers[client] = bytearray()
        selector.register(client, selectors.EVENT_WRITE)

    def finish(client: socket.socket, outcome: str) -> None:
        counts[outcome] += 1
        selector.unregister(client)
        del buffers[client]
        client.close()

    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        while waiting and allowed(now):
            send(waiting.pop())
        while len(buffers) < connections and allowed(now):
            start()
        for key, events in selector.select(timeout=0.001):
            client = key.fileobj
            assert isinstance(client, socket.socket)
            if client not in buffers:
                continue
            if events & selectors.EVENT_WRITE:
                try:
                    client.send(request)
                    selector.modify(client, selectors.EVENT_READ)
                except OSError:
                    finish(client, "reset")
                continue
            try:
                chunk = client.recv(65536)
            except OSError:
                answered.discard(client)
                finish(client, "reset")
                continue
            answer = buffers[client]
            if chunk:
                answer += chunk
                response = _complete_response(answer) if keepalive else None
                if response is not None:
                    status, closes = response
                    counts[status.decode() if status in (b"200", b"429") else "other"] += 1
                    answered.add(client)
                    if not closes:
                        waiting.append(client)
                continue
            if not keepalive:
                status = bytes(answer[9:12])
                finish(client, "reset" if not answer else status.decode() if status in (b"200", b"429") else "other")
            elif client in answered:
                # Closed after its last response, which was counted.
                answered.discard(client)
                selector.unregister(client)
                del buffers[client]
                client.close()
            else:
                finish(client, "reset")
    for client in list(buffers):
        selector.unregister(client)
        client.close()
    elapsed = time.perf_counter() - started_at
    out.send({name: value / elapsed for name, value in counts.items()})
    out.close()


# The measuring clients (threads of the main process)
def quiet_slot(port: int, rate: float, duration: float, latencies: list[float], errors: list[str]) -> None:
    interval = 1.0 / rate
    start = time.perf_counter()
    for index in range(int(duration * rate)):
        scheduled = start + index * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            with socket.create_connection((GUEST_SERVER, port), timeout=10, source_address=(QUIET_SOURCE, 0)) as client:
                client.sendall(REQUEST)
                answer = b""
                while True:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
        except OSError as error:
            errors.append(str(error))
            continue
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            errors.append(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
            continue
        latencies.append(time.perf_counter() - scheduled)


def vacquery_client(port: int, rate: float, duration: float, latencies: list[float], lost: list[int]) -> None:
    from vacquery.codec import encode_query
    from vacquery.messages import FactoryQuery

    interval = 1.0 / rate
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        start = time.perf_counter()
        for index in range(int(duration * rate)):
            delay = start + index * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            cookie = f"q{index}"
            client.settimeout(VACQUERY_TIMEOUT_SECONDS)
            sent = time.perf_counter()
            client.sendto(encode_query(FactoryQuery(SPACE, cookie)), ("127.0.0.1", port))
            while True:
                try:
                    reply = client.recv(65536)
                except socket.timeout:
                    lost.append(index)
                    break
                # A late reply to an earlier query is skipped, not timed as this one.
                if f'"cookie": "{cookie}"'.encode() in reply and FACTORY.encode() in reply:
                    latencies.append(time.perf_counter() - sent)
                    break
                client.settimeout(max(0.001, VACQUERY_TIMEOUT_SECONDS - (time.perf_counter() - sent)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else float("nan")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def phase(ports: tuple[int, int, list[int]], server_pid: int, arguments: argparse.Namespace,
          flood: bool) -> dict[str, Any]:
    guest_port, vacquery_port, serving_pids = ports
    server_pids = [server_pid, *serving_pids]
    flood_rates: dict[str, float] = {}
    flood_process = None
    if flood:
        receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
        flood_process = multiprocessing.get_context("fork").Process(
            target=run_flood, args=(guest_port, arguments.flood_connections, arguments.flood_rate,
                                    arguments.duration + 2 * arguments.warmup, arguments.flood_keepalive,
                                    arguments.flood_nice, sender))
        flood_process.start()
        sender.close()
        time.sleep(arguments.warmup)
    quiet_latencies: list[float] = []
    quiet_errors: list[str] = []
    vacquery_latencies: list[float] = []
    vacquery_lost: list[int] = []
    threads = [
        threading.Thread(target=quiet_slot, args=(guest_port, arguments.quiet_rate, arguments.duration,
                                                  quiet_latencies, quiet_errors)),
        threading.Thread(target=vacquery_client, args=(vacquery_port, arguments.vacquery_rate, arguments.duration,
                                                       vacquery_latencies, vacquery_lost)),
    ]
    cpu_before, wall_before = sum(cpu_seconds(pid) for pid in server_pids), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - cpu_before
    server_cpu_percent = 100 * server_cpu / (time.perf_counter() - wall_before)
    if flood_process is not None:
        flood_rates = receiver.recv()
        flood_process.join()
    return {
        "quiet_requests": len(quiet_latencies),
        "quiet_errors": len(quiet_errors),
        "quiet_error_examples": sorted(set(quiet_errors))[:3],
        "quiet_p50_ms": percentile(quiet_latencies, 0.50),
        "quiet_p99_ms": percentile(quiet_latencies, 0.99),
        "vacquery_answered": len(vacquery_latencies),
        "vacquery_lost": len(vacquery_lost),
        "vacquery_p50_ms": percentile(vacquery_latencies, 0.50),
        "vacquery_p99_ms": percentile(vacquery_latencies, 0.99),
        "flood_per_second": flood_rates,
        "server_cpu_percent": server_cpu_percent,
    }


def run_layout(layout: str, arguments: argparse.Namespace, prefix: str) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ports: "multiprocessing.Queue[tuple[int, int, list[int]]]" = context.Queue()
    server = context.Process(target=run_server, args=(prefix, layout, ports, arguments.guest_loop,
                                                      arguments.slot_addresses, arguments.guest_processes))
    server.start()
    try:
        server_ports = ports.get(timeout=60)
        time.sleep(arguments.warmup)
        assert server.pid is not None
        quiet = phase(server_ports, server.pid, arguments, flood=False)
        flooded = phase(server_ports, server.pid, arguments, flood=True)
    finally:
        if server.pid is not None and server.is_alive():
            os.kill(server.pid, signal.SIGTERM)
        server.join(timeout=30)
    return {"layout": layout, "without_flood": quiet, "with_flood": flooded}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--quiet-rate", type=float, default=20.0, help="quiet slot requests per second")
    parser.add_argument("--vacquery-rate", type=float, default=50.0, help="VacQuery queries per second")
    parser.add_argument("--flood-rate", type=float, default=10_000.0,
                        help="flooding slot's connections per second, at most")
    parser.add_argument("--flood-connections", type=int, default=64, help="flooding slot's concurrent clients")
    parser.add_argument("--flood-keepalive", action="store_true",
                        help="the flooding slot reuses its connections (HTTP/1.1), reconnecting when closed")
    parser.add_argument("--flood-nice", type=int, default=10, help="the flooding process's niceness")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help=f"comma-separated, of {','.join(ALL_LAYOUTS)}")
    parser.add_argument("--slot-addresses", action="store_true",
                        help="speak from slots' own 169.254.169.n (the processes layout needs it; run in a namespace "
                             "whose loopback holds 169.254.0.0/16)")
    parser.add_argument("--guest-processes", type=int, default=2, help="serving processes of the processes layout")
    parser.add_argument("--quiet-slot", type=int, default=3, choices=range(1, 65), metavar="1-64",
                        help="the quiet slot with --slot-addresses (the flooding slot is 4)")
    parser.add_argument("--guest-loop", choices=("asyncio", "uvloop"), default=None,
                        help="the guest servers' event loop (default: what vacd picks here, uvloop if installed)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    if arguments.guest_loop is None:
        arguments.guest_loop = default_loop_kind()
    unknown = set(arguments.layouts.split(",")) - set(ALL_LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; choose from {','.join(ALL_LAYOUTS)}")
    if "processes" in arguments.layouts.split(",") and not arguments.slot_addresses:
        parser.error("the processes layout needs --slot-addresses")
    if arguments.slot_addresses:
        refuse_without_slot_addresses(parser)
        use_slot_addresses(arguments.quiet_slot)
    results = []
    with tempfile.TemporaryDirectory(prefix="vac-guest-flood-") as prefix:
        make_site(Path(prefix))
        for layout in arguments.layouts.split(","):
            results.append(run_layout(layout, arguments, prefix))
    if arguments.json:
        print(json.dumps(results, indent=2))
        return
    print("| layout | flood | quiet p50 ms | quiet p99 ms | quiet errors | VacQuery p50 ms | VacQuery p99 ms "
          "| VacQuery lost | flood tried/s | flood 200/s | flood 429/s | flood reset/s | server CPU % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for result in results:
        for name in ("without_flood", "with_flood"):
            row = result[name]
            flood = row["flood_per_second"]
            print(f"| {result['layout']} | {'yes' if name == 'with_flood' else 'no'} | {row['quiet_p50_ms']:.1f} "
                  f"| {row['quiet_p99_ms']:.1f} | {row['quiet_errors']} | {row['vacquery_p50_ms']:.2f} "
                  f"| {row['vacquery_p99_ms']:.2f} | {row['vacquery_lost']} | {flood.get('started', 0):,.0f} "
                  f"| {flood.get('200', 0):,.0f} | {flood.get('429', 0):,.0f} | {flood.get('reset', 0):,.0f} "
                  f"| {row['server_cpu_percent']:.0f} |")
    print()
    print("| layout | quiet p99 x quiet | VacQuery p99 x quiet | server CPU µs per flood request |")
    print("|---|---:|---:|---:|")
    for result in results:
        quiet, flooded = result["without_flood"], result["with_flood"]
        tried = flooded["flood_per_second"].get("started", 0.0)
        extra_cpu = flooded["server_cpu_percent"] - quiet["server_cpu_percent"]
        print(f"| {result['layout']} | {ratio(flooded['quiet_p99_ms'], quiet['quiet_p99_ms']):.1f} "
              f"| {ratio(flooded['vacquery_p99_ms'], quiet['vacquery_p99_ms']):.1f} "
              f"| {ratio(extra_cpu * 1e4, tried):.0f} |")
    by_layout = {result["layout"]: result["with_flood"] for result in results}
    if set(LAYOUTS) <= set(by_layout):
        before, after = by_layout["before"], by_layout["after"]
        print()
        print(f"flooded p99, before / after: quiet slot {ratio(before['quiet_p99_ms'], after['quiet_p99_ms']):.1f}x, "
              f"VacQuery {ratio(before['vacquery_p99_ms'], after['vacquery_p99_ms']):.1f}x")
    if {"after", "processes"} <= set(by_layout):
        after, processes = by_layout["after"], by_layout["processes"]
        print(f"flooded p99, after (one guest thread) / processes: quiet slot "
              f"{ratio(after['quiet_p99_ms'], processes['quiet_p99_ms']):.1f}x, "
              f"VacQuery {ratio(after['vacquery_p99_ms'], processes['vacquery_p99_ms']):.1f}x")
    for result in results:
        for name in ("without_flood", "with_flood"):
            if result[name]["quiet_error_examples"]:
                print(f"{result['layout']} {name} quiet errors: {result[name]['quiet_error_examples']}")


if __name__ == "__main__":
    main()
