"""Responder throughput: queries answered per second on one core.

Run: `.venv/bin/python bench/responder.py [--seconds 3]`.

1. The pure `vacquery.responder.respond()` answering from an `EncodedSnapshot` (encoded
   once per published snapshot), for each query kind, without and with site-key auth
   (verify the request, sign each reply).
2. Over a real UDP socket on 127.0.0.1: the asyncio `ResponderProtocol` in a child
   process (one core), a client in this process keeping a window of queries in flight
   (the other core). Counts requests answered (first reply seen) per second.

The snapshot is a 32-slot factory with 4 machinetypes, as in the site benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vacquery.auth import AuthMode, Authenticator, Scope  # noqa: E402
from vacquery.codec import encode, encode_snapshot  # noqa: E402
from vacquery.messages import (  # noqa: E402
    FactoryQuery,
    FactoryStatus,
    MachineState,
    MachinesQuery,
    MachineStatus,
    MachinetypesQuery,
    MachinetypeStatus,
    Snapshot,
)
from vacquery.responder import ReplyBudget, TokenBuckets, respond  # noqa: E402
from vacquery.responder_transport import ResponderProtocol, start_responder  # noqa: E402

SPACE = "vac01.example.com"
FACTORY = "f1.example.com"
KEY = b"benchmark-site-key-of-32-bytes!!"
COOKIE = "ab" * 32


def site_snapshot(slots: int = 32, machinetypes: int = 4) -> Snapshot:
    machines = tuple(
        MachineStatus(space=SPACE, factory=FACTORY, num_machines=slots, machine=f"f1-{ordinal:02d}.example.com",
                      state=MachineState.RUNNING, uuid=f"00000000-0000-4000-8000-{ordinal:012d}",
                      created_time=1_700_000_000, started_time=1_700_000_010, heartbeat_time=1_700_003_000,
                      cpu_seconds=2900.0, cpu_percentage=99.5, hs06=10.0, machinetype=f"type-{ordinal % machinetypes}",
                      shutdown_message=None, shutdown_time=None, processors=1, machine_model="cernvm3",
                      site="example.com", daemon_version="Vac 04.00.00a1 vacd-responder")
        for ordinal in range(slots))
    types = tuple(
        MachinetypeStatus(space=SPACE, factory=FACTORY, num_machinetypes=machinetypes, machinetype=f"type-{number}",
                          running_hs06=80.0, num_before_fizzle=0, shutdown_message="200 Success",
                          shutdown_time=1_700_000_000, shutdown_machine="f1-03.example.com", running_machines=8,
                          running_processors=8.0, bytes_per_processor=2 << 30, max_wallclock_seconds=86400,
                          max_processors=1, site="example.com", daemon_version="Vac 04.00.00a1 vacd-responder")
        for number in range(machinetypes))
    factory = FactoryStatus(space=SPACE, factory=FACTORY, running_processors=32, running_machines=32,
                            running_hs06=320.0, max_processors=32, max_machines=32, max_hs06=320.0,
                            load_average=31.5, kernel_version="6.1.0", os_issue="Debian 12", site="example.com")
    return Snapshot(machines, types, factory)


def pure_rate(kind: str, seconds: float, with_auth: bool) -> tuple[float, int]:
    encoded = encode_snapshot(site_snapshot())
    query: Union[FactoryQuery, MachinetypesQuery, MachinesQuery]
    if kind == "factory":
        query = FactoryQuery(SPACE, COOKIE)
    elif kind == "machinetypes":
        query = MachinetypesQuery(SPACE, COOKIE)
    else:
        query = MachinesQuery(SPACE, COOKIE)
    request = encode(query)
    server: Optional[Authenticator] = None
    requests = [request]
    if with_auth:
        server = Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)
        client = Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)
        # Distinct nonces: the replay cache would refuse a repeated request.
        requests = [client.sign(request, time.time(), Scope.query_to(FACTORY, SPACE)) for _ in range(200_000)]
    trusted = frozenset(["127.0.0.1"])
    answered, replies = 0, 0
    started = time.perf_counter()
    deadline = started + seconds
    now = time.time()
    while time.perf_counter() < deadline:
        for _ in range(200):
            out = respond(requests[answered % len(requests)], "127.0.0.1", encoded, now, authenticator=server,
                          trusted_sources=trusted)
            answered += 1
            replies = len(out)
    return answered / (time.perf_counter() - started), replies


def _serve(port_pipe: "multiprocessing.connection.Connection", seconds: float) -> None:
    async def run() -> None:
        # The default per-source budget (8 KiB/s) would throttle this one client to a few queries/s.
        unlimited = ReplyBudget(TokenBuckets(1e12, 1e12), TokenBuckets(1e12, 1e12))
        protocol = ResponderProtocol(trusted_sources=frozenset(["127.0.0.1"]), budget=unlimited)
        protocol.publish(site_snapshot())
        transport = await start_responder("127.0.0.1", 0, protocol)
        port_pipe.send(transport.get_extra_info("sockname")[1])
        await asyncio.sleep(seconds)
        transport.close()
        port_pipe.send(dict(protocol.counters))

    asyncio.run(run())


def socket_rate(seconds: float, window: int) -> tuple[float, dict[str, int]]:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(child, seconds + 2.0), daemon=True)
    server.start()
    try:
        port = parent.recv()
        request = encode(FactoryQuery(SPACE, COOKIE))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            client.settimeout(0.2)
            address = ("127.0.0.1", port)
            answered = 0
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                for _ in range(window):
                    client.sendto(request, address)
                for _ in range(window):
                    try:
                        client.recv(10240)
                    except socket.timeout:
                        break
                    answered += 1
            rate = answered / (time.perf_counter() - started)
        counters = parent.recv()
    finally:
        server.join(10)
        if server.is_alive():
            server.terminate()
    return rate, counters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=32)
    options = parser.parse_args()
    print("| path | query | auth | replies per query | queries/s |")
    print("|---|---|---|---|---|")
    for kind in ("factory", "machinetypes", "machines"):
        for with_auth in (False, True):
            rate, replies = pure_rate(kind, options.seconds, with_auth)
            print(f"| respond() | {kind} | {'HMAC' if with_auth else 'none'} | {replies} | {rate:,.0f} |")
    rate, counters = socket_rate(options.seconds, options.window)
    print(f"| UDP 127.0.0.1, asyncio responder process | factory | none | 1 | {rate:,.0f} |")
    print(f"\nresponder counters: {counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
