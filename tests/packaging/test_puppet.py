"""The Puppet module in puppet/: syntax, rspec-puppet tests, metadata and documentation.

`puppet parser validate` and the module's own rspec-puppet suite (puppet/spec) run when
Debian's `puppet` and `ruby-rspec-puppet` packages are installed; without them those two
tests skip and say what to install. Puppet's state directories point into tmp_path so
nothing is written under /etc/puppet or /var/cache/puppet.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "puppet"
MANIFESTS = sorted(MODULE.glob("manifests/*.pp")) + sorted(MODULE.glob("functions/*.pp"))
CLASS_PARAMETER = re.compile(r"^\s+(?:[A-Z][\w\[\], ]*\s+)?\$(\w+)\s*=", re.MULTILINE)


def class_parameters() -> list[str]:
    text = (MODULE / "manifests/init.pp").read_text()
    header = text[text.index("class vac ("):text.index(") {")]
    return CLASS_PARAMETER.findall(header)


@pytest.mark.allow_commands("puppet")
def test_manifests_pass_puppet_parser_validate(tmp_path: Path) -> None:
    puppet = shutil.which("puppet")
    if puppet is None:
        pytest.skip("puppet is not installed (apt-get install puppet)")
    state = [f"--{setting}={tmp_path / setting}" for setting in ("confdir", "vardir", "codedir", "logdir",
                                                                 "rundir", "publicdir")]
    completed = subprocess.run([puppet, "parser", "validate", *state, *map(str, MANIFESTS)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Error" not in completed.stdout + completed.stderr


@pytest.mark.slow
@pytest.mark.allow_commands("rspec", "ruby")
def test_rspec_puppet_suite_passes(tmp_path: Path) -> None:
    rspec = shutil.which("rspec")
    ruby = shutil.which("ruby")
    if rspec is None or ruby is None:
        pytest.skip("rspec is not installed (apt-get install ruby-rspec-puppet)")
    probe = subprocess.run([ruby, "-e", "require 'rspec-puppet'"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("rspec-puppet is not installed (apt-get install ruby-rspec-puppet)")
    completed = subprocess.run([rspec, "--no-color", "spec"], cwd=MODULE, capture_output=True, text=True,
                               timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                 "TMPDIR": str(tmp_path)})
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    summary = re.search(r"(\d+) examples?, 0 failures", output)
    assert summary is not None and int(summary.group(1)) >= 20, output[-2000:]
    # rspec-puppet must not have left fixtures in the source tree.
    assert not (MODULE / "spec/fixtures").exists()


def test_metadata_names_the_vac_module_without_dependencies() -> None:
    metadata = json.loads((MODULE / "metadata.json").read_text())
    assert metadata["name"].split("-", 1)[1] == "vac"
    assert metadata["dependencies"] == []
    assert any(system["operatingsystemrelease"] == ["9"] for system in metadata["operatingsystem_support"])


def test_class_keeps_vac_03_parameters() -> None:
    parameters = set(class_parameters())
    vac_03 = {"space", "subspace", "etc_path", "machinetypes_path", "nagios_nrpe", "apel_bdii_hostport",
              "apel_cert_path", "apel_key_path", "local_squid"} | {f"subspace{number}" for number in range(1, 10)}
    assert vac_03 <= parameters


def test_every_class_parameter_is_documented() -> None:
    manifest = (MODULE / "manifests/init.pp").read_text()
    readme = (MODULE / "README.md").read_text()
    for parameter in class_parameters():
        assert f"# @param {parameter}\n" in manifest, parameter
        if not re.fullmatch(r"subspace[1-9]", parameter):
            assert f"`{parameter}`" in readme, parameter


def test_templates_used_by_the_manifest_exist() -> None:
    manifest = (MODULE / "manifests/init.pp").read_text()
    used = re.findall(r"epp\('vac/([^']+)'", manifest)
    assert used
    for template in used:
        assert (MODULE / "templates" / template).is_file(), template
