"""`vacd` as an admin runs it: --check-config, refusing bad configurations, one daemon per state."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from vacd import nagios
from vacd.daemoncli import PidFile
from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]

GOOD_SETTINGS = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 4
user_data_option_token = s3cret-token
"""


def vacd(prefix: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), *arguments],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=60)


def write(prefix: Path, relative: str, text: str) -> None:
    path = prefix / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.allow_commands(sys.executable)
def test_check_config_names_the_file_section_and_option_of_max_processors_0(tmp_path: Path) -> None:
    write(tmp_path, "etc/vac.conf", GOOD_SETTINGS)
    write(tmp_path, "etc/vac.d/atlas.conf", "[machinetype atlas]\ntarget_share = 1\nmax_processors = 0\n")
    result = vacd(tmp_path, "--check-config")
    assert result.returncode == 1
    assert f"{tmp_path}/etc/vac.d/atlas.conf:3: [machinetype atlas] max_processors:" in result.stderr


@pytest.mark.allow_commands(sys.executable)
def test_check_config_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path) -> None:
    write(tmp_path, "etc/vac.conf", GOOD_SETTINGS + "\n[machinetype lhcb]\ntarget_share = 1\nroot_image = x.img\n")
    result = vacd(tmp_path, "--check-config")
    assert result.returncode == 0, result.stderr
    assert "[machinetype lhcb]" in result.stdout
    assert "s3cret-token" not in result.stdout and "********" in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_vacd_does_not_start_on_a_bad_configuration(tmp_path: Path) -> None:
    write(tmp_path, "etc/vac.conf", "[settings]\nfactory_name = f1.example.com\n")
    result = vacd(tmp_path)
    assert result.returncode == 1
    assert "vac_space" in result.stderr and "not started" in result.stderr
    assert not (tmp_path / "var/lib/vac/vacd.pid").exists()


def test_a_second_vacd_on_the_same_state_directory_refuses_to_start(tmp_path: Path) -> None:
    first = PidFile(tmp_path / "vacd.pid")
    first.acquire()
    try:
        with pytest.raises(SystemExit, match="another vacd"):
            PidFile(tmp_path / "vacd.pid").acquire()
    finally:
        first.release()
    second = PidFile(tmp_path / "vacd.pid")
    second.acquire()
    second.release()


@pytest.mark.allow_commands(sys.executable)
def test_vacd_says_which_setting_to_fix_when_its_vacquery_port_is_taken(tmp_path: Path) -> None:
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        write(tmp_path, "etc/vac.conf", GOOD_SETTINGS + f"libvirt_uri = test:///default\nvacquery_port = {port}\n"
                                                        "vacquery_bind_address = 127.0.0.1\n")
        result = vacd(tmp_path, "--stderr")
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"cannot listen for VacQuery on 127.0.0.1 port {port}" in result.stderr
    assert "vacquery_port" in result.stderr


# ---------------------------------------------------------------- a bad reload is visible (issue 8 item 8)

RUNNING_SETTINGS = GOOD_SETTINGS + """libvirt_uri = test:///default
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
metrics_address = 127.0.0.1:0
cycle_seconds = 1
"""
# A real process answers in well under a second; the limit only stops a hung test.
PROCESS_DEADLINE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class AfterBrokenReload:
    check_vacd_status: int
    check_vacd_text: str
    status: dict[str, Any]
    healthz: tuple[int, str]
    factory_heartbeat: int
    loop_heartbeat: int


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    """Poll a real process's files until `condition()` is truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + PROCESS_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"vacd did not {what} within {PROCESS_DEADLINE_SECONDS:.0f}s")


def read_status(paths: Paths) -> Optional[dict[str, Any]]:
    try:
        return dict(json.loads(paths.status_file.read_text()))
    except (FileNotFoundError, ValueError):
        return None


def heartbeat(paths: Paths, part: str) -> Optional[int]:
    try:
        return int(paths.heartbeat_file(part).read_text())
    except (FileNotFoundError, ValueError):
        return None


def get_healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def break_the_configuration_of_a_running_vacd(prefix: Path, capsys: pytest.CaptureFixture[str]) -> AfterBrokenReload:
    """Start vacd on the libvirt test driver, let it pass, break vac.conf, SIGHUP, and look."""
    write(prefix, "etc/vac.conf", RUNNING_SETTINGS)
    paths = Paths.from_prefix(str(prefix))
    log_path = prefix / "vacd.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
                                   stdout=log_file, stderr=subprocess.STDOUT, cwd=REPOSITORY)
    try:
        port = int(wait_until(lambda: re.search(r"metrics served address=127\.0\.0\.1:(\d+)", log_path.read_text()),
                              "serve metrics").group(1))
        first = wait_until(lambda: read_status(paths), "publish a first status.json")
        assert first["config_error"] is None and first["factory"] == "f1.example.com"
        assert get_healthz(port) == (200, "ok\n")
        assert nagios.main(["--prefix", str(prefix)]) != nagios.CRITICAL
        capsys.readouterr()

        write(prefix, "etc/vac.conf", RUNNING_SETTINGS.replace("host_processors = 4", "host_processors = many"))
        os.kill(process.pid, signal.SIGHUP)

        def status_with_config_error() -> Optional[dict[str, Any]]:
            status = read_status(paths)
            return status if status is not None and status["config_error"] else None

        def loop_beat_past_factory_beat() -> Optional[tuple[int, int]]:
            factory, loop = heartbeat(paths, "factory"), heartbeat(paths, "loop")
            return (factory, loop) if factory is not None and loop is not None and loop > factory else None

        status = wait_until(status_with_config_error, "publish the configuration error")
        # Passes go on every second (cycle_seconds = 1): the loop beats, the factory does not.
        factory_beat, loop_beat = wait_until(loop_beat_past_factory_beat, "beat its loop past its factory heartbeat")
        check_status = nagios.main(["--prefix", str(prefix)])
        return AfterBrokenReload(check_status, capsys.readouterr().out, read_status(paths) or status,
                                 get_healthz(port), factory_beat, loop_beat)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.allow_commands(sys.executable)
def test_a_broken_reload_makes_check_vacd_critical_and_healthz_503_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = break_the_configuration_of_a_running_vacd(tmp_path, capsys)

    assert seen.check_vacd_status == nagios.CRITICAL, seen.check_vacd_text
    assert seen.check_vacd_text.startswith("configuration error")
    assert f"{tmp_path}/etc/vac.conf:4: [settings] host_processors:" in seen.check_vacd_text
    assert seen.healthz[0] == 503
    assert "configuration error" in seen.healthz[1] and "host_processors" in seen.healthz[1]
    # The factory heartbeat is the last completed pass; the passes since the break did not complete.
    assert seen.status["config_error"] and "host_processors" in seen.status["config_error"]
    assert seen.status["last_pass_completed"] == seen.factory_heartbeat < seen.loop_heartbeat
    assert seen.status["heartbeats"]["factory"] == seen.factory_heartbeat


@pytest.mark.allow_commands(sys.executable)
def test_a_broken_reload_shows_the_config_fault_with_its_since_time_in_status_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = int(time.time())
    seen = break_the_configuration_of_a_running_vacd(tmp_path, capsys)

    config_faults = [fault for fault in seen.status["faults"] if fault["kind"] == "config"]
    assert len(config_faults) == 1
    assert "host_processors" in config_faults[0]["message"]
    assert before <= config_faults[0]["since"] <= seen.status["time"]
    assert f"configuration error since {nagios.utc_time(config_faults[0]['since'])}" in seen.check_vacd_text


@pytest.mark.allow_commands(sys.executable)
def test_vacd_removes_what_a_kill_9_left_before_its_first_pass(tmp_path: Path) -> None:
    temp_file = tmp_path / "var/lib/vac/slots/.f1-00.example.com.k3j9x_2a.tmp"
    partial_image = tmp_path / "var/lib/vac/imagecache/.https%3A%2F%2Fimages.example.org%2Fa.img.abcdefgh.tmp"
    orphan_disk = tmp_path / "var/lib/vac/tmp/0b8a9d3e-7a41-4b61-a0f6-2c9d5e4f3b21.vda.qcow2"
    for path in (temp_file, partial_image, orphan_disk):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a kill -9")
    import socket

    # The taken VacQuery port stops vacd right after start-up, with no loop run.
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        write(tmp_path, "etc/vac.conf", GOOD_SETTINGS + f"libvirt_uri = test:///default\nvacquery_port = {port}\n"
                                                        "vacquery_bind_address = 127.0.0.1\n")
        result = vacd(tmp_path, "--stderr")
    finally:
        holder.close()
    assert not temp_file.exists() and not partial_image.exists() and not orphan_disk.exists()
    assert f"removed temp file left by a stopped vacd path={temp_file}" in result.stderr
    assert f"removed orphan disk file path={orphan_disk}" in result.stderr
