"""The EL9 versions vac is tested with, and the minimums setup.cfg and vac.spec state (issue 12
item 1): constraints/el9.txt pins EL9's (and EPEL 9's) version of every run-time dependency,
says where each comes from, and setup.cfg's install_requires and vac.spec's Requires ask for
at least exactly those versions, so an RPM or pip install on an older system is refused
instead of failing at run time.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPOSITORY / "constraints/el9.txt"
# setup.cfg's distribution name -> the EL9 package that provides it.
EL9_PACKAGES = {
    "libvirt-python": "python3-libvirt",
    "pyroute2": "python3-pyroute2",
    "dnspython": "python3-dns",
    "psutil": "python3-psutil",
    "cryptography": "python3-cryptography",
    "requests": "python3-requests",
    "prometheus-client": "python3-prometheus_client",
}
# Where a pinned version may come from: EL9's repositories, EPEL 9, or (test tools) PyPI.
SOURCES = ("EL9 BaseOS", "EL9 AppStream", "EPEL 9", "PyPI")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[0-9][^\s#]*)\s*(?:#\s*(?P<comment>.*))?$")
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)\s*>=\s*(?P<version>[0-9][^\s,;]*)$")


def constraint_pins() -> dict[str, tuple[str, str]]:
    """name -> (version, comment) of every pinned line of constraints/el9.txt."""
    pins: dict[str, tuple[str, str]] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match is not None, f"not a name==version pin: {line!r}"
        pins[match["name"].lower()] = (match["version"], match["comment"] or "")
    return pins


def install_requires() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPOSITORY / "setup.cfg", encoding="utf-8")
    minimums: dict[str, str] = {}
    for line in parser["options"]["install_requires"].strip().splitlines():
        match = REQUIREMENT.match(line.strip())
        assert match is not None, f"install_requires line without a >= minimum: {line!r}"
        minimums[match["name"].lower()] = match["version"]
    return minimums


def spec_requires() -> list[str]:
    lines = (REPOSITORY / "vac.spec").read_text(encoding="utf-8").splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires:")]


def test_every_run_time_dependency_is_pinned_to_its_el9_version() -> None:
    pins = constraint_pins()
    assert set(install_requires()) == set(EL9_PACKAGES)
    for name in EL9_PACKAGES:
        assert name in pins, f"{name} is not pinned in constraints/el9.txt"


def test_every_pin_says_where_its_version_comes_from() -> None:
    for name, (version, comment) in constraint_pins().items():
        assert any(source in comment for source in SOURCES), f"{name}=={version}: no source in {comment!r}"


def test_install_requires_minimums_are_the_tested_el9_versions() -> None:
    pins = constraint_pins()
    for name, minimum in install_requires().items():
        assert minimum == pins[name][0], f"setup.cfg asks {name}>={minimum}, constraints/el9.txt tests {pins[name][0]}"


def test_spec_requires_the_tested_el9_versions_of_the_python_modules() -> None:
    pins = constraint_pins()
    requires = spec_requires()
    for name, package in EL9_PACKAGES.items():
        assert f"{package} >= {pins[name][0]}" in requires, f"vac.spec lacks Requires: {package} >= {pins[name][0]}"
    # No unversioned duplicate that would let an older module satisfy the dependency.
    assert not set(EL9_PACKAGES.values()) & set(requires)


def test_the_command_package_requires_the_same_minimums_as_the_daemon() -> None:
    pins = constraint_pins()
    requires = spec_requires()
    for name in ("cryptography", "dnspython"):
        assert requires.count(f"{EL9_PACKAGES[name]} >= {pins[name][0]}") == 2, name


TEST_EL9 = REPOSITORY / "tools/test-el9"
# What tools/test-el9 runs before it has chosen a Python; nothing else is on the test's PATH,
# so no real python3.9 of the host can be found.
SCRIPT_COMMANDS = ("bash", "dirname", "find", "sort", "tail")


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter that answers the script's version probe with `version`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)
    return path


def run_which_python(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for command in SCRIPT_COMMANDS:
        found = shutil.which(command)
        assert found is not None, command
        (bin_dir / command).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path / "home"), **environment}
    return subprocess.run([str(bin_dir / "bash"), str(TEST_EL9), "--which-python"], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.allow_commands("bash")
def test_el9_check_fails_loudly_when_there_is_no_python_39(tmp_path: Path) -> None:
    not_39 = fake_python(tmp_path / "python3.11", "3.11")
    completed = run_which_python(tmp_path, VAC_EL9_PYTHON=str(not_39))
    assert completed.returncode == 1
    assert "no CPython 3.9 found" in completed.stderr


@pytest.mark.allow_commands("bash")
def test_el9_check_takes_the_newest_python_39_under_pyenv(tmp_path: Path) -> None:
    versions = tmp_path / "home/.pyenv/versions"
    fake_python(versions / "3.9.2/bin/python3.9", "3.9")
    newest = fake_python(versions / "3.9.18/bin/python3.9", "3.9")
    fake_python(versions / "3.11.7/bin/python3.11", "3.11")
    completed = run_which_python(tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == str(newest)


@pytest.mark.allow_commands("bash")
def test_el9_check_prefers_the_python_it_is_given(tmp_path: Path) -> None:
    fake_python(tmp_path / "home/.pyenv/versions/3.9.18/bin/python3.9", "3.9")
    given = fake_python(tmp_path / "site/python3.9", "3.9")
    completed = run_which_python(tmp_path, VAC_EL9_PYTHON=str(given))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == str(given)
