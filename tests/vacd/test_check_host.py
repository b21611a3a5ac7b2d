"""`vacd --check-host` says what starting vacd here would do, and changes nothing (issue 10 item 1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid as uuid_module
from pathlib import Path

import pytest

from tests.vac03tree import write_vac03_daemon_files, write_vac03_machine
from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_text() -> str:
    return f"""[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 4
libvirt_uri = test:///default
vacquery_bind_address = 127.0.0.1
vacquery_port = {free_port(socket.SOCK_DGRAM)}
metrics_address = 127.0.0.1:{free_port(socket.SOCK_STREAM)}

[machinetype atlas]
target_share = 1
machine_model = vm-raw
root_image = /dev/null
"""


def check_host(prefix: Path) -> subprocess.CompletedProcess[str]:
    config_file = Paths(prefix).config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    if not config_file.exists():
        config_file.write_text(settings_text())
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--check-host"],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=60)


def state_snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.allow_commands(sys.executable)
def test_check_host_lists_what_it_would_do_with_each_vac03_machine_and_changes_nothing(tmp_path: Path) -> None:
    state_dir = Paths(tmp_path).state_dir
    ended = write_vac03_machine(state_dir, factory_name="f1.example.com", ordinal=0, uuid=str(uuid_module.uuid4()),
                                machinetype="atlas", created_time=1_700_000_000, shutdown_time=1_700_086_400,
                                shutdown_message="200 Success")
    docker = write_vac03_machine(state_dir, factory_name="f1.example.com", ordinal=1, uuid=str(uuid_module.uuid4()),
                                 machinetype="atlas", created_time=1_700_000_000, shutdown_time=1_700_086_400,
                                 machine_model="docker")
    before = state_snapshot(state_dir)
    result = check_host(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vac 03 machines: 2 (1 to take over, 1 to leave running)" in result.stdout
    assert f"{ended.name}: finalise and account the Vac 03 machine that ended" in result.stdout
    assert f"{docker.name}: leave running, not adopted: machine_model docker" in result.stdout
    assert result.stdout.rstrip().endswith("vacd can start")
    assert state_snapshot(state_dir) == before


@pytest.mark.allow_commands(sys.executable)
def test_check_host_refuses_while_vac03_daemons_run(tmp_path: Path) -> None:
    vac03_factory = subprocess.Popen(["sleep", "60"])
    try:
        write_vac03_daemon_files(Paths(tmp_path).state_dir, pid=vac03_factory.pid)
        result = check_host(tmp_path)
    finally:
        vac03_factory.kill()
        vac03_factory.wait()
    assert result.returncode == 1
    assert f"Vac 03's vacd-factory runs as pid {vac03_factory.pid}" in result.stdout
    assert "vacd must not start yet" in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_check_host_ignores_the_stale_pid_files_of_a_stopped_vac03(tmp_path: Path) -> None:
    stopped = subprocess.Popen(["true"])
    stopped.wait()
    write_vac03_daemon_files(Paths(tmp_path).state_dir, pid=stopped.pid)
    result = check_host(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vac 03's" not in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_check_host_names_a_vacquery_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config_file = Paths(tmp_path).config_file
        config_file.parent.mkdir(parents=True)
        config_file.write_text(settings_text().replace("vacquery_port = ", f"vacquery_port = {port}\n#"))
        result = check_host(tmp_path)
    assert result.returncode == 1
    assert str(port) in result.stdout and "problem:" in result.stdout
