"""VacQuery amplification: bytes out / bytes in for each query kind and kind of sender.

Run: `.venv/bin/python bench/amplification.py [--slots 64] [--machinetypes 4]`.

The real `vacquery.responder_transport.ResponderProtocol` (the real `respond()`, its default
`ReplyBudget`) listens on 127.0.0.1 over real UDP; clients send from other loopback
addresses of this host. The responder is told not to count loopback as listed
(`trust_loopback=False`, which vacd never sets), and lists 127.0.0.2 as a factory of the
space, so that 127.0.0.2 plays a listed factory and 127.0.0.3 any other host.

For each (sender, query kind, request form) a fresh responder budget answers one query;
every reply datagram that arrives before 300 ms of silence is counted (UDP payload
bytes, as the amplification factor is usually given). Senders:

- unlisted, unsigned:          a site without a key (or `vacquery_auth = optional`), a host not in `factories`;
- listed, unsigned:            the same site, the query "from" a listed factory (a Vac 03 peer, or a spoofer);
- signed, auth required:       `vacquery_auth = required`, a query signed with the site key, from anywhere;
- listed, auth required, unsigned: `vacquery_auth = required`, a Vac 03 peer (or a spoofer) at a listed address.

Request forms: `vac03` is the query Vac 03 sends (no padding, about 225 bytes); `padded`
is ours (880 bytes; signed, about 1,015). Then two rows measure what a spoofed listed
address can draw: 400 machines queries back to back, and 20 queries a second for 30 s,
against one budget (the per-source bucket is the bound).

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vacquery.auth import AuthMode, Authenticator, Scope  # noqa: E402
from vacquery.codec import QUERY_PAD_BYTES, encode_query  # noqa: E402
from vacquery.messages import (  # noqa: E402
    QUERY_CLASSES,
    FactoryStatus,
    MachineState,
    MachineStatus,
    MachinetypeStatus,
    MessageType,
    Snapshot,
)
from vacquery.responder import PER_SOURCE_BURST_BYTES, PER_SOURCE_BYTES_PER_SECOND, ReplyBudget  # noqa: E402
from vacquery.responder_transport import ResponderProtocol, start_responder  # noqa: E402

SPACE = "vac01.example.com"
FACTORY = "vac-factory-01.example.com"
KEY = b"benchmark-site-key-of-32-bytes!!"
RESPONDER = "127.0.0.1"
LISTED = "127.0.0.2"
UNLISTED = "127.0.0.3"
SILENCE_SECONDS = 0.3
KINDS = {"factory": MessageType.FACTORY_QUERY, "machinetypes": MessageType.MACHINETYPES_QUERY,
         "machines": MessageType.MACHINES_QUERY}


def factory_snapshot(slots: int, machinetypes: int) -> Snapshot:
    """A full factory: every slot running, every optional field set (the largest statuses)."""
    short, _, domain = FACTORY.partition(".")
    machines = tuple(
        MachineStatus(space=SPACE, factory=FACTORY, num_machines=slots, machine=f"{short}-{ordinal:02d}.{domain}",
                      state=MachineState.RUNNING, uuid=f"00000000-0000-4000-8000-{ordinal:012d}",
                      created_time=1_700_000_000, started_time=1_700_000_010, heartbeat_time=1_700_003_000,
                      cpu_seconds=2900.0, cpu_percentage=99.5, hs06=10.0, machinetype=f"type-{ordinal % machinetypes}",
                      shutdown_message=None, shutdown_time=None, processors=1, machine_model="cernvm3",
                      fqan="/lhcb/Role=pilot", site="example.com", daemon_version="Vac 04.00.00 vacd-responder")
        for ordinal in range(slots))
    types = tuple(
        MachinetypeStatus(space=SPACE, factory=FACTORY, num_machinetypes=machinetypes, machinetype=f"type-{number}",
                          running_hs06=160.0, num_before_fizzle=0, shutdown_message="200 Success",
                          shutdown_time=1_700_000_000, shutdown_machine=f"{short}-03.{domain}",
                          running_machines=slots // machinetypes, running_processors=float(slots // machinetypes),
                          bytes_per_processor=2 << 30, max_wallclock_seconds=172800, max_processors=1,
                          fqan="/lhcb/Role=pilot", site="example.com", daemon_version="Vac 04.00.00 vacd-responder")
        for number in range(machinetypes))
    factory = FactoryStatus(space=SPACE, factory=FACTORY, running_processors=slots, running_machines=slots,
                            running_hs06=10.0 * slots, max_processors=slots, max_machines=slots,
                            max_hs06=10.0 * slots, root_disk_avail_kb=50_000_000, root_disk_avail_inodes=3_000_000,
                            daemon_disk_avail_kb=900_000_000, daemon_disk_avail_inodes=60_000_000,
                            load_average=63.5, kernel_version="5.14.0-427.13.1.el9_4.x86_64",
                            os_issue="AlmaLinux release 9.4 (Seafoam Ocelot)", boot_time=1_699_000_000,
                            factory_heartbeat_time=1_700_003_000, responder_heartbeat_time=1_700_003_000,
                            mjf_heartbeat_time=1_700_003_000, metadata_heartbeat_time=1_700_003_000,
                            swap_used_kb=0, swap_free_kb=8_388_604, mem_used_kb=250_000_000,
                            mem_total_kb=263_000_000, site="example.com", daemon_version="Vac 04.00.00 vacd-responder")
    return Snapshot(machines, types, factory)


@dataclass(frozen=True)
class Sender:
    label: str
    source: str
    responder_key: bool  # the responder has the site key, vacquery_auth = required
    signs: bool


SENDERS = (
    Sender("unlisted, unsigned", UNLISTED, responder_key=False, signs=False),
    Sender("listed, unsigned", LISTED, responder_key=False, signs=False),
    Sender("signed, auth required", UNLISTED, responder_key=True, signs=True),
    Sender("listed, auth required, unsigned", LISTED, responder_key=True, signs=False),
)


class Responder:
    """The real responder on RESPONDER, served by an asyncio loop in a thread."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.clock_readings: list[float] = []  # when the responder answered: the budget's time
        self.protocol = ResponderProtocol(trusted_sources=frozenset([LISTED]), trust_loopback=False,
                                          clock=self._clock)
        self.protocol.publish(snapshot)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.transport = asyncio.run_coroutine_threadsafe(start_responder(RESPONDER, 0, self.protocol),
                                                          self.loop).result(5)
        self.port = int(self.transport.get_extra_info("sockname")[1])

    def _clock(self) -> float:
        now = time.time()
        self.clock_readings.append(now)
        return now

    @property
    def answering_seconds(self) -> float:
        """From the first datagram the responder read since `reset` to the last."""
        return self.clock_readings[-1] - self.clock_readings[0] if self.clock_readings else 0.0

    def reset(self, authenticator: Optional[Authenticator]) -> None:
        """A fresh budget and the given key: each measurement starts from a full bucket."""
        self.clock_readings = []
        self.protocol.budget = ReplyBudget()
        self.protocol.authenticator = authenticator

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def client_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((source, 0))
    sock.settimeout(SILENCE_SECONDS)
    return sock


@dataclass
class Received:
    """What came back: statuses, and replies_limited notices (never larger than their query)."""

    statuses: int = 0
    status_bytes: int = 0
    notices: int = 0
    notice_bytes: int = 0

    @property
    def datagrams(self) -> int:
        return self.statuses + self.notices

    @property
    def total_bytes(self) -> int:
        return self.status_bytes + self.notice_bytes


def drain(sock: socket.socket, received: Received) -> Received:
    """Count what arrives until SILENCE_SECONDS pass with nothing."""
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return received
        if data.startswith(b'{"message_type": "replies_limited"'):
            received.notices += 1
            received.notice_bytes += len(data)
        else:
            received.statuses += 1
            received.status_bytes += len(data)


def request_for(kind: MessageType, padded: bool, signer: Optional[Authenticator], now: float) -> bytes:
    query = QUERY_CLASSES[kind](space=SPACE, cookie="ab" * 32, daemon_version="Vac 04.00.00 vac-command")
    request = encode_query(query, QUERY_PAD_BYTES if padded else 0)
    if signer is not None:
        request = signer.sign(request, now, Scope.query_to(FACTORY, SPACE))
    return request


def authenticator() -> Authenticator:
    return Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)


def measure_one(responder: Responder, sender: Sender, kind: MessageType, padded: bool) -> tuple[int, Received]:
    responder.reset(authenticator() if sender.responder_key else None)
    request = request_for(kind, padded, authenticator() if sender.signs else None, time.time())
    with client_socket(sender.source) as sock:
        sock.sendto(request, (RESPONDER, responder.port))
        received = drain(sock, Received())
    return len(request), received


def measure_flood(responder: Responder, queries: int, per_second: Optional[float]) -> tuple[int, Received]:
    """Machines queries (Vac 03's size) "from" the listed address against one budget."""
    responder.reset(None)
    request = request_for(MessageType.MACHINES_QUERY, False, None, time.time())
    received = Received()

    with client_socket(LISTED) as sock:
        sock.settimeout(SILENCE_SECONDS * 4)
        reader = threading.Thread(target=drain, args=(sock, received))
        reader.start()
        started = time.monotonic()
        for index in range(queries):
            if per_second is not None:
                time.sleep(max(0.0, started + index / per_second - time.monotonic()))
            sock.sendto(request, (RESPONDER, responder.port))
        reader.join()
    return queries * len(request), received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--machinetypes", type=int, default=4)
    options = parser.parse_args()
    # The responder's "answer limited" lines would run into the table.
    logging.getLogger("vacquery").setLevel(logging.ERROR)
    responder = Responder(factory_snapshot(options.slots, options.machinetypes))
    try:
        print(f"{options.slots}-slot factory, {options.machinetypes} machinetypes, real UDP on loopback, "
              f"default budget (per source {PER_SOURCE_BURST_BYTES // 1024} KiB burst, "
              f"{PER_SOURCE_BYTES_PER_SECOND // 1024} KiB/s)\n")
        print("| sender | query | request | bytes in | statuses out | notices out | bytes out | out / in |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        for sender in SENDERS:
            for name, kind in KINDS.items():
                for padded in ((True,) if sender.signs else (False, True)):
                    form = "signed, padded" if sender.signs else ("padded" if padded else "vac03")
                    bytes_in, received = measure_one(responder, sender, kind, padded)
                    print(f"| {sender.label} | {name} | {form} | {bytes_in:,} | {received.statuses} | "
                          f"{received.notices} | {received.total_bytes:,} | {received.total_bytes / bytes_in:.2f} |")
        print("\nA spoofed listed address, machines queries of Vac 03's size against one budget:\n")
        print("| queries | bytes in | statuses out | status bytes | bound: burst + rate x time | "
              "notices out | notice bytes | out / in |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, queries, rate in (("400 at once", 400, None), ("20/s for 30 s", 600, 20.0)):
            bytes_in, received = measure_flood(responder, queries, rate)
            # The bucket refills on the responder's clock, from its first answer to its last.
            bound = PER_SOURCE_BURST_BYTES + PER_SOURCE_BYTES_PER_SECOND * responder.answering_seconds
            print(f"| {label} | {bytes_in:,} | {received.statuses} | {received.status_bytes:,} | {bound:,.0f} | "
                  f"{received.notices} | {received.notice_bytes:,} | {received.total_bytes / bytes_in:.2f} |")
        print(f"\nresponder counters: {dict(responder.protocol.counters)}")
    finally:
        responder.close()


if __name__ == "__main__":
    main()
