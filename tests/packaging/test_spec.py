"""vac.spec, the Makefile and the files they install: versions, file lists, scriptlets,
man pages, the systemd unit, logrotate, ssmsend and Squid templates, and a real rpmbuild.

The spec's %files are checked against what `make install-data` really installs (what
rpmbuild's check for unpackaged and missing files would say), and its scriptlets are run
with sh against a scratch directory. Tools that are not installed (groff, make,
systemd-analyze, logrotate, rpmbuild) skip their tests with the package to install.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from vacd.paths import Paths

REPOSITORY = Path(__file__).resolve().parents[2]
SPEC = REPOSITORY / "vac.spec"
SETUP_CFG = REPOSITORY / "setup.cfg"
MAN_DIR = REPOSITORY / "man"
EXPECTED_MAN_PAGES = ("vac.1", "vac.conf.5", "vacd.8", "check-vacd.8", "viab-generate.8")
SITELIB = "/usr/lib/python3.9/site-packages"
# The rpm macros the spec uses in %files and scriptlets, with their EL9 values.
EL9_MACROS = {
    "_prefix": "/usr",
    "_sbindir": "/usr/sbin",
    "_bindir": "/usr/bin",
    "_datadir": "/usr/share",
    "_mandir": "/usr/share/man",
    "_sysconfdir": "/etc",
    "_localstatedir": "/var",
    "_unitdir": "/usr/lib/systemd/system",
    "_initddir": "/etc/rc.d/init.d",
    "_sysctldir": "/usr/lib/sysctl.d",
    "python3_sitelib": SITELIB,
}
# Parametric macros the scriptlets use, with EL9's definitions (systemd-rpm-macros).
SYSTEMD_SYSCTL = "/usr/lib/systemd/systemd-sysctl"
EL9_SCRIPTLET_MACROS = {
    "sysctl_apply": f"[ -x {SYSTEMD_SYSCTL} ] && {SYSTEMD_SYSCTL} {{arguments}} || :",
}
SYSCTL_DROP_IN = REPOSITORY / "etc/sysctl.d/90-vac-vacquery.conf"
SECTION = re.compile(r"%(package|description|prep|build|install|check|post|preun|postun|files|changelog)\b")


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SETUP_CFG, encoding="utf-8")
    return parser


def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def expand(text: str, macros: dict[str, str]) -> str:
    """rpm's expansion of %{name} and %% for the macros this spec uses in these parts."""
    text = text.replace("%%", "\0")

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in macros:
            raise AssertionError(f"vac.spec uses %{{{name}}}, which this test does not know")
        return macros[name]

    return re.sub(r"%\{(\w+)\}", replace, text).replace("\0", "%")


def spec_sections(with_systemd: bool = True) -> dict[str, list[str]]:
    """The spec's section bodies by header line, after %if/%else/%endif (no tests)."""
    conditions = {"%{with systemd}": with_systemd, "%{with tests}": False}
    sections: dict[str, list[str]] = {}
    current: Optional[str] = None
    taken: list[bool] = []
    for line in spec_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("%if "):
            condition = stripped[len("%if "):].strip()
            assert condition in conditions, f"unknown condition in vac.spec: {stripped}"
            taken.append(conditions[condition])
            continue
        if stripped == "%else":
            taken[-1] = not taken[-1]
            continue
        if stripped == "%endif":
            taken.pop()
            continue
        if not all(taken):
            continue
        if SECTION.match(stripped):
            current = stripped
            sections[current] = []
            continue
        if current is not None:
            sections[current].append(line)
    return sections


@dataclass(frozen=True)
class FileEntry:
    path: str
    is_dir_only: bool
    is_ghost: bool
    is_doc: bool


def files_entries(with_systemd: bool = True) -> dict[str, list[FileEntry]]:
    """The %files sections' entries, macros expanded, directives parsed."""
    result: dict[str, list[FileEntry]] = {}
    for header, body in spec_sections(with_systemd).items():
        if not header.startswith("%files"):
            continue
        entries = []
        for line in body:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            line = expand(line, EL9_MACROS)
            flags = set(re.findall(r"%(dir|ghost|doc|license)\b", line))
            path = re.sub(r"%(?:dir|ghost|doc|license|config(?:\([^)]*\))?|attr\([^)]*\))\s*", "", line).strip()
            entries.append(FileEntry(path, "dir" in flags, "ghost" in flags, "doc" in flags))
        result[header] = entries
    return result


def make_install_data(destination: Path, init_system: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed (apt-get install make)")
    completed = subprocess.run(
        ["make", "-s", "-C", str(REPOSITORY), "install-data", f"DESTDIR={destination}",
         f"INIT_SYSTEM={init_system}", "PYTHON_SITELIB=" + SITELIB],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def installed_paths(root: Path) -> set[str]:
    return {"/" + str(path.relative_to(root)) for path in root.rglob("*")}


def covered(installed: str, entry: FileEntry) -> bool:
    pattern = entry.path.rstrip("/")
    if fnmatch.fnmatchcase(installed, pattern):
        return True
    # A directory entry without %dir owns everything below it.
    return not entry.is_dir_only and entry.path.endswith("/") and installed.startswith(pattern + "/")


def is_python_entry(entry: FileEntry) -> bool:
    """Entries `make install-python` fills (it needs a wheel, built by the rpmbuild test)."""
    return entry.path.startswith(SITELIB) or entry.path in {"/usr/sbin/vacd", "/usr/sbin/vac", "/usr/sbin/check-vacd"}


# ------------------------------------------------------------------ versions and files

def test_spec_version_is_setup_cfg_version_with_rpm_prerelease_tilde() -> None:
    version = setup_cfg()["metadata"]["version"]
    text = spec_text()
    pypi_version = re.search(r"^%global\s+pypi_version\s+(\S+)$", text, re.MULTILINE)
    rpm_version = re.search(r"^Version:\s+(\S+)$", text, re.MULTILINE)
    assert pypi_version is not None and rpm_version is not None
    assert pypi_version.group(1) == version
    # 4.0.0a1 becomes 4.0.0~a1 so that rpm sorts it before the 4.0.0 release.
    assert rpm_version.group(1) == re.sub(r"(?<=\d)(a|b|rc)(?=\d+$)", r"~\1", version)


def test_changelog_names_the_spec_version() -> None:
    changelog = spec_sections()["%changelog"]
    version = re.search(r"^Version:\s+(\S+)$", spec_text(), re.MULTILINE)
    assert version is not None
    assert changelog[0].startswith("* ") and f" - {version.group(1)}-1" in changelog[0]


def test_console_scripts_are_the_sbin_commands_the_spec_packages() -> None:
    scripts = {}
    for line in setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        scripts[name] = target
    assert set(scripts) == {"vacd", "vac", "check-vacd"}
    packaged = {entry.path for entries in files_entries().values() for entry in entries}
    for name, target in scripts.items():
        assert f"/usr/sbin/{name}" in packaged
        module, function = target.split(":")
        source = REPOSITORY / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: {source} is missing"
        assert re.search(rf"^def {function}\(", source.read_text(encoding="utf-8"), re.MULTILINE)


def test_every_man_page_the_spec_packages_is_in_man_dir() -> None:
    for page in EXPECTED_MAN_PAGES:
        assert (MAN_DIR / page).is_file(), f"man/{page} is missing"
    packaged = [entry.path for entries in files_entries().values() for entry in entries]
    for page in EXPECTED_MAN_PAGES:
        section = page.rsplit(".", 1)[1]
        assert f"/usr/share/man/man{section}/{page}*" in packaged


def test_doc_files_of_the_spec_exist() -> None:
    docs = [entry.path for entries in files_entries().values() for entry in entries if entry.is_doc]
    assert docs
    for doc in docs:
        assert (REPOSITORY / doc).is_file(), f"%doc {doc} is missing from the tree"


@pytest.mark.allow_commands("make")
@pytest.mark.parametrize("with_systemd", [True, False], ids=["systemd", "sysv"])
def test_spec_files_are_exactly_what_make_install_installs(tmp_path: Path, with_systemd: bool) -> None:
    make_install_data(tmp_path, "systemd" if with_systemd else "sysv")
    installed = installed_paths(tmp_path)
    entries = [entry for entries in files_entries(with_systemd).values() for entry in entries
               if not entry.is_doc]
    unpackaged = sorted(path for path in installed
                        if not any(covered(path, entry) for entry in entries)
                        and not any(entry.path.rstrip("/").startswith(path + "/") for entry in entries))
    assert unpackaged == [], "installed but not in %files"
    missing = sorted(entry.path for entry in entries
                     if not entry.is_ghost and not is_python_entry(entry)
                     and not any(covered(path, entry) for path in installed))
    assert missing == [], "in %files but not installed"
    unit = tmp_path / "usr/lib/systemd/system/vacd.service"
    init_script = tmp_path / "etc/rc.d/init.d/vacd"
    assert unit.exists() is with_systemd
    assert init_script.exists() is not with_systemd
    if not with_systemd:
        assert os.access(init_script, os.X_OK)


@pytest.mark.allow_commands("make")
def test_state_tree_and_version_file_follow_paths(tmp_path: Path) -> None:
    make_install_data(tmp_path, "systemd")
    paths = Paths(tmp_path)
    for directory in (paths.slots_dir, paths.machines_dir, paths.finishes_dir, paths.machinetypes_dir,
                      paths.imagecache_dir, paths.pipescache_dir, paths.tmp_dir, paths.apel_outgoing_dir,
                      paths.apel_archive_dir, paths.space_census_dir, paths.config_dir):
        assert directory.is_dir(), directory
    version = setup_cfg()["metadata"]["version"]
    assert (paths.state_dir / "VERSION").read_text() == f"VERSION={version}\n"


# ------------------------------------------------------------------ scriptlets

def scriptlet(name: str, with_systemd: bool = True, sysconfdir: str = "/etc") -> str:
    macros = dict(EL9_MACROS, _sysconfdir=sysconfdir)
    lines = []
    for line in spec_sections(with_systemd)[name]:
        call = re.fullmatch(r"\s*%(\w+)\s+(.*)", line)
        if call is not None and call.group(1) in EL9_SCRIPTLET_MACROS:
            line = EL9_SCRIPTLET_MACROS[call.group(1)].format(arguments=call.group(2))
        lines.append(line)
    return expand("\n".join(lines), macros)


def run_scriptlet(body: str, argument: int, tmp_path: Path) -> list[str]:
    """Run a scriptlet as rpm does (sh -c BODY with $1), with systemctl recorded, not run."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    calls = tmp_path / "systemctl-calls"
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    environment = dict(os.environ, PATH=f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    completed = subprocess.run(["sh", "-e", "-c", body, "scriptlet", str(argument)],
                               capture_output=True, text=True, env=environment, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return calls.read_text().splitlines() if calls.exists() else []


CRON_LINE = re.compile(r"^(\d+) \* \* \* \* root \[ -x /usr/bin/ssmsend \] && /usr/bin/ssmsend -c (\S+) "
                       r">>/var/log/vac-ssmsend 2>&1$")


@pytest.mark.allow_commands("sh")
def test_post_writes_hourly_ssmsend_at_a_random_minute_and_daily_apel_sync(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "cron.d").mkdir(parents=True)
    calls = run_scriptlet(scriptlet("%post", sysconfdir=str(etc)), 1, tmp_path)
    cron = (etc / "cron.d/vac-ssmsend").read_text()
    ssmsend = [match for match in map(CRON_LINE.match, cron.splitlines()) if match]
    assert len(ssmsend) == 1
    assert 0 <= int(ssmsend[0].group(1)) <= 59
    assert ssmsend[0].group(2) == f"{etc}/apel/vac-ssmsend-prod.cfg"
    assert "0 12 * * * root /usr/sbin/vac apel-sync >>/var/log/vac-ssmsend 2>&1" in cron.splitlines()
    assert (etc / "cron.d/vac-ssmsend").stat().st_mode & 0o777 == 0o644
    if Path("/run/systemd/system").is_dir():
        assert any("preset vacd.service" in call for call in calls)
    else:
        assert calls == []


@pytest.mark.allow_commands("sh")
def test_post_on_upgrade_keeps_the_minute_and_try_restarts_vacd(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "cron.d").mkdir(parents=True)
    body = scriptlet("%post", sysconfdir=str(etc))
    run_scriptlet(body, 1, tmp_path)
    first = (etc / "cron.d/vac-ssmsend").read_text()
    calls = run_scriptlet(body, 2, tmp_path)
    assert (etc / "cron.d/vac-ssmsend").read_text() == first
    if Path("/run/systemd/system").is_dir():
        # try-restart, never stop: the machines are libvirtd's and vacd adopts them.
        assert "try-restart vacd.service" in calls
        assert not any(call.startswith("stop") for call in calls)


@pytest.mark.allow_commands("sh")
def test_preun_removes_the_cron_file_on_erase_only(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    cron = etc / "cron.d/vac-ssmsend"
    cron.parent.mkdir(parents=True)
    cron.write_text("# jobs\n")
    body = scriptlet("%preun", sysconfdir=str(etc))
    run_scriptlet(body, 1, tmp_path)
    assert cron.exists()
    calls = run_scriptlet(body, 0, tmp_path)
    assert not cron.exists()
    assert calls == ["--no-reload disable --now vacd.service"]


def sysctl_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("=", 1))
            settings[key] = value
    return settings


def test_sysctl_drop_in_allows_the_socket_buffers_vacd_asks_for() -> None:
    from vacquery.transport import SOCKET_BUFFER_BYTES

    settings = sysctl_settings(SYSCTL_DROP_IN.read_text())
    assert int(settings["net.core.rmem_max"]) >= SOCKET_BUFFER_BYTES
    assert int(settings["net.core.wmem_max"]) >= SOCKET_BUFFER_BYTES
    packaged = [entry.path for entries in files_entries().values() for entry in entries]
    assert "/usr/lib/sysctl.d/90-vac-vacquery.conf" in packaged


@pytest.mark.allow_commands("sh")
@pytest.mark.parametrize("with_systemd", [True, False], ids=["systemd", "sysv"])
def test_post_applies_the_socket_buffer_drop_in_at_once(tmp_path: Path, with_systemd: bool) -> None:
    etc = tmp_path / "etc"
    (etc / "cron.d").mkdir(parents=True)
    applied = tmp_path / "sysctl-calls"
    fake = tmp_path / "fake-sysctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {applied}\n')
    fake.chmod(0o755)
    (tmp_path / "fake-bin").mkdir()
    (tmp_path / "fake-bin/sysctl").symlink_to(fake)
    body = scriptlet("%post", with_systemd=with_systemd, sysconfdir=str(etc)).replace(SYSTEMD_SYSCTL, str(fake))
    # Install and upgrade alike (the SysV install runs /sbin/chkconfig, absent here: upgrade only).
    runs = (1, 2) if with_systemd else (2,)
    for argument in runs:
        run_scriptlet(body, argument, tmp_path)
    expected = "90-vac-vacquery.conf" if with_systemd else "-q -p /usr/lib/sysctl.d/90-vac-vacquery.conf"
    assert applied.read_text().splitlines() == [expected] * len(runs)


# ------------------------------------------------------------------ man pages

def man_pages() -> list[Path]:
    return sorted(page for page in MAN_DIR.iterdir() if re.fullmatch(r".+\.[1-8]", page.name))


@pytest.mark.allow_commands("groff")
@pytest.mark.parametrize("page", [page.name for page in man_pages()])
def test_man_page_renders_without_warnings(page: str) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    completed = subprocess.run([groff, "-man", "-Tascii", "-ww", "-z", str(MAN_DIR / page)],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0
    assert completed.stderr == ""


def test_vacd_man_page_names_every_path_of_paths_module() -> None:
    page = (MAN_DIR / "vacd.8").read_text(encoding="utf-8").replace("\\-", "-")
    paths = Paths(Path("/"))
    named: list[Path] = [paths.heartbeat_file(part) for part in ("factory", "responder", "mjf", "metadata")]
    for attribute in dir(Paths):
        value = getattr(paths, attribute)
        if isinstance(getattr(Paths, attribute), property):
            named.extend(value if isinstance(value, tuple) else [value])
    assert len(named) > 20
    missing = sorted(str(path) for path in named if str(path) not in page)
    assert missing == []
    for option in ("--prefix", "--check-config", "--stderr", "--log-level", "VAC_PREFIX",
                   "SIGHUP", "SIGTERM", "SIGUSR1", "EXIT STATUS"):
        assert option in page


# ------------------------------------------------------------------ etc/

@pytest.mark.allow_commands("systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart= binaries exist: point them at a stand-in under tmp_path.
    vacd = tmp_path / "vacd"
    vacd.write_text("#!/bin/sh\n")
    vacd.chmod(0o755)
    unit = tmp_path / "vacd.service"
    unit.write_text((REPOSITORY / "etc/vacd.service").read_text().replace("/usr/sbin/vacd", str(vacd)))
    completed = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.strip() == ""


def unit_sections(text: str) -> dict[str, dict[str, str]]:
    """A systemd unit's sections; keys keep their case (configparser would fold it)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, value = line.split("=", 1)
            current[key] = value
    return sections


def test_systemd_unit_never_kills_machines_and_checks_config_first() -> None:
    unit = unit_sections((REPOSITORY / "etc/vacd.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "process"
    assert service["ExecStart"].split()[0] == "/usr/sbin/vacd"
    assert service["ExecStartPre"].split()[:2] == ["/usr/sbin/vacd", "--check-config"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    # EL9's modular libvirt daemons are wanted; the monolithic libvirtd is an ordering only.
    assert "libvirtd.service" in unit["Unit"]["After"].split()
    assert "virtqemud.socket" in unit["Unit"]["Wants"].split()
    assert "libvirtd.service" not in unit["Unit"]["Wants"].split()


@pytest.mark.allow_commands("sh")
def test_init_script_is_sh_with_vac_chkconfig_levels() -> None:
    script = REPOSITORY / "etc/init.d/vacd"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "# chkconfig: 345 56 02\n" in text
    assert "PIDFILE=/var/lib/vac/vacd.pid" in text
    completed = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.allow_commands("sh")
def test_init_script_reports_stopped_without_a_pid_file() -> None:
    # `status` only reads /var/lib/vac/vacd.pid; with no vacd running it must say stopped (3).
    if Path("/var/lib/vac/vacd.pid").exists():
        pytest.skip("a vacd pid file exists on this host")
    completed = subprocess.run(["sh", str(REPOSITORY / "etc/init.d/vacd"), "status"], capture_output=True,
                               text=True, timeout=30)
    assert completed.returncode == 3
    assert completed.stdout.strip() == "vacd is stopped"


@pytest.mark.allow_commands("logrotate")
def test_logrotate_configuration_parses(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or next(
        (candidate for candidate in ("/usr/sbin/logrotate", "/sbin/logrotate") if os.access(candidate, os.X_OK)),
        None)
    if logrotate is None:
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    # -d: debug mode, reads the configuration and rotates nothing.
    completed = subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"),
                                str(REPOSITORY / "etc/logrotate.d/vacd")],
                               capture_output=True, text=True, timeout=60)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "error" not in output.lower()
    for log in ("/var/log/vacd", "/var/log/vac-ssmsend", "/var/log/vac-ssmsend-prod"):
        assert log in output
    assert 'kill -HUP "$(cat /var/lib/vac/vacd.pid)"' in (REPOSITORY / "etc/logrotate.d/vacd").read_text()


def test_ssmsend_configuration_sends_vac_records_to_the_apel_queue() -> None:
    config = configparser.ConfigParser(interpolation=None)
    config.read(REPOSITORY / "etc/vac-ssmsend-prod.cfg")
    assert config["broker"]["bdii"] == "ldap://lcg-bdii.cern.ch:2170"
    assert config["broker"]["network"] == "PROD"
    assert config["broker"]["use_ssl"] == "true"
    assert config["certificates"]["certificate"] == "/etc/grid-security/vac-apel-cert.pem"
    assert config["certificates"]["key"] == "/etc/grid-security/vac-apel-key.pem"
    assert config["certificates"]["capath"] == "/etc/grid-security/certificates"
    assert config["messaging"]["destination"] == "/queue/global.accounting.cpu.central"
    assert config["messaging"]["path"] == str(Paths().apel_outgoing_dir)
    assert config["logging"]["logfile"] == "/var/log/vac-ssmsend-prod"


def test_squid_template_denies_urn_before_any_allow_and_keeps_vac_settings() -> None:
    lines = [line.split("#", 1)[0].strip() for line in (REPOSITORY / "etc/squid.conf.vac").read_text().splitlines()]
    lines = [line for line in lines if line]
    for required in ("maximum_object_size 1048576 KB", "acl localnet src 169.254.169.0/24", "http_port 3128",
                     "icp_port 3130", "cache_dir ufs /var/spool/squid 10000 16 256", "acl URN proto URN",
                     "http_access deny URN", "icp_access allow localnet", "http_access allow localnet",
                     "http_access deny all"):
        assert required in lines, required
    access = [line for line in lines if line.startswith("http_access")]
    # CVE-2019-12526: the URN deny must come before the first rule that allows anything.
    assert access.index("http_access deny URN") < min(
        index for index, line in enumerate(access) if line.startswith("http_access allow"))
    assert access[-1] == "http_access deny all"


def test_squid_template_becomes_a_config_with_siblings_through_vac_squid_conf() -> None:
    from vacd.squidconf import ResolvedFactory, render_squid_conf

    template = (REPOSITORY / "etc/squid.conf.vac").read_text()
    rendered = render_squid_conf(template, [ResolvedFactory("f1.example.org", "192.0.2.1"),
                                            ResolvedFactory("f2.example.org", "192.0.2.2")], "f1.example.org")
    assert rendered.startswith(template)
    assert "cache_peer 192.0.2.2 sibling 3128 3130 default" in rendered
    assert "cache_peer 192.0.2.1 " not in rendered


# ------------------------------------------------------------------ rpmbuild

@dataclass(frozen=True)
class BuiltPackages:
    srpm: Path
    rpms: dict[str, Path]


@pytest.fixture(scope="module")
def built_packages(tmp_path_factory: pytest.TempPathFactory) -> BuiltPackages:
    """`make sdist` then `rpmbuild -ta` of the tarball, as a packager would."""
    for tool, package in (("rpmbuild", "rpm"), ("make", "make")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install {package})")
    # The build's Python needs pip, setuptools and wheel: the host's, as on EL9.
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import setuptools, wheel, pip"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{python} lacks pip, setuptools or wheel (apt-get install python3-pip python3-wheel)")
    work = tmp_path_factory.mktemp("rpmbuild")
    dist = work / "dist"
    completed = subprocess.run(["make", "-s", "-C", str(REPOSITORY), "sdist", f"PYTHON={python}",
                                f"DIST_DIR={dist}"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    version = setup_cfg()["metadata"]["version"]
    tarball = dist / f"vac-{version}.tar.gz"
    assert tarball.is_file()
    # --nodeps: this host's rpm database does not hold EL9's BuildRequires.
    completed = subprocess.run(
        ["rpmbuild", "-ta", "--nodeps", "--define", f"_topdir {work / 'top'}", "--define", f"python3 {python}",
         str(tarball)], capture_output=True, text=True, timeout=600, cwd=work)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    srpms = list((work / "top/SRPMS").glob("*.src.rpm"))
    rpms = {path.name.rsplit("-", 2)[0]: path for path in (work / "top/RPMS/noarch").glob("*.noarch.rpm")}
    assert len(srpms) == 1
    return BuiltPackages(srpm=srpms[0], rpms=rpms)


def rpm_query(package: Path, *arguments: str) -> list[str]:
    completed = subprocess.run(["rpm", "-qp", *arguments, str(package)], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.allow_commands("make", "rpmbuild", "rpm")
def test_rpmbuild_makes_vac_and_vac_command_from_the_source_tarball(built_packages: BuiltPackages) -> None:
    assert set(built_packages.rpms) == {"vac", "vac-command"}
    vac = set(rpm_query(built_packages.rpms["vac"], "-l"))
    command = set(rpm_query(built_packages.rpms["vac-command"], "-l"))
    for path in ("/usr/sbin/vacd", "/usr/sbin/check-vacd", "/usr/lib/systemd/system/vacd.service",
                 "/etc/logrotate.d/vacd", "/etc/sysconfig/vacd", "/etc/apel/vac-ssmsend-prod.cfg",
                 "/etc/squid/squid.conf.vac", "/etc/cron.d/vac-ssmsend", "/usr/share/man/man8/vacd.8",
                 "/usr/lib/sysctl.d/90-vac-vacquery.conf",
                 "/usr/share/man/man8/check-vacd.8", "/var/lib/vac/machines", "/var/lib/vac/apel-outgoing",
                 "/usr/share/vac/kickstart/viab-generate", "/usr/share/vac/puppet/vac/manifests/init.pp"):
        assert any(line == path or line.startswith(path + ".") for line in vac), path
    for path in ("/usr/sbin/vac", "/usr/share/man/man1/vac.1", "/usr/share/man/man5/vac.conf.5",
                 "/etc/vac.d", "/var/lib/vac/VERSION"):
        assert any(line == path or line.startswith(path + ".") for line in command), path
    assert any(line.endswith("/site-packages/vacd/daemon.py") for line in command)
    assert any(line.endswith("/site-packages/vacquery/cli.py") for line in command)
    # The `vac` entry point and its local verbs are vacd's since issue 9 item 1.
    assert any(line.endswith("/site-packages/vacd/cli.py") for line in command)
    assert any(line.endswith("/site-packages/vacd/localcommands.py") for line in command)
    assert not vac & command - {"/usr/share/doc"}


@pytest.mark.slow
@pytest.mark.allow_commands("make", "rpmbuild", "rpm")
def test_rpm_requires_the_daemon_dependencies_and_its_command_package(built_packages: BuiltPackages) -> None:
    requires = set(rpm_query(built_packages.rpms["vac"], "--requires"))
    # The Python modules at least at EL9's versions (constraints/el9.txt, issue 12 item 1).
    for dependency in ("libvirt-daemon-kvm", "python3-libvirt >= 10.0.0", "python3-pyroute2 >= 0.7.3",
                       "python3-dns >= 2.1.0", "python3-psutil >= 5.8.0", "python3-cryptography >= 36.0.1",
                       "python3-requests >= 2.25.1", "python3-prometheus_client >= 0.13.1",
                       "dnsmasq", "(nftables or iptables-nft)", "python3 >= 3.9"):
        assert dependency in requires, dependency
    assert any(line.startswith("vac-command = ") for line in requires)
    scripts = "\n".join(rpm_query(built_packages.rpms["vac"], "--scripts"))
    assert "systemctl try-restart vacd.service" in scripts
    assert "rm -f /etc/cron.d/vac-ssmsend" in scripts


@pytest.mark.slow
@pytest.mark.allow_commands("make", "rpmbuild", "rpm", "rpm2cpio", "cpio")
def test_installed_commands_use_the_system_python(built_packages: BuiltPackages, tmp_path: Path) -> None:
    if shutil.which("rpm2cpio") is None or shutil.which("cpio") is None:
        pytest.skip("rpm2cpio or cpio is not installed (apt-get install rpm cpio)")
    payload = subprocess.run(["rpm2cpio", str(built_packages.rpms["vac"])], capture_output=True, timeout=60)
    assert payload.returncode == 0, payload.stderr
    extract = subprocess.run(["cpio", "-idm", "--quiet"], input=payload.stdout, cwd=tmp_path,
                             capture_output=True, timeout=60)
    assert extract.returncode == 0, extract.stderr
    for command, module in (("vacd", "vacd.daemon"), ("check-vacd", "vacd.nagios")):
        script = (tmp_path / "usr/sbin" / command).read_text()
        assert script.startswith("#!/usr/bin/python3\n")
        assert f"from {module} import main" in script


FAKE_VACD = """#!/bin/sh
# Stands in for vacd: --check-config succeeds; otherwise write the pid file, count
# SIGHUPs, and on SIGTERM remove the pid file and exit as vacd does.
[ "$1" = --check-config ] && exit 0
echo $$ > {pid_file}
trap 'echo hup >> {hup_log}' HUP
trap 'rm -f {pid_file}; exit 0' TERM
while :; do sleep 0.1; done
"""


@pytest.mark.slow
@pytest.mark.allow_commands("sh", "setsid")
def test_init_script_starts_reloads_and_stops_vacd_through_its_pid_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the init script refuses to start vacd unless run as root")
    if shutil.which("setsid") is None:
        pytest.skip("setsid is not installed (apt-get install util-linux)")
    pid_file, hup_log = tmp_path / "vacd.pid", tmp_path / "hups"
    vacd = tmp_path / "vacd"
    vacd.write_text(FAKE_VACD.format(pid_file=pid_file, hup_log=hup_log))
    vacd.chmod(0o755)
    script = tmp_path / "init-vacd"
    script.write_text((REPOSITORY / "etc/init.d/vacd").read_text()
                      .replace("VACD=/usr/sbin/vacd", f"VACD={vacd}")
                      .replace("PIDFILE=/var/lib/vac/vacd.pid", f"PIDFILE={pid_file}")
                      .replace("LOGFILE=/var/log/vacd", f"LOGFILE={tmp_path / 'log'}")
                      .replace("SSMSEND=/usr/bin/ssmsend", f"SSMSEND={tmp_path / 'no-ssmsend'}")
                      .replace("[ -r /etc/sysconfig/vacd ] && . /etc/sysconfig/vacd", ""))

    def init(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), action], capture_output=True, text=True, timeout=180)

    try:
        assert init("status").returncode == 3
        started = init("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int(pid_file.read_text())
        assert init("status").stdout.strip() == f"vacd (pid {pid}) is running"
        assert init("start").stdout.strip() == f"vacd is already running (pid {pid})"
        assert init("reload").returncode == 0
        stopped = init("stop")
        assert stopped.returncode == 0, stopped.stdout
        assert "machines keep running" in stopped.stdout
        assert not pid_file.exists()
        assert hup_log.read_text().splitlines() == ["hup"]
        assert init("condrestart").returncode == 0
        assert not pid_file.exists()
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 15)
