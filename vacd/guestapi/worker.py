"""One of vacd's guest server processes: `python -m vacd.guestapi.worker --control-fd N`.

Rules (issue 15 item 3; vacd.guestapi.workers starts these, vacd.guestapi.workerwire is
what they say):
- It runs the same GuestApiServer as vacd's own guest thread, on sockets vacd bound and
  steered (vacd.guestapi.steering): it serves only the slots the kernel sends it, so its
  per-slot limits are the slots' whole limits. Its shard's part of the joboutputs cap and
  of the upload memory pool are its own.
- It binds nothing and reads no configuration file: the sockets and the settings come
  from vacd, and a reload's settings follow within REPORT_SECONDS.
- It stops, finishing the uploads it is writing, when vacd says so, when vacd's end of
  the control socket closes (vacd stopped or was killed), or on SIGTERM, which the kernel
  also sends it if vacd dies first (PR_SET_PDEATHSIG).
- It logs where vacd logs, as `vacd[PID]`, and reopens its log file on SIGHUP as vacd does.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any, Optional, Sequence

from vacd.config import Settings
from vacd.eventloop import new_event_loop
from vacd.fdlimit import current_fd_limit, guest_connection_cap
from vacd.gcfreeze import freeze_startup_heap
from vacd.guestapi.connection import ConnectionLimits
from vacd.guestapi.linkidentity import LinkIdentity
from vacd.guestapi.server import GuestApiServer
from vacd.guestapi.steering import Shard
from vacd.guestapi.workerwire import REPORT_SECONDS, WorkerStart, receive, send
from vacd.logconfig import configure_logging, reopen_logs
from vacd.store import Store

# Named, not __name__: run with -m this module is __main__, and the log should say which part spoke.
log = logging.getLogger("vacd.guestapi.worker")

# Linux <sys/prctl.h>.
_PR_SET_PDEATHSIG = 1


def shard_limits(count: int) -> ConnectionLimits:
    """This process's connection limits: its descriptors' cap, and its part of the upload pool.

    Each process has vacd's descriptor limit to itself (inherited), so the connection cap
    is not split. The upload memory pool is, so that vacd's processes together hold no more
    than one server would, except that each keeps room for one slot's whole allowance.
    """
    whole = ConnectionLimits(max_connections=guest_connection_cap(current_fd_limit()))
    pool = max(whole.max_upload_bytes_in_flight // count, whole.max_upload_bytes_in_flight_per_slot)
    return dataclasses.replace(whole, max_upload_bytes_in_flight=pool)


class Worker:
    """The server of one shard, fed by its control socket."""

    def __init__(self, control: socket.socket, start: WorkerStart, sockets: Sequence[socket.socket]) -> None:
        self.control = control
        self.start = start
        self.settings: Settings = start.settings
        self.link_identity = LinkIdentity(start.bridge) if start.bridge else None
        self.server = GuestApiServer(
            start.paths, Store(start.paths), lambda: self.settings,
            metadata_addresses=(), mjf_addresses=(),
            link_check=self.link_identity.confirms_slot if self.link_identity else None,
            limits=start.limits or shard_limits(start.count),
            token_key=start.token_key,
            shard=Shard(start.index, start.count),
        )
        self.initial_sockets = list(zip(start.parts, sockets))
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, self.stopped.set)
        # Not the loop's handler: reopening is a flag, safe from any point.
        signal.signal(signal.SIGHUP, lambda *_: reopen_logs())
        await self.server.start()
        for part, listening_socket in self.initial_sockets:
            self.server.adopt(part, listening_socket)
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._on_control)
        log.info("guest server process serving shard=%d/%d pid=%d parts=%s", self.start.index, self.start.count,
                 os.getpid(), ",".join(part for part, _ in self.initial_sockets) or "none yet")
        freeze_startup_heap()
        self._send(("ready", os.getpid()))
        reporting = loop.create_task(self._report())
        try:
            await self.stopped.wait()
        finally:
            reporting.cancel()
            loop.remove_reader(self.control.fileno())
            await self.server.stop()
            if self.link_identity is not None:
                self.link_identity.close()
            log.info("guest server process stopped shard=%d/%d", self.start.index, self.start.count)

    def _on_control(self) -> None:
        while True:
            try:
                received = receive(self.control)
            except BlockingIOError:
                return
            except (OSError, ValueError) as error:
                log.error("guest server process cannot read vacd's control socket, stopping error=%s", error)
                self.stopped.set()
                return
            if received is None:
                log.info("vacd's control socket closed: stopping")
                self.stopped.set()
                return
            message, sockets = received
            kind = message[0]
            if kind == "settings":
                self.settings = message[1]
            elif kind == "listen":
                for listening_socket in sockets:
                    self.server.adopt(message[1], listening_socket)
            elif kind == "stop":
                self.stopped.set()
            else:
                log.warning("guest server process ignores an unknown control message kind=%r", kind)
                for listening_socket in sockets:
                    listening_socket.close()

    async def _report(self) -> None:
        while True:
            self._send(("report", dict(self.server.heartbeats), dict(self.server.counters),
                        self.server.accept_resource_failures))
            await asyncio.sleep(REPORT_SECONDS)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            send(self.control, message)
        except BlockingIOError:
            # vacd is not reading: a report is dropped, the next one carries the totals.
            log.debug("control socket full, report dropped")
        except OSError as error:
            log.info("vacd's control socket closed error=%s: stopping", error)
            self.stopped.set()


def _stop_with_parent() -> None:
    """SIGTERM when vacd's thread that started this process ends.

    A vacd gone before this call is not signalled for: `main` sees its control socket at end
    of file (or a new parent) and returns.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError) as error:
        log.debug("PR_SET_PDEATHSIG unavailable error=%s", error)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vacd-guestapi", description="One of vacd's guest server processes.")
    parser.add_argument("--control-fd", type=int, required=True, help="vacd's control socket (inherited)")
    arguments = parser.parse_args(argv)
    parent = os.getppid()
    _stop_with_parent()
    control = socket.socket(fileno=arguments.control_fd)
    received = receive(control)
    if received is None or os.getppid() != parent:
        return 0  # vacd went before it said anything: nothing to serve
    message, sockets = received
    if message[0] != "start" or not isinstance(message[1], WorkerStart):
        print(f"vacd-guestapi: expected a start message, got {message[0]!r}", file=sys.stderr)
        return 2
    start: WorkerStart = message[1]
    configure_logging(start.log_destination, start.log_file, start.log_level)
    loop = new_event_loop(start.loop_kind)
    asyncio.set_event_loop(loop)
    try:
        worker = Worker(control, start, sockets)
        loop.run_until_complete(worker.run())
    except Exception:  # boundary: vacd restarts this process; the reason goes to the log
        log.exception("guest server process failed shard=%d/%d", start.index, start.count)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
