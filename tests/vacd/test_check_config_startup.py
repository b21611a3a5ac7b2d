"""`vacd --check-config` also checks what start-up needs (issue 12 item 2).

vacd.service runs it as ExecStartPre=, so each check here is a start that fails with the
file or port named instead of a daemon restarted every 10 seconds.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vacd.daemoncli import PidFile
from vacd.paths import Paths
from vacd.startupcheck import StartupFindings

REPOSITORY = Path(__file__).resolve().parents[2]

SETTINGS = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 4
libvirt_uri = test:///default
vacquery_bind_address = 127.0.0.1
"""


def check_config(prefix: Path, settings: str) -> subprocess.CompletedProcess[str]:
    config_file = Paths(prefix).config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(settings)
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--check-config"],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=60)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.allow_commands(sys.executable)
def test_check_config_passes_when_the_key_is_readable_and_the_ports_are_free(tmp_path: Path) -> None:
    key = tmp_path / "vacquery.key"
    key.write_text("k" * 44 + "\n")
    key.chmod(0o600)
    result = check_config(tmp_path, SETTINGS + f"vacquery_port = {free_port(socket.SOCK_DGRAM)}\n"
                          f"vacquery_key_file = {key}\nmetrics_address = 127.0.0.1:{free_port(socket.SOCK_STREAM)}\n")
    assert result.returncode == 0, result.stderr
    assert "[settings]" in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_check_config_fails_naming_a_vacquery_key_file_that_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "etc/vac-vacquery.key"
    result = check_config(tmp_path, SETTINGS + f"vacquery_port = {free_port(socket.SOCK_DGRAM)}\n"
                          f"vacquery_key_file = {missing}\n")
    assert result.returncode == 1
    assert f"vacquery_key_file: {missing}: cannot read VacQuery key" in result.stderr
    assert "vacd cannot start" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.allow_commands(sys.executable)
def test_check_config_fails_naming_a_vacquery_key_file_too_short_to_be_a_key(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    result = check_config(tmp_path, SETTINGS + f"vacquery_port = {free_port(socket.SOCK_DGRAM)}\n"
                          f"vacquery_key_file = {short}\n")
    assert result.returncode == 1
    assert f"vacquery_key_file: {short}: VacQuery key has 3 bytes" in result.stderr


@pytest.mark.allow_commands(sys.executable)
def test_check_config_fails_naming_the_vacquery_port_another_process_holds(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = check_config(tmp_path, SETTINGS + f"vacquery_port = {port}\n")
    assert result.returncode == 1
    # The holder is named: this test's own process holds the socket.
    assert f"cannot listen for VacQuery on 127.0.0.1 port {port} (UDP): in use by pid {os.getpid()}" in result.stderr
    assert "(vacquery_bind_address, vacquery_port in [settings])" in result.stderr


@pytest.mark.allow_commands(sys.executable)
def test_check_config_fails_naming_a_metrics_address_already_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = check_config(tmp_path, SETTINGS + f"vacquery_port = {free_port(socket.SOCK_DGRAM)}\n"
                              f"metrics_address = 127.0.0.1:{port}\n")
    assert result.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1 port {port} (TCP): in use by pid {os.getpid()}" in result.stderr
    assert "(metrics_address in [settings])" in result.stderr


@pytest.mark.allow_commands(sys.executable)
def test_check_config_leaves_the_ports_of_a_running_vacd_alone(tmp_path: Path) -> None:
    # Before a reload (Puppet) vacd is up and holds its port: that is no reason to fail.
    pid_file = PidFile(Paths(tmp_path).pid_file)
    pid_file.acquire()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
            holder.bind(("127.0.0.1", 0))
            result = check_config(tmp_path, SETTINGS + f"vacquery_port = {holder.getsockname()[1]}\n")
    finally:
        pid_file.release()
    assert result.returncode == 0, result.stderr
    assert f"warning: ports not probed: vacd (pid {os.getpid()}) is running and holds them" in result.stderr


def test_a_refusal_for_want_of_root_is_a_warning_for_another_user(monkeypatch: pytest.MonkeyPatch) -> None:
    findings = StartupFindings()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    findings.add("cannot listen for VacQuery on 0.0.0.0 port 995", PermissionError(errno.EACCES, "denied"))
    findings.add("cannot listen for VacQuery on 0.0.0.0 port 995", OSError(errno.EADDRINUSE, "in use"))
    assert findings.warnings == ["cannot listen for VacQuery on 0.0.0.0 port 995 (not checked as uid 1000: "
                                 "vacd runs as root)"]
    assert findings.errors == ["cannot listen for VacQuery on 0.0.0.0 port 995"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    findings.add("as root", PermissionError(errno.EACCES, "denied"))
    assert findings.errors[-1] == "as root"
