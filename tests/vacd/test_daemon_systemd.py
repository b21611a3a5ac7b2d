"""vacd under systemd (issue 12 item 2): the notify protocol, the watchdog, and the unit.

The real-process test runs vacd on libvirt's test:///default driver with $NOTIFY_SOCKET
naming an abstract socket the test binds, as systemd would, and reads what vacd says. The
wedged-loop test drives `Daemon._loop` in this process with a backend whose listing blocks
until the test lets it go: while it blocks, no WATCHDOG=1 may arrive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from tests.fakes import FakeBackend
from vacd.backends.base import ObservedMachine
from vacd.config import load_config
from vacd.daemon import Daemon
from vacd.reloadingconfig import ReloadingConfig
from vacd.factory import Factory
from vacd.paths import Paths
from vacd.sdnotify import ServiceNotifier, one_line, socket_address, watchdog_seconds
from vacd.store import Store

REPOSITORY = Path(__file__).resolve().parents[2]
# A real process answers in well under a second; the limit only stops a hung test.
DEADLINE_SECONDS = 60.0


class NotifyListener:
    """The service manager's end: a bound Unix datagram socket that keeps every message."""

    def __init__(self, notify_socket: str) -> None:
        self.notify_socket = notify_socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(notify_socket))
        self.sock.settimeout(0.1)
        # (monotonic arrival time, {KEY: VALUE}) for every datagram.
        self.messages: list[tuple[float, dict[str, str]]] = []

    @classmethod
    def abstract(cls) -> "NotifyListener":
        return cls(f"@vac-test-notify-{uuid.uuid4().hex}")

    def receive_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, what: str, seconds: float = DEADLINE_SECONDS) -> dict[str, str]:
        """Receive until a message sets `key`; that message."""
        deadline = time.monotonic() + seconds
        seen = len(self.messages)
        while time.monotonic() < deadline:
            self.receive_for(0.1)
            for _, fields in self.messages[seen:]:
                if key in fields:
                    return fields
            seen = len(self.messages)
        raise AssertionError(f"no {key} ({what}) within {seconds:.0f}s; got {self.messages!r}")

    def watchdog_times(self, since: float = 0.0) -> list[float]:
        return [when for when, fields in self.messages if fields.get("WATCHDOG") == "1" and when >= since]

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- the protocol module

def test_an_abstract_socket_name_becomes_a_leading_nul_and_a_path_stays_a_path() -> None:
    assert socket_address("@vacd/notify") == "\0vacd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    with pytest.raises(ValueError, match="neither a path nor an abstract socket name"):
        socket_address("vsock:2:1234")


def test_watchdog_timeout_is_for_this_process_only_and_zero_means_none() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "180000000"}, 42) == 180.0
    assert watchdog_seconds({"WATCHDOG_USEC": "180000000", "WATCHDOG_PID": "42"}, 42) == 180.0
    assert watchdog_seconds({"WATCHDOG_USEC": "180000000", "WATCHDOG_PID": "43"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_seconds({}, 42) is None


def test_notifier_sends_key_value_lines_to_a_socket_path_and_keeps_status_on_one_line() -> None:
    directory = tempfile.mkdtemp(prefix="vac-notify-", dir="/tmp")  # a short path: sun_path has 108 bytes
    try:
        listener = NotifyListener(os.path.join(directory, "notify"))
        notifier = ServiceNotifier(listener.notify_socket, 2.0)
        try:
            assert notifier.watchdog_ping_seconds == 1.0
            assert notifier.notify(ready="1", status="first line\nsecond line")
            assert listener.sock.recv(4096) == b"READY=1\nSTATUS=first line; second line\n"
        finally:
            notifier.close()
            listener.close()
    finally:
        shutil.rmtree(directory)


def test_notifier_without_notify_socket_is_silent_and_a_vanished_manager_does_not_raise() -> None:
    silent = ServiceNotifier.from_environment({})
    assert not silent.is_active and silent.watchdog_ping_seconds is None
    assert silent.ready("ready") is False
    # The socket is gone (the manager restarted): the send fails, is logged, and returns.
    gone = ServiceNotifier(f"@vac-test-nobody-{uuid.uuid4().hex}", 10.0)
    assert gone.watchdog() is False
    gone.close()
    assert one_line("a\n\n b \n") == "a; b"


# ---------------------------------------------------------------- a real vacd

SETTINGS = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 2
libvirt_uri = test:///default
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
cycle_seconds = 30
"""


@pytest.mark.allow_commands(sys.executable)
def test_real_vacd_is_ready_after_its_first_pass_pings_the_watchdog_and_says_stopping_on_sigterm(
    tmp_path: Path,
) -> None:
    paths = Paths(tmp_path)
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(SETTINGS)
    listener = NotifyListener.abstract()
    # A 2 s watchdog: vacd must ping every second, also through its 30 s wait between passes.
    environment = {**os.environ, "NOTIFY_SOCKET": listener.notify_socket, "WATCHDOG_USEC": "2000000"}
    environment.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "vacd.log"
    try:
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr"],
                                       stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=REPOSITORY,
                                       env=environment)
        try:
            ready = listener.wait_for("READY", "readiness")
            # The first pass completed before READY=1: its factory heartbeat is already written.
            assert paths.heartbeat_file("factory").exists(), log_path.read_text()
            assert "machines in 2 slots" in ready["STATUS"]
            before_ready = [fields for _, fields in listener.messages[:-1]]
            assert all("READY" not in fields for fields in before_ready)
            assert any(fields.get("STATUS", "").startswith("starting:") for fields in before_ready)
            ready_at = time.monotonic()
            listener.receive_for(5.0)
            pings = listener.watchdog_times(since=ready_at)
            assert len(pings) >= 3, listener.messages
            # Never a gap as long as the timeout: systemd would have restarted vacd.
            assert max(later - earlier for earlier, later in zip([ready_at, *pings], pings)) < 2.0
            process.send_signal(signal.SIGTERM)
            stopping = listener.wait_for("STOPPING", "stopping")
            assert stopping["STOPPING"] == "1" and "machines keep running" in stopping["STATUS"]
            assert process.wait(timeout=DEADLINE_SECONDS) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=DEADLINE_SECONDS)
    finally:
        listener.close()


# ---------------------------------------------------------------- the loop in this process

class HoldingBackend(FakeBackend):
    """Its listing fails while `failing`, and blocks while `hold` is set (a wedged libvirt call)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.hold = threading.Event()
        self.released = threading.Event()
        self.is_held = threading.Event()

    def list_machines(self) -> Sequence[ObservedMachine]:
        if self.hold.is_set():
            self.is_held.set()
            self.released.wait(DEADLINE_SECONDS)
            self.is_held.clear()
        self.fail_listing = self.failing
        return super().list_machines()


@pytest.fixture
def looping_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, HoldingBackend, NotifyListener, Callable[[], None]]]:
    """A Daemon whose loop runs on a thread, telling an abstract socket; `start()` starts it."""
    paths = Paths(tmp_path / "prefix")
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(SETTINGS.replace("cycle_seconds = 30", "cycle_seconds = 0.2"))
    paths.ensure_state_dirs()
    config = load_config(paths, host_fqdn="f1.example.com", host_cpu_count=2)
    listener = NotifyListener.abstract()
    # A 0.4 s watchdog: pings every 0.2 s.
    daemon = Daemon(paths, config, "f1.example.com", 2, notifier=ServiceNotifier(listener.notify_socket, 0.4))
    backend = HoldingBackend()
    config_source = ReloadingConfig(paths, config, "f1.example.com", 2)
    factory = Factory(Store(paths), backend, config_source, ThreadPoolExecutor(max_workers=1), clock=daemon.clock,
                      load_average=lambda: 0.0, host_cpu_count=2, vacd_start_time=daemon.start_time,
                      initial_config=config)
    daemon.factory = factory
    loop = threading.Thread(target=daemon._loop, args=(factory, config_source), name="test-vacd-loop")
    try:
        yield daemon, backend, listener, loop.start
    finally:
        backend.released.set()
        daemon.request_stop()
        if loop.is_alive():
            loop.join(timeout=DEADLINE_SECONDS)
        config_source.close()
        listener.close()


def test_a_wedged_pass_stops_the_watchdog_pings_until_it_returns(
    looping_daemon: tuple[Daemon, HoldingBackend, NotifyListener, Callable[[], None]],
) -> None:
    daemon, backend, listener, start = looping_daemon
    start()
    listener.wait_for("READY", "readiness")
    listener.receive_for(1.0)
    assert len(listener.watchdog_times()) >= 3
    backend.hold.set()
    assert backend.is_held.wait(DEADLINE_SECONDS)
    listener.receive_for(0.3)  # a ping already on its way when the pass wedged
    wedged_since = time.monotonic()
    listener.receive_for(2.0)  # five watchdog timeouts
    assert listener.watchdog_times(since=wedged_since) == []
    assert backend.is_held.is_set()
    backend.hold.clear()
    backend.released.set()
    released_at = time.monotonic()
    listener.receive_for(1.0)
    assert listener.watchdog_times(since=released_at), "pings did not resume after the pass returned"
    daemon.request_stop()
    assert listener.wait_for("STOPPING", "stopping")["STOPPING"] == "1"


def test_vacd_that_cannot_list_the_machines_is_ready_and_its_status_line_says_why(
    looping_daemon: tuple[Daemon, HoldingBackend, NotifyListener, Callable[[], None]],
) -> None:
    """libvirt down at boot is a fault to show, not a start to time out and restart."""
    _, backend, listener, start = looping_daemon
    backend.failing = True
    start()
    ready = listener.wait_for("READY", "readiness after a pass that could not list the machines")
    assert ready["STATUS"].startswith("pass incomplete: cannot list the machines"), ready
    listener.receive_for(1.5)
    assert len(listener.watchdog_times()) >= 3  # the loop is sound; only its passes are incomplete
    backend.failing = False
    listener.receive_for(1.5)
    statuses = [fields["STATUS"] for _, fields in listener.messages if "STATUS" in fields]
    assert "machines in 2 slots" in statuses[-1] and not statuses[-1].startswith("pass incomplete"), statuses[-1]
    assert sum("READY" in fields for _, fields in listener.messages) == 1  # once, whatever follows


# ---------------------------------------------------------------- the unit
# (systemd-analyze verify on it: tests/packaging/test_spec.py::test_systemd_unit_verifies)

def test_unit_is_type_notify_with_a_watchdog_and_orders_after_the_modular_libvirt_daemons() -> None:
    from tests.packaging.test_spec import unit_sections

    unit = unit_sections((REPOSITORY / "etc/vacd.service").read_text())
    service, ordering = unit["Service"], unit["Unit"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 60
    assert service["ExecStartPre"].split()[:2] == ["/usr/sbin/vacd", "--check-config"]
    wanted, after = ordering["Wants"].split(), ordering["After"].split()
    assert {"virtqemud.socket", "virtnetworkd.socket"} <= set(wanted) & set(after)
    # Ordered after the monolithic daemon where a host runs it, never pulling it in.
    assert "libvirtd.service" in after
    assert not any(name.startswith("libvirtd") for name in wanted + ordering.get("Requires", "").split())
