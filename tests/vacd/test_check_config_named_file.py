"""`vacd --check-config --config FILE` checks a new vac.conf before it replaces /etc/vac.conf.

Puppet's `validate_cmd` (puppet/vac, class vac::config) runs it on the rendered file at a
scratch path, so a vac.conf with an error is never put in place and vacd is not reloaded.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]

SPACE_FILE = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
libvirt_uri = test:///default
vacquery_bind_address = 127.0.0.1
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def factory_with_space_file(prefix: Path) -> None:
    """A factory whose /etc/vac.d holds the space's settings, as the Puppet trees leave it."""
    config_dir = Paths(prefix).config_dir
    config_dir.mkdir(parents=True)
    (config_dir / "10-space.conf").write_text(SPACE_FILE + f"vacquery_port = {free_udp_port()}\n")


def check_config(prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--check-config", *extra],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=60)


@pytest.mark.allow_commands(sys.executable)
def test_check_config_reads_the_named_file_in_place_of_etc_vac_conf(tmp_path: Path) -> None:
    factory_with_space_file(tmp_path)
    Paths(tmp_path).config_file.write_text("[settings]\nhost_processors = 2\n")
    candidate = tmp_path / "candidate.conf"
    candidate.write_text("[settings]\nhost_processors = 6\n")
    result = check_config(tmp_path, "--config", str(candidate))
    assert result.returncode == 0, result.stderr
    # The candidate's value, merged with /etc/vac.d; the installed vac.conf was not read.
    assert "host_processors = 6" in result.stdout
    assert "vac_space = vac01.example.com" in result.stdout


@pytest.mark.allow_commands(sys.executable)
def test_check_config_fails_on_an_error_in_the_named_file_and_names_it(tmp_path: Path) -> None:
    factory_with_space_file(tmp_path)
    Paths(tmp_path).config_file.write_text("[settings]\nhost_processors = 2\n")
    candidate = tmp_path / "candidate.conf"
    candidate.write_text("[settings]\nhost_processors = many\n")
    result = check_config(tmp_path, "--config", str(candidate))
    assert result.returncode == 1
    assert str(candidate) in result.stderr and "host_processors" in result.stderr
    assert "Traceback" not in result.stderr
    # Without --config the installed vac.conf is still the one checked, and it is valid.
    assert check_config(tmp_path).returncode == 0


@pytest.mark.allow_commands(sys.executable)
def test_config_option_without_check_config_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--config",
                             str(tmp_path / "vac.conf")], capture_output=True, text=True, cwd=REPOSITORY, timeout=60)
    assert result.returncode == 2
    assert "--config is only for --check-config" in result.stderr
