"""The census at scale on loopback: N real responders, one real census, receive buffer default vs raised.

Run (as root, for the raised case): `.venv/bin/python bench/census_loopback.py
[--factories 400] [--machinetypes 6] [--censuses 5] [--loss 0.5] [--cases default,asked,raised]`.
`VAC_TREE=/path/to/checkout` measures another checkout of vac (before/after comparisons)
with this script.

N `vacquery.responder_transport.ResponderProtocol`s listen on 127.0.0.2, 127.0.0.3 … (one port,
one address each; 127.0.0.0/8 is all local on Linux), spread over `--processes` child
processes so that they answer at once, as a site's factories do. This process runs the
factory's census as vacd does (`vacd.peers.PeerCensus`: the real `Census` and
`run_census`, a 2 s deadline, the fast peers and smoothed RTT carried from one census to
the next), `--censuses` times in a row, for each case:

- `default`: no SO_RCVBUF asked, census and responders keep net.core.rmem_default (EL9 and
  this host: 212,992 bytes; the kernel reports it doubled for its bookkeeping on
  getsockopt only when asked, so the figure printed is the one set);
- `asked`: vacd's 16 MiB asked for, the host's net.core.rmem_max left as it is (the kernel
  grants at most that);
- `raised`: vacd's 16 MiB (`SOCKET_BUFFER_BYTES`), with net.core.rmem_max and wmem_max
  raised to it as etc/sysctl.d/90-vac-vacquery.conf does; the old values are put back
  afterwards, in a `finally`.

`--loss P` drops each datagram with probability P on both sides (`InjectedLoss` in the
responders and in the census, as VAC_TEST_DATAGRAM_LOSS does in vacd), independently, from
random generators seeded by `--seed`: one seed repeats one loss pattern (timing aside).

Prints a Markdown table: receive buffer granted, factories heard in full, statuses heard
(worst, mean, censuses at >= 99.9 %), censuses that hit the deadline, time to completion,
query datagrams sent, the census's own CPU time (this process's, per census: the
responders run in the children) and the smoothed RTT each census ended with.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence
from unittest import mock

sys.path.insert(0, os.environ.get("VAC_TREE", str(Path(__file__).resolve().parent.parent)))

from tests.vacquery.sample_statuses import SPACE, snapshot  # noqa: E402
from vacd.config import FactoryAddress, Settings  # noqa: E402
from vacd.peers import PeerCensus, PeerResolver  # noqa: E402
from vacquery import transport  # noqa: E402
from vacquery.transport import SOCKET_BUFFER_BYTES, CensusSockets, InjectedLoss  # noqa: E402

try:
    from vacquery.responder_transport import ResponderProtocol, start_responder  # noqa: E402
except ImportError:  # a checkout from before issue 15 (VAC_TREE, for the before/after table)
    from vacquery.transport import ResponderProtocol, start_responder  # type: ignore[attr-defined,no-redef]  # noqa: E402

SYSCTLS = (Path("/proc/sys/net/core/rmem_max"), Path("/proc/sys/net/core/wmem_max"))
MACHINETYPE_NAMES = ("lhcb", "atlas", "cms", "alice", "dune", "lz", "belle", "na62", "t2k", "lsst")


def address_of(index: int) -> str:
    """127.0.0.2 onwards: index 0 is 127.0.0.2, 253 is 127.0.0.255, 254 is 127.0.1.1 …"""
    return f"127.0.{(index + 1) // 255}.{(index + 1) % 255 + 1}"


def name_of(index: int) -> str:
    return f"f{index:04d}.example.com"


def serve(indices: Sequence[int], port: int, machinetypes: Sequence[str], buffer_bytes: Optional[int],
          loss: float, seed: int, ready: "multiprocessing.connection.Connection") -> None:
    """A child process: one asyncio loop answering for the factories `indices`."""

    async def run() -> None:
        for index in indices:
            protocol = ResponderProtocol(trusted_sources=frozenset(["127.0.0.1"]),
                                         loss=InjectedLoss(loss, seed=seed * 100_000 + index) if loss else None)
            protocol.publish(snapshot(name_of(index), machinetypes=machinetypes))
            await start_responder(address_of(index), port, protocol, buffer_bytes=buffer_bytes)
        ready.send("ready")
        await asyncio.Event().wait()

    asyncio.run(run())


@contextmanager
def responders(count: int, machinetypes: Sequence[str], buffer_bytes: Optional[int], processes: int,
               port: int, loss: float, seed: int = 0) -> Iterator[None]:
    context = multiprocessing.get_context("fork")
    children = []
    try:
        for share in range(processes):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=serve, args=(range(share, count, processes), port, machinetypes,
                                                        buffer_bytes, loss, seed, sender), daemon=True)
            child.start()
            children.append(child)
            if not receiver.poll(120):
                raise RuntimeError(f"responder process {child.pid} did not start")
            receiver.recv()
        yield
    finally:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)
            child.join(10)


@contextmanager
def socket_buffer_maxima(value: Optional[int]) -> Iterator[None]:
    """net.core.rmem_max and wmem_max at least `value` while inside; restored after."""
    if value is None:
        yield
        return
    old = [path.read_text() for path in SYSCTLS]
    try:
        for path, before in zip(SYSCTLS, old):
            if int(before) < value:
                path.write_text(str(value))
        yield
    finally:
        for path, before in zip(SYSCTLS, old):
            path.write_text(before)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_case(case: str, options: argparse.Namespace) -> str:
    buffer_bytes = None if case == "default" else SOCKET_BUFFER_BYTES
    machinetypes = MACHINETYPE_NAMES[:options.machinetypes]
    port = free_port()
    factories = tuple(FactoryAddress(name_of(index), address_of(index)) for index in range(options.factories))
    settings = Settings(vac_space=SPACE, factory_name="f-census.example.com", total_processors=8, host_processors=8,
                        gocdb_sitename="example.com", factories=factories, vacquery_port=port,
                        udp_timeout_seconds=5 * options.deadline)
    heard, statuses, deadline_hits, durations, datagrams, granted = [], [], 0, [], [], []
    cpu = []
    rtts = []
    with socket_buffer_maxima(buffer_bytes if case == "raised" else None), \
            responders(options.factories, machinetypes, buffer_bytes, options.processes, port, options.loss,
                       options.seed):
        peer_census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)),
                                 loss=InjectedLoss(options.loss, seed=options.seed * 100_000 + 99_999) if options.loss else None)

        def sized_sockets() -> CensusSockets:
            sockets = CensusSockets(buffer_bytes=buffer_bytes)
            opened.append(sockets)
            return sockets

        for _ in range(options.censuses):
            opened: list[CensusSockets] = []
            with mock.patch("vacd.peers.CensusSockets", sized_sockets):
                cpu_before = time.process_time()
                result = peer_census.run(settings).result
                cpu.append(time.process_time() - cpu_before)
            rtts.append(result.smoothed_rtt_seconds or 0.0)
            granted.extend(opened[0].receive_buffer_bytes.values())
            heard.append(len(result.complete) / options.factories)
            statuses.append(result.statuses_heard / (options.factories * len(machinetypes)))
            finished = result.finished if result.finished is not None else result.started + options.deadline
            durations.append(finished - result.started)
            deadline_hits += len(result.complete) < options.factories
            datagrams.append(result.datagrams_sent)
            time.sleep(options.pause)
    held = sum(share >= 0.999 for share in statuses)
    return (f"| {options.factories} | {100 * options.loss:.0f} % | {case} | {statistics.mean(granted):,.0f} "
            f"| {100 * min(heard):.2f} % | {100 * statistics.mean(heard):.2f} % "
            f"| {100 * min(statuses):.2f} % | {100 * statistics.mean(statuses):.2f} % | {held}/{options.censuses} "
            f"| {deadline_hits}/{options.censuses} "
            f"| {statistics.median(durations):.3f} | {max(durations):.3f} | {statistics.mean(datagrams):.0f} "
            f"| {1000 * statistics.mean(cpu):.0f} | {1000 * min(rtts):.1f}–{1000 * max(rtts):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, default=400)
    parser.add_argument("--machinetypes", type=int, default=6, choices=range(1, len(MACHINETYPE_NAMES) + 1))
    parser.add_argument("--censuses", type=int, default=5)
    parser.add_argument("--processes", type=int, default=4, help="responder processes")
    parser.add_argument("--deadline", type=float, default=2.0, help="census deadline, seconds")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between censuses (late replies drain)")
    parser.add_argument("--cases", default="default,raised")
    parser.add_argument("--loss", type=float, default=0.0, help="loss probability per datagram, each way")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the injected loss: one seed repeats one loss pattern (timing aside)")
    parser.add_argument("--no-header", action="store_true", help="rows only (to append runs to one table)")
    options = parser.parse_args()
    cases = options.cases.split(",")
    if "raised" in cases and os.geteuid() != 0:
        parser.error("the raised case sets net.core.rmem_max: run as root, or --cases default")
    transport.log.disabled = True  # the default case warns once per census socket: not news here
    if not options.no_header:
        print(f"census of {options.factories} factories x {options.machinetypes} machinetypes on loopback, "
              f"{options.censuses} censuses per case, {options.processes} responder processes, "
              f"loss {options.loss} each way\n")
        print("| factories | loss | receive buffer | granted (bytes) | factories in full, worst | mean "
              "| statuses heard, worst | mean | censuses >= 99.9 % | hit deadline "
              "| completion median (s) | max (s) | queries sent | census CPU (ms) | smoothed RTT (ms) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        print(run_case(case, options), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
