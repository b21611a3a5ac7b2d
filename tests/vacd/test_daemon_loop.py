"""vacd's loop never dies from an exception, and recovers when the fault clears (issue 8 item 1).

The real-process fault is a real one: the status file's path is taken by a directory, so
publishing the pass raises IsADirectoryError, outside any slot. Before the boundaries, vacd
exited on it and exited again on every restart. The in-process test drives `Daemon._loop`
with a backend that raises what no one expected (a bug, not a BackendError).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import pytest

from tests.fakes import FakeBackend
from vacd import daemon as daemon_module
from vacd.backends.base import ObservedMachine
from vacd.config import load_config
from vacd.daemon import Daemon
from vacd.reloadingconfig import ReloadingConfig
from vacd.factory import Factory
from vacd.paths import Paths
from vacd.store import Store

pytestmark = pytest.mark.allow_commands(sys.executable)

REPOSITORY = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate, seconds: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_vacd_survives_passes_that_raise_and_recovers_when_the_fault_clears(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "etc").mkdir(parents=True)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"the test driver never boots this")
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 2
libvirt_uri = test:///default
vacquery_port = {free_udp_port()}
vacquery_bind_address = 127.0.0.1
cycle_seconds = 1

[machinetype atlas]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
""")
    status_file = prefix / "var/lib/vac/status.json"
    status_file.mkdir(parents=True)  # publishing will raise IsADirectoryError
    stderr_path = tmp_path / "vacd.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, cwd=REPOSITORY,
            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        )
    try:
        assert wait_until(lambda: "cannot publish the pass, again" in stderr_path.read_text()), \
            stderr_path.read_text()[-3000:]
        assert process.poll() is None, stderr_path.read_text()[-3000:]
        status_file.rmdir()
        assert wait_until(status_file.is_file), stderr_path.read_text()[-3000:]
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BuggyBackend(FakeBackend):
    """Raises a plain RuntimeError from listing (a bug), then asks the daemon to stop."""

    def __init__(self, daemon: Daemon, failures: int) -> None:
        super().__init__()
        self.daemon = daemon
        self.failures = failures
        self.listings = 0

    def list_machines(self) -> Sequence[ObservedMachine]:
        self.listings += 1
        if self.listings > self.failures:
            self.daemon.request_stop()
            return super().list_machines()
        raise RuntimeError("a bug in a backend")


def test_loop_logs_a_pass_that_raises_backs_off_and_runs_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Shortened so the test takes milliseconds; the doubling is what is checked.
    monkeypatch.setattr(daemon_module, "PASS_ERROR_FIRST_BACKOFF_SECONDS", 0.01)
    paths = Paths(tmp_path / "prefix")
    (paths.config_file).parent.mkdir(parents=True)
    paths.config_file.write_text(
        "[settings]\nvac_space = vac01.example.com\nfactory_name = f1.example.com\nhost_processors = 1\n"
        "libvirt_uri = test:///default\n"
    )
    paths.ensure_state_dirs()
    config = load_config(paths, host_fqdn="f1.example.com", host_cpu_count=1)
    daemon = Daemon(paths, config, "f1.example.com", 1)
    backend = BuggyBackend(daemon, failures=3)
    config_source = ReloadingConfig(paths, config, "f1.example.com", 1)
    factory = Factory(Store(paths), backend, config_source, ThreadPoolExecutor(max_workers=1), clock=daemon.clock,
                      load_average=lambda: 0.0, host_cpu_count=1, vacd_start_time=daemon.start_time,
                      initial_config=config)
    daemon.factory = factory
    try:
        with caplog.at_level(logging.ERROR, logger="vacd.daemon"):
            daemon._loop(factory, config_source)
    finally:
        config_source.close()
    assert backend.listings == 4  # three passes raised, the loop ran a fourth
    failures = [record.getMessage() for record in caplog.records if "pass failed" in record.getMessage()]
    assert failures == ["pass failed (1 in a row); next pass in 0s", "pass failed (2 in a row); next pass in 0s",
                        "pass failed (3 in a row); next pass in 0s"]
    assert daemon.pass_errors_in_a_row == 0
