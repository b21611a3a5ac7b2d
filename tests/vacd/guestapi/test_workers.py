"""The guest servers as several processes (vacd.guestapi.workers): real processes, real sockets.

Each test runs in a network namespace it makes, whose loopback holds 169.254.0.0/16, so
the servers listen on the real metadata and MJF addresses, port 80, and the clients'
sources are the slots' own addresses: the processes map them to slots exactly as in
production (no test mapping), and the kernel's steering is the production program.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import pytest

from tests.namespaces import enter_namespace, in_namespace
from tests.vacd.guestapi.conftest import Site, make_site, parse_responses, read_until_closed
from vacd.guestapi.steering import process_for_source
from vacd.guestapi.workers import GuestApiWorkers
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS, ip_address_for
from vacd.startupgate import StartupError

PROCESSES = 3
T = TypeVar("T")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    # pyroute2 runs ldconfig -p to find libc; the guest server processes are Python's own.
    pytest.mark.allow_commands("ldconfig", "python -m vacd.guestapi.worker"),
]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace whose loopback is up and holds all of 169.254.0.0/16."""
    from pyroute2 import NetNS, netns

    name = f"vacwk-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with NetNS(name) as handle:
            index = handle.link_lookup(ifname="lo")[0]
            handle.link("set", index=index, state="up")
            handle.addr("add", index=index, address=METADATA_ADDRESS, prefixlen=16)
        yield name
    finally:
        netns.remove(name)


class Servers:
    """GuestApiWorkers on an event loop whose thread is in the test's namespace."""

    def __init__(self, site: Site, namespace: str, count: int = PROCESSES, log_destination: str = "stderr",
                 log_file: Optional[Path] = None) -> None:
        self.site = site
        self.namespace = namespace
        self.loop = asyncio.new_event_loop()
        entered = threading.Event()

        def run() -> None:
            enter_namespace(namespace)
            entered.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="workers-test-loop", daemon=True)
        self.thread.start()
        assert entered.wait(10)
        self.workers = GuestApiWorkers(
            site.paths, lambda: self.site.settings, count,
            log_destination=log_destination, log_file=log_file or site.paths.log_file, log_level=logging.INFO)
        self.call(self.workers.start())

    def call(self, coroutine: Any, timeout: float = 90.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def in_namespace(self, make: Callable[[], T]) -> T:
        """`make()` run on a thread in the namespace (a client socket made there stays there)."""
        return in_namespace(self.namespace, make)

    def connect(self, ordinal: int, host: str = METADATA_ADDRESS) -> socket.socket:
        source = ip_address_for(ordinal)
        return self.in_namespace(
            lambda: socket.create_connection((host, 80), timeout=30, source_address=(source, 0)))

    def get(self, ordinal: int, path: str = "/latest/meta-data/instance-id", host: str = METADATA_ADDRESS) -> int:
        with self.connect(ordinal, host) as client:
            client.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            responses = parse_responses(read_until_closed(client))
        assert len(responses) == 1
        return responses[0].status

    def close(self) -> None:
        try:
            self.call(self.workers.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def servers(tmp_path: Path, namespace: str) -> Iterator[Servers]:
    running = Servers(make_site(tmp_path), namespace)
    try:
        yield running
    finally:
        running.close()


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def served_by_process(servers: Servers) -> list[int]:
    """Each process's count of 200 answers, from its reports."""
    return [sum(count for (_part, _path, status), count in process.counters.items() if status == 200)
            for process in servers.workers._processes]


def test_each_slot_is_answered_by_the_one_process_its_address_steers_to(servers: Servers) -> None:
    ordinals = range(1, 10)
    for ordinal in ordinals:
        servers.site.create_machine(ordinal)
    expected = [0] * PROCESSES
    for ordinal in ordinals:
        # A different number of requests from each slot: the per-process totals say who served whom.
        for _ in range(ordinal):
            assert servers.get(ordinal) == 200
        expected[process_for_source(ip_address_for(ordinal), PROCESSES)] += ordinal
    assert all(expected), "the slots chosen reach every process"
    wait_for(lambda: served_by_process(servers) == expected)
    assert servers.workers.counters[("metadata", "ec2", 200)] == sum(ordinals)


def test_a_slots_connection_share_is_counted_in_one_process_not_once_per_process(servers: Servers) -> None:
    """Spread by the kernel's own hash, a slot would get its share in every process."""
    servers.site.create_machine(4)
    share = 64  # ConnectionLimits.max_connections_per_slot; the test site has 8 slots
    held = [servers.connect(4) for _ in range(share)]
    try:
        refused = 0
        for _ in range(PROCESSES):
            try:
                with servers.connect(4) as extra:
                    extra.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n")
                    refused += read_until_closed(extra) == b""
            except (ConnectionResetError, BrokenPipeError):
                refused += 1  # reset at accept, perhaps before connect() returned
        assert refused == PROCESSES
    finally:
        for client in held:
            client.close()
    # Once the held connections are gone the slot is served again.

    def served_again() -> bool:
        try:
            return servers.get(4) == 200
        except (ConnectionResetError, BrokenPipeError):
            return False  # its process has not yet seen all the held connections close

    wait_for(served_again)


def test_mjf_is_served_on_the_gateway_address_by_the_same_steering(servers: Servers) -> None:
    servers.site.create_machine(5)
    assert servers.get(5, "/machinefeatures/hs06", host=GATEWAY_ADDRESS) == 200


def test_a_killed_process_is_started_again_and_its_guests_wait_for_it_rather_than_move(servers: Servers) -> None:
    ordinal = next(o for o in range(1, 9) if process_for_source(ip_address_for(o), PROCESSES) == 0)
    servers.site.create_machine(ordinal)
    assert servers.get(ordinal) == 200
    wait_for(lambda: served_by_process(servers)[0] == 1)
    killed = servers.workers._processes[0].popen
    assert killed is not None
    os.kill(killed.pid, signal.SIGKILL)
    # Sent while the process is dead or starting: the connection waits in its socket's backlog.
    assert servers.get(ordinal) == 200
    replaced = servers.workers._processes[0].popen
    assert replaced is not None and replaced.pid != killed.pid
    status = servers.workers.status()
    assert status["processes"] == PROCESSES and replaced.pid in status["pids"] and killed.pid not in status["pids"]
    # The dead process's count is kept: totals never go back.
    wait_for(lambda: servers.workers.counters[("metadata", "ec2", 200)] == 2)
    assert served_by_process(servers)[0] == 1
    assert servers.workers.restarts == 1


def test_a_reload_reaches_every_process(servers: Servers) -> None:
    for ordinal in range(1, 7):
        servers.site.create_machine(ordinal)
    assert servers.get(1, "/latest/meta-data.json") == 200
    servers.site.settings = replace(servers.site.settings, metadata_tokens="required")
    # Within a report tick or two every process refuses a path that now needs a token.
    wait_for(lambda: all(servers.get(ordinal, "/latest/meta-data.json") == 401 for ordinal in range(1, 7)))


def test_heartbeats_are_the_stalest_process_so_one_stuck_process_shows(servers: Servers) -> None:
    wait_for(lambda: all(process.heartbeats for process in servers.workers._processes))
    ordinals = {process_for_source(ip_address_for(ordinal), PROCESSES): ordinal for ordinal in range(1, 9)}
    for ordinal in ordinals.values():
        servers.site.create_machine(ordinal)
    stuck = servers.workers._processes[1]
    assert stuck.popen is not None
    os.kill(stuck.popen.pid, signal.SIGSTOP)
    try:
        stuck_at = stuck.heartbeats["metadata"]
        others = [process for process in servers.workers._processes if process is not stuck]

        def others_served_since() -> bool:
            for index in (0, 2):
                assert servers.get(ordinals[index]) == 200
            return all(process.heartbeats["metadata"] > stuck_at for process in others)

        wait_for(others_served_since)
        assert servers.workers.heartbeats["metadata"] == stuck_at
    finally:
        os.kill(stuck.popen.pid, signal.SIGCONT)


def test_stop_ends_every_process(tmp_path: Path, namespace: str) -> None:
    running = Servers(make_site(tmp_path), namespace)
    pids = running.workers.pids()
    assert len(pids) == PROCESSES
    running.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


PARENT_SCRIPT = """
import asyncio, json, logging, sys
from pathlib import Path
from tests.namespaces import enter_namespace, in_namespace
from tests.vacd.guestapi.conftest import make_site
from vacd.guestapi.workers import GuestApiWorkers

site = make_site(Path(sys.argv[1]))
workers = GuestApiWorkers(site.paths, lambda: site.settings, 2, log_destination="stderr",
                          log_file=site.paths.log_file, log_level=logging.INFO, port=0,
                          metadata_addresses=("127.0.0.1",), mjf_addresses=())
loop = asyncio.new_event_loop()
loop.run_until_complete(workers.start())
print(json.dumps(workers.pids()), flush=True)
loop.run_forever()
"""


def test_vacd_killed_takes_its_guest_server_processes_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(tmp_path / "site")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[3])
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2
        parent.kill()
        parent.wait(10)

        def all_gone() -> bool:
            for pid in pids:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                # A zombie is gone too (init reaps it); anything else is still serving.
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                        return False
            return True

        wait_for(all_gone, 30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize("python", ["/bin/false", "/nonexistent/python3"])
def test_a_process_that_cannot_start_stops_vacds_start_with_the_reason_and_leaves_nothing(
        tmp_path: Path, python: str) -> None:
    site = make_site(tmp_path)
    workers = GuestApiWorkers(site.paths, lambda: site.settings, 2, log_destination="stderr",
                              log_file=site.paths.log_file, log_level=logging.INFO, port=0,
                              metadata_addresses=("127.0.0.1",), mjf_addresses=(), python=python)
    with pytest.raises(StartupError, match="guest server process 0 did not start"):
        asyncio.run(workers.start())
    assert workers.pids() == [] and workers.listening == []


def test_the_processes_log_where_vacd_logs_and_reopen_the_file_on_vacds_sighup(
        tmp_path: Path, namespace: str) -> None:
    site = make_site(tmp_path)
    log_file = tmp_path / "vacd.log"
    running = Servers(site, namespace, count=2, log_destination="file", log_file=log_file)
    try:
        pids = running.workers.pids()
        wait_for(lambda: all(f"vacd[{pid}]: INFO vacd.guestapi.worker: guest server process serving" in
                             log_file.read_text() for pid in pids))
        rotated = log_file.rename(tmp_path / "vacd.log.1")
        running.workers.reopen_logs()
    finally:
        running.close()
    # Their last lines went to the new file, as logrotate expects after its SIGHUP.
    reopened = log_file.read_text()
    for pid in pids:
        assert f"vacd[{pid}]: INFO vacd.guestapi.worker: guest server process stopped" in reopened
        assert f"vacd[{pid}]" in rotated.read_text()


def test_an_address_bound_late_is_handed_to_every_running_process(tmp_path: Path, namespace: str) -> None:
    """A port held at start (a Vac 03 going away, say): the processes start and serve once it is free."""
    site = make_site(tmp_path)
    site.create_machine(1)
    site.create_machine(2)
    holder = in_namespace(namespace, lambda: socket.create_server((METADATA_ADDRESS, 80)))
    running = Servers(site, namespace, count=2)
    try:
        assert running.workers.listening == [] or all(
            listening.part != "metadata" for listening in running.workers.listening)
        holder.close()
        # Bound at the next retry (BIND_RETRY_SECONDS), then each process gets its socket.
        wait_for(lambda: any(listening.part == "metadata" for listening in running.workers.listening), 30)

        def both_served() -> bool:
            try:
                return running.get(1) == 200 and running.get(2) == 200
            except OSError:
                return False

        wait_for(both_served, 10)
        assert {process_for_source(ip_address_for(ordinal), 2) for ordinal in (1, 2)} == {0, 1}
    finally:
        holder.close()
        running.close()
