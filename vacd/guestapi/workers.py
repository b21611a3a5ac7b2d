"""The guest servers as several processes: vacd binds and steers, each process serves a shard.

Rules (issue 15 item 3):
- One process's event loop is one processor at most: with 200 guests making a
  connection per request it is saturated, and the queue behind it is the latency
  (docs/benchmarks.md). Threads do not help (one interpreter, one lock). So on a large
  node (`guest_api_processes`, vac.conf(5)) the guest servers run as that many
  processes (vacd.guestapi.worker), each with its own interpreter and loop.
- vacd binds each address once as a steered group of sockets (vacd.guestapi.steering):
  a guest's connections always reach the same process, so per-slot rules (connection
  share, request bucket, upload memory) are whole in one process and need no sharing.
  vacd keeps its copies of the sockets open: a process that dies is started again on
  the same sockets, and its guests' connections wait in the backlog meanwhile.
- What vacd reads from its guest servers reads the same here: `heartbeats` (per part,
  the stalest process's, so one stuck process shows), `counters` (every process's,
  including those of processes that have since exited), `listening`.
- A process that exits is logged with its exit status and started again after a pause
  that doubles up to RESTART_MAX_SECONDS, and is reset once a process has served
  RESTART_RESET_SECONDS. Settings follow a reload within REPORT_SECONDS.
- Start fails (StartupError) if a process does not report ready within
  START_TIMEOUT_SECONDS: a guest server that cannot start must stop vacd's start, with
  the reason in the log, as a port in use does not (that is retried, as before).
- Stop: each process is told to stop, finishes the uploads it is writing (at most 30 s,
  as GuestApiServer.stop), and is killed by its PID if it has not exited by then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vacd.config import Settings
from vacd.startupgate import StartupError
from vacd.eventloop import ASYNCIO, cancel_and_wait
from vacd.guestapi.connection import ConnectionLimits
from vacd.guestapi.server import BIND_RETRY_SECONDS, METADATA, MJF, Listening
from vacd.guestapi.steering import listening_group
from vacd.guestapi.tokens import new_key
from vacd.guestapi.workerwire import REPORT_SECONDS, WorkerStart, receive, send
from vacd.paths import Paths
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 35.0
RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
RESTART_RESET_SECONDS = 300.0
TELL_TIMEOUT_SECONDS = 1.0
# Above this many host processors `auto` starts serving processes: one per 32, up to 8.
AUTO_PROCESSORS_PER_PROCESS = 32
AUTO_MIN_PROCESSORS = 64
AUTO_MAX_PROCESSES = 8


def serving_processes(configured: Optional[int], host_cpu_count: int) -> int:
    """How many guest server processes: `configured`, or for `auto` (None) what the host's size asks.

    0 means the guest servers stay on vacd's own guest thread, as on a small node one
    loop is enough and a process would only add its memory.
    """
    if configured is not None:
        return configured
    if host_cpu_count < AUTO_MIN_PROCESSORS:
        return 0
    return min(AUTO_MAX_PROCESSES, host_cpu_count // AUTO_PROCESSORS_PER_PROCESS)


@dataclass
class _Process:
    """One serving process, as vacd sees it."""

    index: int
    popen: Optional["subprocess.Popen[bytes]"] = None
    control: Optional[socket.socket] = None
    ready: Optional["asyncio.Future[int]"] = None
    started_at: float = 0.0
    restart_at: float = 0.0
    restart_delay: float = RESTART_FIRST_SECONDS
    settings_sent: Optional[Settings] = None
    heartbeats: dict[str, float] = field(default_factory=dict)
    counters: "Counter[tuple[str, str, int]]" = field(default_factory=Counter)
    accept_resource_failures: int = 0


class GuestApiWorkers:
    """vacd's guest servers run by `count` processes over steered sockets."""

    def __init__(
        self,
        paths: Paths,
        settings_provider: Callable[[], Settings],
        count: int,
        *,
        log_destination: str,
        log_file: Path,
        log_level: int,
        metadata_addresses: Sequence[str] = (METADATA_ADDRESS,),
        mjf_addresses: Sequence[str] = (GATEWAY_ADDRESS,),
        port: int = 80,
        bridge: Optional[str] = None,
        loop_kind: str = ASYNCIO,
        token_key: Optional[bytes] = None,
        limits: Optional[ConnectionLimits] = None,
        python: str = sys.executable,
    ) -> None:
        if count < 1:
            raise ValueError(f"{count} guest server processes: at least 1")
        self.paths = paths
        self.settings_provider = settings_provider
        self.count = count
        self.port = port
        self.bridge = bridge
        self.loop_kind = loop_kind
        # One key for all: a token stays good across a process's restart.
        self.token_key = token_key if token_key is not None else new_key()
        self.limits = limits
        self.python = python
        self.log_destination = log_destination
        self.log_file = log_file
        self.log_level = log_level
        self.listening: list[Listening] = []
        self._wanted = [(METADATA, address) for address in metadata_addresses] + [
            (MJF, address) for address in mjf_addresses
        ]
        self._groups: dict[tuple[str, str], list[socket.socket]] = {}
        self._processes = [_Process(index) for index in range(count)]
        # Counts of processes that have exited, so the totals never go back.
        self._retired: Counter[tuple[str, str, int]] = Counter()
        self._retired_resource_failures = 0
        self._supervisor: Optional[asyncio.Task[None]] = None
        self._reaping: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Processes that ended unasked since start (vac_guest_server_restarts_total).
        self.restarts = 0

    # What vacd reads (as from GuestApiServer)
    @property
    def heartbeats(self) -> dict[str, float]:
        """Per part, the oldest of the processes' last signs of life (a stuck one shows)."""
        merged: dict[str, float] = {}
        for process in self._processes:
            for part, last in process.heartbeats.items():
                merged[part] = min(merged.get(part, last), last)
        return merged

    @property
    def counters(self) -> "Counter[tuple[str, str, int]]":
        total = Counter(self._retired)
        for process in self._processes:
            total.update(process.counters)
        return total

    @property
    def accept_resource_failures(self) -> int:
        return self._retired_resource_failures + sum(
            process.accept_resource_failures for process in self._processes)

    def status(self) -> dict[str, Any]:
        """status.json's `guest_servers`: how many processes, their PIDs (serving now) and restarts."""
        return {"processes": self.count, "pids": self.pids(), "restarts": self.restarts}

    def pids(self) -> list[int]:
        """The serving processes' PIDs, for signals (vacd's SIGHUP) and tests."""
        return [process.popen.pid for process in self._processes
                if process.popen is not None and process.popen.returncode is None]

    def reopen_logs(self) -> None:
        """Pass vacd's SIGHUP on: each process reopens its log file (signal-safe)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    # Lifecycle
    async def start(self) -> None:
        """Bind what can be bound now, start every process and wait until each serves."""
        log.info("guest servers in %d processes, each guest's connections steered to one by source address",
                 self.count)
        for part, address in self._wanted:
            self._try_bind(part, address)
        for process in self._processes:
            self._start_process(process)
        for process in self._processes:
            assert process.ready is not None
            try:
                await asyncio.wait_for(asyncio.shield(process.ready), START_TIMEOUT_SECONDS)
            except (asyncio.TimeoutError, RuntimeError) as error:
                await self.stop()
                raise StartupError(
                    f"guest server process {process.index} did not start: "
                    f"{error or 'no answer within %.0fs' % START_TIMEOUT_SECONDS} (see the log)") from None
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        """Stop every process (uploads being written finish), then close the sockets."""
        self._stopping = True
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        for process in self._processes:
            if process.control is not None:
                # Through _tell: the control socket is non-blocking, and a full one must not
                # lose the stop (the process would then be killed only after the deadline).
                self._tell(process, ("stop",))
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in self._processes:
            await self._reap(process, deadline)
            ready = process.ready
            if ready is not None:
                if not ready.done():
                    ready.cancel()
                elif not ready.cancelled():
                    ready.exception()  # a start that failed was logged; do not report it again
        for group in self._groups.values():
            for member in group:
                member.close()
        self._groups.clear()
        self.listening = []

    # Processes
    def _start_process(self, process: _Process) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        earlier = process.ready
        if earlier is not None and earlier.done() and not earlier.cancelled():
            earlier.exception()  # a failure after start was logged where it happened
        process.ready = loop.create_future()
        try:
            process.popen = subprocess.Popen(
                [self.python, "-m", "vacd.guestapi.worker", "--control-fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as error:
            ours.close()
            process.ready.set_exception(RuntimeError(f"cannot run {self.python}: {error}"))
            self._schedule_restart(process, f"cannot run {self.python}: {error}")
            return
        finally:
            theirs.close()
        parts = [(part, group[process.index]) for (part, _address), group in self._groups.items()]
        settings = self.settings_provider()
        start = WorkerStart(
            index=process.index, count=self.count, paths=self.paths, settings=settings,
            parts=tuple(part for part, _ in parts), bridge=self.bridge, loop_kind=self.loop_kind,
            token_key=self.token_key, log_destination=self.log_destination, log_file=self.log_file,
            log_level=self.log_level, limits=self.limits)
        try:
            send(ours, ("start", start), [member for _, member in parts])
        except OSError as error:
            log.error("cannot start guest server process index=%d error=%s", process.index, error)
        process.settings_sent = settings
        process.started_at = time.monotonic()
        process.control = ours
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_message, process)
        log.info("guest server process started index=%d pid=%d", process.index, process.popen.pid)

    def _on_message(self, process: _Process) -> None:
        control = process.control
        assert control is not None
        while True:
            try:
                received = receive(control)
            except BlockingIOError:
                return
            except (OSError, ValueError) as error:
                log.error("unreadable message from guest server process index=%d error=%s", process.index, error)
                received = None
            if received is None:
                self._on_gone(process)
                return
            message, sockets = received
            for member in sockets:
                member.close()  # processes send none; never leak one
            if message[0] == "report":
                process.heartbeats = dict(message[1])
                process.counters = Counter(message[2])
                process.accept_resource_failures = int(message[3])
            elif message[0] == "ready" and process.ready is not None and not process.ready.done():
                process.ready.set_result(int(message[1]))

    def _on_gone(self, process: _Process) -> None:
        """The process's end of the control socket closed: it exited (or is about to)."""
        control = process.control
        if control is not None:
            asyncio.get_running_loop().remove_reader(control.fileno())
            control.close()
            process.control = None
        if process.ready is not None and not process.ready.done():
            process.ready.set_exception(RuntimeError("it exited before serving"))
        if not self._stopping:
            # Held until done: the loop keeps only a weak reference to a task.
            task = asyncio.get_running_loop().create_task(self._reap_and_restart(process))
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)

    async def _reap_and_restart(self, process: _Process) -> None:
        await self._reap(process, time.monotonic() + 5.0)
        if self._stopping:
            return
        served = time.monotonic() - process.started_at
        if served >= RESTART_RESET_SECONDS:
            process.restart_delay = RESTART_FIRST_SECONDS
        self._schedule_restart(process, f"exited after serving {served:.0f}s")

    def _schedule_restart(self, process: _Process, reason: str) -> None:
        """Start the process again after its pause (the supervisor does), which then doubles."""
        self.restarts += 1
        delay = process.restart_delay
        process.restart_delay = min(RESTART_MAX_SECONDS, delay * 2)
        process.restart_at = time.monotonic() + delay
        log.error("guest server process index=%d %s; its guests' connections wait in the backlog, "
                  "restarting in %.0fs", process.index, reason, delay)

    async def _reap(self, process: _Process, deadline: float) -> None:
        """Wait for the process to exit until `deadline`, then kill it by PID; fold in its counts."""
        popen = process.popen
        if popen is None:
            return
        while popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if popen.poll() is None:
            log.error("guest server process did not stop in time, killed index=%d pid=%d", process.index, popen.pid)
            popen.kill()
            await asyncio.get_running_loop().run_in_executor(None, popen.wait)
        if process.popen is not popen:
            return  # reaped meanwhile by the other waiter (a stop during a restart's reaping)
        log.info("guest server process ended index=%d pid=%d status=%s", process.index, popen.pid,
                 _exit_status(popen.returncode))
        if process.control is not None:
            asyncio.get_running_loop().remove_reader(process.control.fileno())
            process.control.close()
            process.control = None
        self._retired.update(process.counters)
        self._retired_resource_failures += process.accept_resource_failures
        process.counters = Counter()
        process.accept_resource_failures = 0
        process.popen = None

    async def _supervise(self) -> None:
        next_bind = time.monotonic() + BIND_RETRY_SECONDS
        while True:
            await asyncio.sleep(REPORT_SECONDS)
            now = time.monotonic()
            if now >= next_bind:
                next_bind = now + BIND_RETRY_SECONDS
                for part, address in self._wanted:
                    if (part, address) not in self._groups and self._try_bind(part, address):
                        self._hand_out(part, address)
            settings = self.settings_provider()
            for process in self._processes:
                if process.popen is None and process.control is None and now >= process.restart_at \
                        and process.restart_at > 0.0:
                    process.restart_at = 0.0
                    self._start_process(process)
                elif process.control is not None and process.settings_sent is not settings:
                    self._tell(process, ("settings", settings))
                    process.settings_sent = settings

    def _tell(self, process: _Process, message: tuple[Any, ...], sockets: Sequence[socket.socket] = ()) -> None:
        """Send a message, waiting TELL_TIMEOUT_SECONDS at most for room (a stopped process reads nothing)."""
        control = process.control
        assert control is not None
        try:
            control.settimeout(TELL_TIMEOUT_SECONDS)
            send(control, message, sockets)
        except OSError as error:  # socket.timeout included
            log.warning("cannot reach guest server process index=%d message=%s error=%s", process.index,
                        message[0], error or "timed out")
        finally:
            control.setblocking(False)

    # Sockets
    def _try_bind(self, part: str, address: str) -> bool:
        try:
            group = listening_group(address, self.port, self.count)
        except OSError as error:
            log.error("guest server cannot listen part=%s address=%s port=%s error=%s retry_in=%ss",
                      part, address, self.port, error, BIND_RETRY_SECONDS)
            return False
        self._groups[(part, address)] = group
        host, port = group[0].getsockname()[:2]
        self.listening.append(Listening(part, str(host), int(port)))
        log.info("guest server listening part=%s address=%s port=%s processes=%d", part, host, port, self.count)
        return True

    def _hand_out(self, part: str, address: str) -> None:
        """A group bound after the processes started: each running process gets its socket."""
        group = self._groups[(part, address)]
        for process in self._processes:
            if process.control is not None:
                self._tell(process, ("listen", part), [group[process.index]])


def _exit_status(returncode: Optional[int]) -> str:
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"
