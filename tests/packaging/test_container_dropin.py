"""The vacd.service drop-in for container factories (etc/systemd/vacd-containers.conf)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.test_spec import unit_sections

REPOSITORY = Path(__file__).resolve().parents[2]
DROP_IN = REPOSITORY / "etc/systemd/vacd-containers.conf"


def unit_with_drop_in(tmp_path: Path) -> Path:
    stand_in = tmp_path / "vacd"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "vacd.service"
    unit.write_text((REPOSITORY / "etc/vacd.service").read_text().replace("/usr/sbin/vacd", str(stand_in)))
    (tmp_path / "vacd.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "vacd.service.d/containers.conf")
    return unit


@pytest.mark.allow_commands("systemd-analyze")
def test_the_unit_with_the_container_drop_in_verifies_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = unit_with_drop_in(tmp_path)
    environment = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:")
    completed = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                               timeout=120, env=environment)
    assert completed.returncode == 0 and completed.stdout + completed.stderr == "", completed.stderr


def test_the_drop_in_gives_podman_the_hosts_mounts_and_cgroups() -> None:
    # A private mount namespace would hide /run/netns and podman's mounts from a restarted vacd.
    service = unit_sections(DROP_IN.read_text())["Service"]
    assert service["PrivateMounts"] == "no" and service["ProtectSystem"] == "no"
    assert service["ProtectControlGroups"] == "no" and service["RestrictNamespaces"] == "no"
