"""The Puppet module in puppet/vac: syntax, style, rspec-puppet tests, metadata and documentation.

`puppet parser validate`, puppet-lint, puppet-strings, metadata-json-lint and the module's
own rspec-puppet suite (puppet/vac/spec) run when their Debian packages are installed
(tools/install-deps installs them); without one, its test skips and says what to install.
Puppet's state directories point into tmp_path so nothing is written under /etc/puppet or
/var/cache/puppet, and nothing is written inside the source tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE = REPOSITORY / "puppet" / "vac"
CLASSES = {"vac": "init.pp", "vac::install": "install.pp", "vac::config": "config.pp", "vac::service": "service.pp"}
PUPPET_SOURCES = sorted(MODULE.glob("manifests/*.pp")) + sorted(MODULE.glob("functions/*.pp")) + sorted(
    MODULE.glob("types/*.pp"))
# `  Type $name,` or `  Type $name = default,` in a class's parameter list.
CLASS_PARAMETER = re.compile(r"^\s+(?:[A-Z][^$\n]*?\s+)?\$(\w+)\s*(?:=[^\n]*)?,$", re.MULTILINE)
MODULE_DATA_KEY = re.compile(r"^vac::(\w+): (.*)$", re.MULTILINE)
SENSITIVE_WITHOUT_MODULE_DATA = {"vacquery_key"}


def class_parameters(class_name: str = "vac") -> list[str]:
    text = (MODULE / "manifests" / CLASSES[class_name]).read_text()
    opening = f"class {class_name} ("
    if opening not in text:
        return []
    header = text[text.index(opening) + len(opening):text.index(") {")]
    return CLASS_PARAMETER.findall(header)


def module_data_defaults() -> dict[str, str]:
    return dict(MODULE_DATA_KEY.findall((MODULE / "data/common.yaml").read_text()))


def puppet_state_options(tmp_path: Path) -> list[str]:
    return [f"--{setting}={tmp_path / setting}" for setting in ("confdir", "vardir", "codedir", "logdir",
                                                                 "rundir", "publicdir")]


def module_path_with_vac(tmp_path: Path) -> Path:
    """A scratch module path whose `vac` is this module, as an environment would hold it."""
    module_path = tmp_path / "modules"
    module_path.mkdir()
    (module_path / "vac").symlink_to(MODULE)
    return module_path


def required_tool(name: str, package: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return tool


@pytest.mark.allow_commands("puppet")
def test_manifests_functions_types_and_templates_pass_puppet_validate(tmp_path: Path) -> None:
    puppet = required_tool("puppet", "puppet")
    completed = subprocess.run([puppet, "parser", "validate", *puppet_state_options(tmp_path),
                                *map(str, PUPPET_SOURCES)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Error" not in completed.stdout + completed.stderr
    templates = sorted(MODULE.glob("templates/*.epp"))
    completed = subprocess.run([puppet, "epp", "validate", *puppet_state_options(tmp_path), *map(str, templates)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.allow_commands("puppet-lint")
def test_module_is_puppet_lint_clean() -> None:
    puppet_lint = required_tool("puppet-lint", "puppet-lint")
    # From the module's parent, so the autoloader check sees the `vac/` module directory.
    completed = subprocess.run([puppet_lint, "--fail-on-warnings", "vac"], cwd=MODULE.parent,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.strip() == "", completed.stdout


@pytest.mark.slow
@pytest.mark.allow_commands("rspec", "ruby")
def test_rspec_puppet_suite_passes(tmp_path: Path) -> None:
    rspec = required_tool("rspec", "ruby-rspec-puppet")
    ruby = required_tool("ruby", "ruby-rspec-puppet")
    probe = subprocess.run([ruby, "-e", "require 'rspec-puppet'"], capture_output=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("rspec-puppet is not installed (apt-get install ruby-rspec-puppet)")
    completed = subprocess.run([rspec, "--no-color", "spec"], cwd=MODULE, capture_output=True, text=True,
                               timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                 "TMPDIR": str(tmp_path)})
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    summary = re.search(r"(\d+) examples?, 0 failures", output)
    assert summary is not None and int(summary.group(1)) >= 70, output[-2000:]
    # rspec-puppet must not have left fixtures in the source tree.
    assert not (MODULE / "spec/fixtures").exists()


@pytest.mark.slow
@pytest.mark.allow_commands("puppet", sys.executable)
def test_vac_conf_rendered_from_hiera_shapes_is_accepted_by_vacd_check_config(tmp_path: Path) -> None:
    """The template's output is what vacd reads: `vacd --check-config --config` takes it whole."""
    puppet = required_tool("puppet", "puppet")
    values = ("{ settings => { vac_space => 'vac01.example.org', factory_name => 'factory1.example.org', "
              "factories => ['factory1.example.org', 'factory2.example.org'], host_processors => 8, "
              "libvirt_uri => 'test:///default', vacquery_bind_address => '127.0.0.1', vacquery_port => 0 }, "
              "machinetypes => { lhcb => { target_share => 2.5, root_image => '/var/lib/vac/lhcb.iso' }, "
              "atlas => { target_share => 1, user_data_proxy => true } } }")
    rendered = subprocess.run([puppet, "epp", "render", *puppet_state_options(tmp_path),
                               f"--modulepath={module_path_with_vac(tmp_path)}", "--values", values,
                               str(MODULE / "templates/vac.conf.epp")],
                              capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0, rendered.stderr
    assert "factories = factory1.example.org factory2.example.org\n" in rendered.stdout
    candidate = tmp_path / "vac.conf.candidate"
    candidate.write_text(rendered.stdout)
    prefix = tmp_path / "root"
    checked = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--check-config",
                              "--stderr", "--config", str(candidate)],
                             capture_output=True, text=True, cwd=REPOSITORY, timeout=120)
    assert checked.returncode == 0, checked.stderr
    effective = checked.stdout
    assert "[machinetype atlas]" in effective and "[machinetype lhcb]" in effective
    assert re.search(r"^target_share = 2\.5$", effective, re.MULTILINE)
    assert re.search(r"^factories = factory1\.example\.org factory2\.example\.org$", effective, re.MULTILINE)


def test_metadata_is_what_the_forge_expects() -> None:
    metadata = json.loads((MODULE / "metadata.json").read_text())
    for field in ("name", "version", "author", "summary", "license", "source", "dependencies",
                  "operatingsystem_support", "requirements"):
        assert field in metadata, field
    owner, name = re.split(r"[-/]", metadata["name"], maxsplit=1)
    assert re.fullmatch(r"[A-Za-z0-9]+", owner) and name == "vac"
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?", metadata["version"])
    assert len(metadata["summary"]) <= 144
    # No Forge module is needed: firewalld is handled with files and firewall-cmd.
    assert metadata["dependencies"] == []
    assert any(system["operatingsystemrelease"] == ["9"] for system in metadata["operatingsystem_support"])
    assert [requirement["name"] for requirement in metadata["requirements"]] == ["puppet"]


@pytest.mark.allow_commands("metadata-json-lint")
def test_metadata_passes_metadata_json_lint() -> None:
    lint = required_tool("metadata-json-lint", "metadata-json-lint")
    completed = subprocess.run([lint, "--strict-license", "--strict-dependencies", "metadata.json"], cwd=MODULE,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_hiera_is_version_5_with_the_defaults_in_data_common_yaml() -> None:
    hiera = (MODULE / "hiera.yaml").read_text()
    assert re.search(r"^version: 5$", hiera, re.MULTILINE)
    assert re.search(r"^\s+datadir: 'data'$", hiera, re.MULTILINE)
    assert re.search(r"^\s+path: 'common.yaml'$", hiera, re.MULTILINE)
    defaults = module_data_defaults()
    parameters = class_parameters()
    assert set(parameters) - SENSITIVE_WITHOUT_MODULE_DATA == set(defaults), "every parameter has its default there"
    init = (MODULE / "manifests/init.pp").read_text()
    header = init[init.index("class vac ("):init.index(") {")]
    # Only the sensitive key has its default in the manifest (convert_to would wrap a null).
    assert re.findall(r"\$(\w+) =", header) == sorted(SENSITIVE_WITHOUT_MODULE_DATA)


def test_documented_defaults_match_the_module_data() -> None:
    init = (MODULE / "manifests/init.pp").read_text()
    for parameter, value in module_data_defaults().items():
        block = re.search(rf"^# @param {parameter}\n((?:#   .*\n)+)", init, re.MULTILINE)
        assert block is not None, parameter
        shown = "undef" if value == "~" else value.strip("'\"")
        assert f"#   Default: `{shown}`." in block.group(1), parameter


def test_class_vac_contains_install_config_and_service_in_order() -> None:
    init = (MODULE / "manifests/init.pp").read_text()
    assert re.search(r"^  contain vac::install\n  contain vac::config\n  contain vac::service\n", init, re.MULTILINE)
    assert "Class['vac::install'] -> Class['vac::config'] -> Class['vac::service']" in init
    for class_name, file_name in CLASSES.items():
        text = (MODULE / "manifests" / file_name).read_text()
        assert re.search(rf"^class {re.escape(class_name)}\b", text, re.MULTILINE), class_name


def test_class_keeps_vac_03_parameters() -> None:
    parameters = set(class_parameters())
    vac_03 = {"space", "subspace", "etc_path", "machinetypes_path", "nagios_nrpe", "apel_bdii_hostport",
              "apel_cert_path", "apel_key_path", "local_squid"} | {f"subspace{number}" for number in range(1, 10)}
    assert vac_03 <= parameters


def test_every_class_and_parameter_is_documented_in_the_manifest_readme_and_reference() -> None:
    manifest = (MODULE / "manifests/init.pp").read_text()
    readme = (MODULE / "README.md").read_text()
    reference = (MODULE / "REFERENCE.md").read_text()
    parameters = class_parameters()
    assert len(parameters) >= 29
    for parameter in parameters:
        assert f"# @param {parameter}\n" in manifest, parameter
        assert f'##### <a name="{parameter}"></a>`{parameter}`' in reference, parameter
        if not re.fullmatch(r"subspace[1-9]", parameter):
            assert f"`{parameter}`" in readme, parameter
    for class_name in CLASSES:
        assert f"`{class_name}`" in reference, class_name
    for source in PUPPET_SOURCES:
        declared = re.search(r"^(?:function|type) ([\w:]+)", source.read_text(), re.MULTILINE)
        if declared is not None:
            assert f"`{declared.group(1)}`" in reference, declared.group(1)


@pytest.mark.slow
@pytest.mark.allow_commands("puppet")
def test_reference_md_is_what_puppet_strings_generates(tmp_path: Path) -> None:
    puppet = required_tool("puppet", "puppet")
    probe = subprocess.run([puppet, "help", "strings", *puppet_state_options(tmp_path)], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("puppet-strings is not installed (apt-get install puppet-strings)")
    # A copy, since puppet strings keeps a .yardoc cache in its working directory.
    copy = tmp_path / "vac"
    shutil.copytree(MODULE, copy, ignore=shutil.ignore_patterns(".yardoc", "spec"))
    sources = [str(path.relative_to(MODULE)) for path in PUPPET_SOURCES]
    generated = subprocess.run([puppet, "strings", "generate", *puppet_state_options(tmp_path), "--format",
                                "markdown", "--out", str(tmp_path / "REFERENCE.md"), *sources],
                               cwd=copy, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "100.00% documented" in generated.stdout
    assert (tmp_path / "REFERENCE.md").read_text() == (MODULE / "REFERENCE.md").read_text(), \
        "REFERENCE.md is stale: regenerate it as puppet/vac/README.md says"


def test_templates_used_by_the_manifests_exist() -> None:
    used = [template for path in MODULE.glob("manifests/*.pp")
            for template in re.findall(r"epp\('vac/([^']+)'", path.read_text())]
    assert len(used) >= 6
    for template in used:
        assert (MODULE / "templates" / template).is_file(), template


# Issue 11 item 6: what the agent really writes. The catalogue of class vac with every part
# that writes files is applied under a scratch root (tests/packaging/puppet_apply_files.rb
# re-roots the File resources and leaves out the Exec, Service and Package ones), from a
# site module whose files have the modes a control repository gives them: keys 0600 or
# 0644, whatever git kept. The modes on disk are Puppet's, not the file server's.
SITE_FILES = {
    "vac.d/site/10-site.conf": ("[settings]\nuser_data_option_token = a site token\n", 0o644),
    "vac.d/factory1.example.org/20-factory.conf": ("[settings]\ntotal_processors = 8\n", 0o600),
    "machinetypes/site/lhcb/x509key.pem": ("-----BEGIN PRIVATE KEY-----\n", 0o644),
    "machinetypes/site/lhcb/x509cert.pem": ("-----BEGIN CERTIFICATE-----\n", 0o644),
    "machinetypes/site/lhcb/user_data": ("##user_data_option_token##\n", 0o644),
    "machinetypes/site/lhcb/files/root.img": ("an image\n", 0o644),
    "machinetypes/site/lhcb/files/hook.sh": ("#!/bin/sh\n", 0o755),
    "apel/hostcert.pem": ("-----BEGIN CERTIFICATE-----\n", 0o644),
    "apel/hostkey.pem": ("-----BEGIN PRIVATE KEY-----\n", 0o644),
}
APPLIED_MANIFEST = """
class { 'vac':
  etc_path          => 'modules/site_vac/vac.d',
  machinetypes_path => 'modules/site_vac/machinetypes',
  apel_cert_path    => 'puppet:///modules/site_vac/apel/hostcert.pem',
  apel_key_path     => 'puppet:///modules/site_vac/apel/hostkey.pem',
  nagios_nrpe       => true,
  settings          => { 'vac_space' => 'vac01.example.org', 'user_data_option_token' => 'a site token' },
  vacquery_key      => Sensitive('0123456789abcdef0123'),
}
"""
# Path under the root: (mode, kind). Secrets are root's alone; QEMU passes through the
# machinetypes directories to the images libvirt chowns to it; public files stay 0644.
MODES_ON_DISK = {
    "etc/vac.d": (0o750, "directory"),
    "etc/vac.d/10-site.conf": (0o640, "file"),
    "etc/vac.d/20-factory.conf": (0o640, "file"),
    "etc/vac.conf": (0o600, "file"),
    "etc/vac-vacquery.key": (0o600, "file"),
    "etc/grid-security/vac-apel-key.pem": (0o600, "file"),
    "etc/grid-security/vac-apel-cert.pem": (0o644, "file"),
    "var/lib/vac/machinetypes": (0o711, "directory"),
    "var/lib/vac/machinetypes/lhcb": (0o711, "directory"),
    "var/lib/vac/machinetypes/lhcb/x509key.pem": (0o600, "file"),
    "var/lib/vac/machinetypes/lhcb/x509cert.pem": (0o600, "file"),
    "var/lib/vac/machinetypes/lhcb/user_data": (0o600, "file"),
    "var/lib/vac/machinetypes/lhcb/files": (0o711, "directory"),
    "var/lib/vac/machinetypes/lhcb/files/root.img": (0o600, "file"),
    "var/lib/vac/machinetypes/lhcb/files/hook.sh": (0o600, "file"),
    "etc/sysctl.d/90-vac.conf": (0o644, "file"),
    "etc/ksmtuned.conf": (0o644, "file"),
    "etc/logrotate.d/ksmtuned": (0o644, "file"),
    "etc/nrpe.d/nagios-plugins-check-vacd.cfg": (0o644, "file"),
    "etc/firewalld/services/vac-vacquery.xml": (0o644, "file"),
    "etc/firewalld/services/vac-guest-api.xml": (0o644, "file"),
}
# The directories the packages (vac, apel-ssm, firewalld, nrpe, logrotate) would have made.
PACKAGE_DIRECTORIES = ("etc/grid-security", "etc/firewalld/services", "etc/sysctl.d", "etc/logrotate.d",
                       "etc/nrpe.d", "var/lib/vac")


def factory_root_and_site_module(tmp_path: Path) -> tuple[Path, Path]:
    """A scratch root with the packages' directories, and a module path with vac and site_vac."""
    required_tool("puppet", "puppet")
    if os.geteuid() != 0:
        pytest.skip("applying files owned by root needs root")
    root = tmp_path / "root"
    for directory in PACKAGE_DIRECTORIES:
        (root / directory).mkdir(parents=True)
    module_path = module_path_with_vac(tmp_path)
    for relative, (text, mode) in SITE_FILES.items():
        source = module_path / "site_vac" / "files" / relative
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(text)
        source.chmod(mode)
    return root, module_path


def apply_module_files(tmp_path: Path, module_path: Path, root: Path) -> subprocess.CompletedProcess[str]:
    ruby = required_tool("ruby", "puppet")
    manifest = tmp_path / "factory.pp"
    manifest.write_text(APPLIED_MANIFEST)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return subprocess.run([ruby, str(Path(__file__).with_name("puppet_apply_files.rb")), str(root), str(module_path),
                           str(state), str(manifest)], capture_output=True, text=True, timeout=300)


def modes_on_disk(root: Path) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for relative in MODES_ON_DISK:
        status = (root / relative).lstat()
        kind = "directory" if (root / relative).is_dir() else "file"
        assert (status.st_uid, status.st_gid) == (0, 0), relative
        found[relative] = (status.st_mode & 0o7777, kind)
    return found


@pytest.mark.slow
@pytest.mark.allow_commands("ruby")
def test_puppet_apply_writes_keys_and_configuration_trees_for_root_only(tmp_path: Path) -> None:
    root, module_path = factory_root_and_site_module(tmp_path)
    applied = apply_module_files(tmp_path, module_path, root)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert modes_on_disk(root) == MODES_ON_DISK
    # Every file the run wrote is one pinned above.
    written = {str(path.relative_to(root)) for path in root.rglob("*")} - set(PACKAGE_DIRECTORIES) - {
        "etc", "etc/firewalld", "var", "var/lib"}
    assert written == set(MODES_ON_DISK)
    assert "a site token" not in applied.stdout + applied.stderr
    assert "0123456789abcdef0123" not in applied.stdout + applied.stderr


@pytest.mark.slow
@pytest.mark.allow_commands("ruby")
def test_puppet_apply_takes_back_modes_an_admin_opened_up(tmp_path: Path) -> None:
    root, module_path = factory_root_and_site_module(tmp_path)
    assert apply_module_files(tmp_path, module_path, root).returncode == 0
    # The modes the module gave before issue 11 (/etc/vac.d 0644, keys readable by all), or an admin's chmod.
    for relative in ("etc/vac.d/10-site.conf", "var/lib/vac/machinetypes/lhcb/x509key.pem", "etc/vac-vacquery.key"):
        (root / relative).chmod(0o644)
    for relative in ("etc/vac.d", "var/lib/vac/machinetypes/lhcb"):
        (root / relative).chmod(0o755)
    again = apply_module_files(tmp_path, module_path, root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert modes_on_disk(root) == MODES_ON_DISK
