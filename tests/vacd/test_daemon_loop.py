"""A real vacd process whose pass raises keeps running, backs off, and recovers (issue 8 item 1).

The fault is a real one: the status file's path is taken by a directory, so publishing the
pass raises IsADirectoryError, outside any slot. Before the pass-wide boundary, vacd exited
on it and exited again on every restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        assert wait_until(lambda: stderr_path.read_text().count("pass failed") >= 2), stderr_path.read_text()[-3000:]
        assert process.poll() is None, stderr_path.read_text()[-3000:]
        assert "(2 in a row); next pass in 2s" in stderr_path.read_text()
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
