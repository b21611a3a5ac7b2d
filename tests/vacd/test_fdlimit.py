"""File descriptors (issue 8 item 11): vacd raises its limit, and guests cannot take the factory's share.

The server tests run the real GuestApiServer in a child process whose soft RLIMIT_NOFILE
is 256, and open idle connections to it on loopback from this process (whose own limit is
untouched, so the clients never run out first).
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.vacd.guestapi.conftest import METADATA_HOST, parse_responses, read_until_closed
from vacd.fdlimit import FACTORY_FD_HEADROOM, FD_LIMIT_TARGET, guest_connection_cap, raise_fd_limit

REPOSITORY = Path(__file__).resolve().parents[2]
CHILD_FD_LIMIT = 256

# The child: a site under argv[2] with one machine in slot 3, the guest API on loopback under
# a soft fd limit of argv[1], connection cap derived (argv[3] == "derived") or given. It
# prints its ports and cap, then answers commands on stdin: "probe" opens 32 files (as a
# factory pass would) and prints how many it could; "stats" prints the server's counters.
CHILD = r"""
import asyncio, json, logging, resource, sys
from pathlib import Path
soft_limit, prefix, cap = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
from tests.vacd.guestapi.conftest import METADATA_HOST, MJF_HOST, loopback_source_to_ordinal, make_site
from vacd.guestapi.connection import ConnectionLimits
from vacd.guestapi.server import GuestApiServer

site = make_site(prefix)
site.create_machine(3)

def probe():
    handles = []
    try:
        for index in range(32):
            handles.append(open(prefix / f"probe-{index}", "w"))
        return len(handles)
    except OSError as error:
        return f"{len(handles)} then {error.strerror}"
    finally:
        for handle in handles:
            handle.close()

async def main():
    limits = None if cap == "derived" else ConnectionLimits(max_connections=int(cap),
                                                            max_connections_per_slot=100000)
    server = GuestApiServer(site.paths, site.store, lambda: site.settings, metadata_addresses=(METADATA_HOST,),
                            mjf_addresses=(MJF_HOST,), port=0, source_to_ordinal=loopback_source_to_ordinal,
                            limits=limits)
    await server.start()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ports": {item.part: item.port for item in server.listening},
                      "cap": server.limits.max_connections}), flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "probe":
            answer = probe()
        elif line == "stats":
            answer = {"accept_resource_failures": server.accept_resource_failures,
                      "connections": server._connection_count}
        else:
            break
        print(json.dumps(answer), flush=True)
    await server.stop()

asyncio.run(main())
"""


class Child:
    def __init__(self, process: "subprocess.Popen[str]") -> None:
        self.process = process
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        self.port: int = started["ports"]["metadata"]
        self.cap: int = started["cap"]

    def ask(self, command: str) -> object:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def connect(self, source: str = "127.0.0.3") -> socket.socket:
        return socket.create_connection((METADATA_HOST, self.port), timeout=10, source_address=(source, 0))

    def fresh_request_status(self) -> int:
        with self.connect() as client:
            client.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: x\r\n\r\n")
            (response,) = parse_responses(read_until_closed(client))
        return response.status


def start_child(tmp_path: Path, cap: str) -> Iterator[Child]:
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(CHILD_FD_LIMIT), str(tmp_path / "site"), cap],
                               cwd=REPOSITORY, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=(tmp_path / "child.log").open("w"), text=True)
    try:
        yield Child(process)
    finally:
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.close()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=30)


def open_idle(child: Child, count: int) -> list[socket.socket]:
    """`count` connections that each send nothing, from slot sources 2..249 in turn."""
    return [child.connect(f"127.0.0.{2 + index % 248}") for index in range(count)]


def is_closed_by_server(client: socket.socket) -> bool:
    client.settimeout(0.2)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_connection_cap_leaves_the_factory_a_quarter_of_the_limit() -> None:
    assert guest_connection_cap(1024) == 768
    assert guest_connection_cap(256) == 256 - FACTORY_FD_HEADROOM
    assert guest_connection_cap(FD_LIMIT_TARGET) == 4096
    for limit in range(200, 70000, 997):
        assert guest_connection_cap(limit) + max(FACTORY_FD_HEADROOM, limit // 4) <= limit


def test_raise_fd_limit_lifts_the_soft_limit_up_to_target_and_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip(f"hard limit {hard} is below what the test needs")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_fd_limit(target=512) == 512
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (512, hard)
        if hard != resource.RLIM_INFINITY:
            assert raise_fd_limit(target=hard + 1000) == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_units_set_the_limit_vacd_raises_to() -> None:
    unit = (REPOSITORY / "etc/vacd.service").read_text()
    assert f"\nLimitNOFILE={FD_LIMIT_TARGET}\n" in unit
    assert f"ulimit -n {FD_LIMIT_TARGET}" in (REPOSITORY / "etc/init.d/vacd").read_text()


def test_daemon_main_raises_the_limit() -> None:
    source = (REPOSITORY / "vacd/daemoncli.py").read_text()
    main = source[source.index("def main("):]
    assert "raise_fd_limit()" in main


@pytest.mark.allow_commands(sys.executable)
def test_idle_guests_beyond_the_cap_are_refused_and_the_factory_can_still_open_files(tmp_path: Path) -> None:
    for child in start_child(tmp_path, "derived"):
        assert child.cap == guest_connection_cap(CHILD_FD_LIMIT)
        idle = open_idle(child, child.cap + 40)
        try:
            # Each connection past the cap is accepted and closed at once.
            refused = [client for client in idle[child.cap - 8:] if is_closed_by_server(client)]
            assert len(refused) >= 40
            assert child.ask("stats") == {"accept_resource_failures": 0, "connections": child.cap}
            assert child.ask("probe") == 32
        finally:
            for client in idle:
                client.close()
        assert child.fresh_request_status() == 200
    assert "Traceback" not in (tmp_path / "child.log").read_text()


@pytest.mark.allow_commands(sys.executable)
def test_accept_out_of_descriptors_is_survived_and_logged_once_not_per_failure(tmp_path: Path) -> None:
    # A cap above the limit, as before the fix: accept() itself runs out of descriptors.
    for child in start_child(tmp_path, "100000"):
        idle = open_idle(child, CHILD_FD_LIMIT + 60)
        try:
            failures = 0
            for _ in range(50):
                stats = child.ask("stats")
                assert isinstance(stats, dict)
                failures = stats["accept_resource_failures"]
                if failures >= 2:
                    break
                # Each idle client that is still waiting keeps asyncio retrying accept().
                child.process.poll()
                is_closed_by_server(idle[-1])
            assert failures >= 2
        finally:
            for client in idle:
                client.close()
        # Once the guests have gone the server serves again, and so can the factory.
        status = 0
        for _ in range(50):
            try:
                status = child.fresh_request_status()
                break
            except (ConnectionResetError, socket.timeout, AssertionError):
                continue
        assert status == 200
        assert child.ask("probe") == 32
    log_text = (tmp_path / "child.log").read_text()
    assert len(re.findall("cannot accept, out of resources", log_text)) == 1, log_text[-2000:]
    assert "Traceback" not in log_text
