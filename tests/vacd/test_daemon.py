"""`vacd` as an admin runs it: --check-config, refusing bad configurations, one daemon per state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vacd.daemon import PidFile

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
