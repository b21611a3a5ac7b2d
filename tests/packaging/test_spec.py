"""vac.spec, the Makefile and the files they install: versions, file lists, scriptlets,
man pages, the systemd unit, logrotate, ssmsend and Squid templates, and a real rpmbuild.

The spec's %files are checked against what `make install-data` really installs (what
rpmbuild's check for unpackaged and missing files would say), and its scriptlets, as this
host's `rpmspec -P` expands them (with the spec's fallbacks for the systemd-rpm-macros that
Debian's rpm lacks), are run with sh against a scratch directory. Tools that are not
installed (groff, make, systemd-analyze, logrotate, rpmbuild, rpmspec) skip their tests with
the package to install. rpmlint is run on the spec and the built RPMs in test_rpmlint.py.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pytest

from tests.packaging.conftest import BuiltPackages
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
    "_presetdir": "/usr/lib/systemd/system-preset",
    "python3_sitelib": SITELIB,
}
# What %sysctl_apply runs (EL9's systemd-rpm-macros and the spec's fallback alike).
SYSTEMD_SYSCTL = "/usr/lib/systemd/systemd-sysctl"
# The spec's %if conditions, as they are on EL9 (where these macros are all defined).
EL9_CONDITIONS = {
    "0%{!?pyproject_wheel:1}": False,
    "0%{!?systemd_post:1}": False,
    "0%{!?sysctl_apply:1}": False,
}
SYSCTL_DROP_IN = REPOSITORY / "etc/sysctl.d/90-vac-vacquery.conf"
SECTION = re.compile(
    r"%(package|description|prep|build|install|check|pre|post|preun|postun|posttrans|files|changelog)\b")


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
    conditions = dict(EL9_CONDITIONS, **{"%{with systemd}": with_systemd, "%{without systemd}": not with_systemd,
                                         "%{with tests}": False})
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
            path = re.sub(r"%(?:dir|ghost|doc|license|config(?:\([^)]*\))?|attr\([^)]*\)|verify\([^)]*\))\s*", "",
                          line).strip()
            # %license files, like %doc ones, come from the source tree, not the buildroot.
            entries.append(FileEntry(path, "dir" in flags, "ghost" in flags, bool(flags & {"doc", "license"})))
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
    """Entries the Python install fills (%pyproject_install in the RPM; the rpmbuild tests check them)."""
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


def test_changelog_names_the_spec_version_and_release() -> None:
    changelog = spec_sections()["%changelog"]
    version = re.search(r"^Version:\s+(\S+)$", spec_text(), re.MULTILINE)
    release = re.search(r"^Release:\s+(\d+)%\{\?dist\}$", spec_text(), re.MULTILINE)
    assert version is not None and release is not None
    assert changelog[0].startswith("* ") and changelog[0].endswith(f" - {version.group(1)}-{release.group(1)}")


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

# The units the scriptlets preset, stop, disable and restart.
PRESET_UNITS = "vacd.service vac-ssmsend.timer vac-apel-sync.timer"
APEL_TIMERS = "vac-ssmsend.timer vac-apel-sync.timer"
# What the %post of vac 4.0.0~a1-1 wrote to /etc/cron.d/vac-ssmsend (and rewrote on every
# upgrade), with its macros for a scratch root; %posttrans of later releases removes it.
CRON_FILE_OF_4_0_0_A1_1 = """\
# Written by the vac RPM's %post; rewritten on upgrade, removed on erase.
# Send vac's APEL accounting records hourly and the monthly sync record daily.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
{minute} * * * * root [ -x /usr/bin/ssmsend ] && /usr/bin/ssmsend -c {etc}/apel/vac-ssmsend-prod.cfg >>{var}/log/vac-ssmsend 2>&1
0 12 * * * root /usr/sbin/vac apel-sync >>{var}/log/vac-ssmsend 2>&1
"""


@dataclass(frozen=True)
class ScratchRoot:
    """/etc and /var of the scriptlets, under tmp_path."""
    etc: Path
    var: Path

    @property
    def cron_file(self) -> Path:
        return self.etc / "cron.d/vac-ssmsend"


def scratch_root(tmp_path: Path) -> ScratchRoot:
    root = ScratchRoot(etc=tmp_path / "root/etc", var=tmp_path / "root/var")
    (root.etc / "cron.d").mkdir(parents=True)
    (root.var / "log").mkdir(parents=True)
    return root


def scriptlet(name: str, root: ScratchRoot, with_systemd: bool = True) -> str:
    """The scriptlet as this host's rpm expands it (`rpmspec -P`), /etc and /var under root.

    Debian's rpm has no systemd-rpm-macros, so %systemd_post and friends are the spec's
    fallbacks here; test_spec_calls_the_systemd_rpm_macros_for_every_unit checks the calls
    that EL9's definitions expand.
    """
    rpmspec = shutil.which("rpmspec")
    if rpmspec is None:
        pytest.skip("rpmspec is not installed (apt-get install rpm)")
    command = [rpmspec, "-P", "--define", f"_sysconfdir {root.etc}", "--define", f"_localstatedir {root.var}",
               "--define", "python3 /usr/bin/python3"]
    if not with_systemd:
        command += ["--without", "systemd"]
    completed = subprocess.run([*command, str(SPEC)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    sections: dict[str, list[str]] = {}
    current: Optional[str] = None
    for line in completed.stdout.splitlines():
        if SECTION.match(line):
            current = line.strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    assert name in sections, f"vac.spec has no {name} here"
    return "\n".join(sections[name])


@dataclass(frozen=True)
class ScriptletRun:
    systemctl_calls: list[str]
    stderr: str


def run_scriptlet(body: str, argument: int, tmp_path: Path) -> ScriptletRun:
    """Run a scriptlet as rpm does (sh -c BODY with $1), with systemctl recorded, not run."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir(exist_ok=True)
    calls = tmp_path / "systemctl-calls"
    calls.unlink(missing_ok=True)
    systemctl = fake_bin / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    systemctl.chmod(0o755)
    environment = dict(os.environ, PATH=f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    completed = subprocess.run(["sh", "-e", "-c", body, "scriptlet", str(argument)],
                               capture_output=True, text=True, env=environment, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return ScriptletRun(calls.read_text().splitlines() if calls.exists() else [], completed.stderr)


def test_spec_calls_the_systemd_rpm_macros_for_every_unit() -> None:
    # As EL9 parses it: systemd-rpm-macros defined, so the spec's fallbacks are skipped.
    sections = spec_sections()
    globals_ = dict(re.findall(r"^%global\s+(\w+)\s+(.*)$", spec_text(), re.MULTILINE))
    assert globals_["vac_units"] == PRESET_UNITS
    assert "%systemd_post %{vac_units}" in sections["%post"]
    assert "%systemd_preun %{vac_units} vac-ssmsend.service vac-apel-sync.service" in sections["%preun"]
    assert f"%systemd_postun_with_restart {PRESET_UNITS}" in sections["%postun"]
    assert "%sysctl_apply 90-vac-vacquery.conf" in sections["%post"]
    # No hand-written systemctl calls beside the macros, but the cron file's migration.
    for name in ("%post", "%preun", "%postun"):
        assert not any("systemctl" in line for line in sections[name] if not line.lstrip().startswith("#")), name
    # The fallbacks are defined only where the macros are not.
    text = spec_text()
    for macro in ("pyproject_wheel", "systemd_post", "sysctl_apply"):
        assert f"%if 0%{{!?{macro}:1}}" in text


def test_spec_builds_and_installs_with_the_pyproject_macros() -> None:
    sections = spec_sections()
    assert [line for line in sections["%build"] if line.strip()] == ["%pyproject_wheel"]
    assert "%pyproject_install" in sections["%install"]
    assert "%pyproject_save_files vacd vacquery" in sections["%install"]
    assert "%files command -f %{pyproject_files}" in sections
    assert re.search(r"^BuildRequires:\s+pyproject-rpm-macros$", spec_text(), re.MULTILINE)


@pytest.mark.allow_commands("rpmspec", "sh")
def test_post_presets_vacd_and_the_apel_timers_on_install_only(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    body = scriptlet("%post", root)
    assert f"--no-reload preset {PRESET_UNITS}" in run_scriptlet(body, 1, tmp_path).systemctl_calls
    upgrade = run_scriptlet(body, 2, tmp_path).systemctl_calls
    assert not any("preset" in call or "stop" in call for call in upgrade)
    # No cron file any more: the timers run the APEL jobs.
    assert not root.cron_file.exists()


@pytest.mark.allow_commands("rpmspec", "sh")
def test_post_creates_the_logs_with_the_mode_vacd_gives_them(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    existing = root.var / "log/vac-ssmsend"
    existing.write_text("kept\n")
    run_scriptlet(scriptlet("%post", root), 1, tmp_path)
    assert (root.var / "log/vacd").stat().st_mode & 0o777 == 0o644
    assert (root.var / "log/vacd").read_text() == ""
    assert existing.read_text() == "kept\n"


@pytest.mark.allow_commands("rpmspec", "sh")
def test_preun_stops_and_disables_vacd_and_the_timers_on_erase_only(tmp_path: Path) -> None:
    body = scriptlet("%preun", scratch_root(tmp_path))
    assert run_scriptlet(body, 1, tmp_path).systemctl_calls == []
    assert run_scriptlet(body, 0, tmp_path).systemctl_calls == [
        f"--no-reload disable --now {PRESET_UNITS} vac-ssmsend.service vac-apel-sync.service"]


@pytest.mark.allow_commands("rpmspec", "sh")
def test_postun_try_restarts_vacd_and_the_timers_on_upgrade_only(tmp_path: Path) -> None:
    body = scriptlet("%postun", scratch_root(tmp_path))
    upgrade = run_scriptlet(body, 1, tmp_path).systemctl_calls
    # try-restart, never stop: the machines are libvirtd's and vacd adopts them.
    assert f"try-restart {PRESET_UNITS}" in upgrade
    assert not any(call.startswith("stop") for call in upgrade)
    assert not any("restart" in call for call in run_scriptlet(body, 0, tmp_path).systemctl_calls)


def expected_timer_enable() -> str:
    now = "--now " if Path("/run/systemd/system").is_dir() else ""
    return f"enable {now}{APEL_TIMERS}"


@pytest.mark.allow_commands("rpmspec", "sh")
@pytest.mark.parametrize("minute", [0, 7, 59])
def test_posttrans_replaces_the_cron_file_4_0_0_a1_1_generated_with_the_timers(tmp_path: Path, minute: int) -> None:
    root = scratch_root(tmp_path)
    root.cron_file.write_text(CRON_FILE_OF_4_0_0_A1_1.format(minute=minute, etc=root.etc, var=root.var))
    run = run_scriptlet(scriptlet("%posttrans", root), 0, tmp_path)
    assert not root.cron_file.exists()
    # The timers are new in this release, so %systemd_post did not preset them on the upgrade.
    assert run.systemctl_calls == [expected_timer_enable()]
    assert run.stderr == ""


@pytest.mark.allow_commands("rpmspec", "sh")
def test_posttrans_keeps_a_cron_file_the_admin_changed_and_says_so(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    changed = CRON_FILE_OF_4_0_0_A1_1.format(minute=12, etc=root.etc, var=root.var).replace(
        "0 12 * * *", "30 6 * * *")
    root.cron_file.write_text(changed)
    run = run_scriptlet(scriptlet("%posttrans", root), 0, tmp_path)
    assert root.cron_file.read_text() == changed
    # Enabling the timers too would run its jobs twice.
    assert run.systemctl_calls == []
    assert f"{root.cron_file} was changed locally and is kept" in run.stderr


@pytest.mark.allow_commands("rpmspec", "sh")
def test_posttrans_without_a_cron_file_changes_nothing(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    run = run_scriptlet(scriptlet("%posttrans", root), 0, tmp_path)
    assert run.systemctl_calls == [] and run.stderr == ""
    assert sorted(path.name for path in root.etc.rglob("*")) == ["cron.d"]


CRON_LINE = re.compile(r"^(\d+) \* \* \* \* root \[ -x /usr/bin/ssmsend \] && /usr/bin/ssmsend -c (\S+) "
                       r">>(\S+)/log/vac-ssmsend 2>&1$")


def sysv_post(root: ScratchRoot, tmp_path: Path) -> str:
    """The SysV build's %post with /sbin/chkconfig, absent here, recorded instead."""
    chkconfig = tmp_path / "fake-chkconfig"
    chkconfig.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "chkconfig-calls"}\n')
    chkconfig.chmod(0o755)
    return scriptlet("%post", root, with_systemd=False).replace("/sbin/chkconfig", str(chkconfig))


@pytest.mark.allow_commands("rpmspec", "sh")
def test_sysv_post_writes_hourly_ssmsend_at_a_random_minute_and_daily_apel_sync_once(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    body = sysv_post(root, tmp_path)
    run_scriptlet(body, 1, tmp_path)
    cron = root.cron_file.read_text()
    ssmsend = [match for match in map(CRON_LINE.match, cron.splitlines()) if match]
    assert len(ssmsend) == 1
    assert 0 <= int(ssmsend[0].group(1)) <= 59
    assert ssmsend[0].group(2) == f"{root.etc}/apel/vac-ssmsend-prod.cfg"
    assert ssmsend[0].group(3) == str(root.var)
    assert f"0 12 * * * root /usr/sbin/vac apel-sync >>{root.var}/log/vac-ssmsend 2>&1" in cron.splitlines()
    assert root.cron_file.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "chkconfig-calls").read_text().splitlines() == ["--add vacd"]
    # An upgrade leaves the file, and what the admin changed in it, alone.
    root.cron_file.write_text(cron + "# changed by the admin\n")
    run_scriptlet(body, 2, tmp_path)
    assert root.cron_file.read_text() == cron + "# changed by the admin\n"


@pytest.mark.allow_commands("rpmspec", "sh")
def test_sysv_preun_removes_the_cron_file_on_erase_only(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    root.cron_file.write_text("# jobs\n")
    body = scriptlet("%preun", root, with_systemd=False).replace("/sbin/chkconfig", "true")
    run_scriptlet(body, 1, tmp_path)
    assert root.cron_file.exists()
    run_scriptlet(body, 0, tmp_path)
    assert not root.cron_file.exists()


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


@pytest.mark.allow_commands("rpmspec", "sh")
@pytest.mark.parametrize("with_systemd", [True, False], ids=["systemd", "sysv"])
def test_post_applies_the_socket_buffer_drop_in_at_once(tmp_path: Path, with_systemd: bool) -> None:
    root = scratch_root(tmp_path)
    applied = tmp_path / "sysctl-calls"
    fake = tmp_path / "fake-sysctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {applied}\n')
    fake.chmod(0o755)
    (tmp_path / "fake-bin").mkdir()
    (tmp_path / "fake-bin/sysctl").symlink_to(fake)
    body = (scriptlet("%post", root) if with_systemd else sysv_post(root, tmp_path))
    body = body.replace(SYSTEMD_SYSCTL, str(fake))
    runs = (1, 2)
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

def verify_units(tmp_path: Path, units: Sequence[str], commands: Sequence[str]) -> None:
    """`systemd-analyze verify` on etc/ units, clean: no error, no warning, nothing printed.

    verify checks that each Exec*= program exists, so `commands` are pointed at executable
    stand-ins under tmp_path.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    replacements: dict[str, str] = {}
    for command in commands:
        stand_in = tmp_path / Path(command).name
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
        replacements[command] = str(stand_in)
    for unit in units:
        text = (REPOSITORY / "etc" / unit).read_text()
        for command, replacement in replacements.items():
            text = text.replace(command, replacement)
        (tmp_path / unit).write_text(text)
    completed = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / unit) for unit in units)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout + completed.stderr == ""


@pytest.mark.allow_commands("systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    verify_units(tmp_path, ["vacd.service"], ["/usr/sbin/vacd"])


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


APEL_UNITS = ("vac-ssmsend.service", "vac-ssmsend.timer", "vac-apel-sync.service", "vac-apel-sync.timer")


@pytest.mark.allow_commands("systemd-analyze")
def test_apel_timers_and_services_verify(tmp_path: Path) -> None:
    # Stand-ins for ssmsend (apel-ssm) and vac, which verify looks for.
    verify_units(tmp_path, APEL_UNITS, ["/usr/bin/ssmsend", "/usr/sbin/vac"])


def test_ssmsend_timer_runs_hourly_at_a_fixed_random_minute_per_factory() -> None:
    timer = unit_sections((REPOSITORY / "etc/vac-ssmsend.timer").read_text())
    assert timer["Timer"]["OnCalendar"] == "hourly"
    assert timer["Timer"]["RandomizedDelaySec"] == "55min"
    assert timer["Timer"]["FixedRandomDelay"] == "true"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = unit_sections((REPOSITORY / "etc/vac-ssmsend.service").read_text())
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == "/usr/bin/ssmsend -c /etc/apel/vac-ssmsend-prod.cfg"
    # Without apel-ssm the run is skipped, not failed (the cron job tested with [ -x ]).
    assert service["Unit"]["ConditionFileIsExecutable"] == "/usr/bin/ssmsend"
    assert service["Service"]["StandardOutput"] == "append:/var/log/vac-ssmsend"


def test_apel_sync_timer_runs_daily_around_noon() -> None:
    timer = unit_sections((REPOSITORY / "etc/vac-apel-sync.timer").read_text())
    assert timer["Timer"]["OnCalendar"] == "*-*-* 12:00:00"
    assert timer["Timer"]["RandomizedDelaySec"] == "1h"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = unit_sections((REPOSITORY / "etc/vac-apel-sync.service").read_text())
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == "/usr/sbin/vac apel-sync"
    assert service["Service"]["StandardOutput"] == "append:/var/log/vac-ssmsend"


def test_preset_enables_the_apel_timers_and_leaves_vacd_to_the_system_default() -> None:
    lines = [line.strip() for line in (REPOSITORY / "etc/systemd-preset/85-vac.preset").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules == ["enable vac-ssmsend.timer", "enable vac-apel-sync.timer"]
    packaged = [entry.path for entries in files_entries().values() for entry in entries]
    assert "/usr/lib/systemd/system-preset/85-vac.preset" in packaged
    for unit in APEL_UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in packaged


def test_logs_are_owned_with_the_mode_vacd_creates_them_with() -> None:
    entries = {entry.path: entry for entries in files_entries().values() for entry in entries}
    for log in (str(Paths().log_file), "/var/log/vac-ssmsend"):
        assert entries[log].is_ghost, log
    lines = [line for line in spec_text().splitlines() if line.endswith("%{_localstatedir}/log/vacd")]
    assert lines == ["%ghost %attr(0644,root,root) %verify(not md5 size mtime) %{_localstatedir}/log/vacd"]


def test_license_is_bsd_2_clause_in_both_packages() -> None:
    license_text = (REPOSITORY / "LICENSE").read_text()
    assert license_text.startswith("BSD 2-Clause License\n\nCopyright (c) 2026, the vac authors\n")
    assert "Redistributions in binary form must reproduce" in license_text
    assert re.search(r"^License:\s+BSD-2-Clause$", spec_text(), re.MULTILINE)
    assert setup_cfg()["metadata"]["license"] == "BSD-2-Clause"
    for header, body in spec_sections().items():
        if header.startswith("%files"):
            assert "%license LICENSE" in body, header


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
                 "/usr/lib/sysctl.d/90-vac-vacquery.conf", "/usr/lib/systemd/system/vac-ssmsend.service",
                 "/usr/lib/systemd/system/vac-ssmsend.timer", "/usr/lib/systemd/system/vac-apel-sync.service",
                 "/usr/lib/systemd/system/vac-apel-sync.timer", "/usr/lib/systemd/system-preset/85-vac.preset",
                 "/var/log/vacd", "/var/log/vac-ssmsend",
                 "/usr/share/man/man8/check-vacd.8", "/var/lib/vac/machines", "/var/lib/vac/apel-outgoing",
                 "/usr/share/vac/kickstart/viab-generate", "/usr/share/vac/puppet/vac/manifests/init.pp",
                 "/usr/share/vac/puppet/vac/manifests/config.pp", "/usr/share/vac/puppet/vac/types/options.pp",
                 "/usr/share/vac/puppet/vac/hiera.yaml", "/usr/share/vac/puppet/vac/data/common.yaml",
                 "/usr/share/vac/puppet/vac/REFERENCE.md"):
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
    for package in built_packages.rpms.values():
        assert [Path(line).name for line in rpm_query(package, "--licensefiles")] == ["LICENSE"]
    # The logs: owned, not shipped (vacd creates them), with the mode vacd gives them.
    modes = dict(line.split(" ", 1)[::-1] for line in rpm_query(
        built_packages.rpms["vac"], "--qf", "[%{FILEMODES:perms} %{FILENAMES}\n]"))
    assert modes["/var/log/vacd"] == "-rw-r--r--"
    ghosts = set(rpm_query(built_packages.rpms["vac"], "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"))
    assert any(line.endswith(" /var/log/vacd") and "g" in line.split()[0] for line in ghosts)


@pytest.mark.slow
@pytest.mark.allow_commands("make", "rpmbuild", "rpm")
def test_rpm_requires_the_daemon_dependencies_and_its_command_package(built_packages: BuiltPackages) -> None:
    requires = set(rpm_query(built_packages.rpms["vac"], "--requires"))
    # The Python modules at least at EL9's versions (constraints/el9.txt, issue 12 item 1).
    for dependency in ("libvirt-daemon-kvm", "python3-libvirt >= 10.0.0", "python3-pyroute2 >= 0.7.3",
                       "python3-dns >= 2.1.0", "python3-psutil >= 5.8.0", "python3-cryptography >= 36.0.1",
                       "python3-requests >= 2.25.1", "python3-prometheus_client >= 0.13.1",
                       "dnsmasq", "nftables", "python3 >= 3.9"):
        assert dependency in requires, dependency
    assert any(line.startswith("vac-command = ") for line in requires)
    assert "systemd >= 239" in requires
    assert not any("cronie" in line or "crontabs" in line for line in requires)
    scripts = "\n".join(rpm_query(built_packages.rpms["vac"], "--scripts"))
    # This host's rpm has no systemd-rpm-macros: the spec's fallbacks expanded.
    assert "systemctl --no-reload preset vacd.service vac-ssmsend.timer vac-apel-sync.timer" in scripts
    assert "systemctl try-restart vacd.service vac-ssmsend.timer vac-apel-sync.timer" in scripts
    assert "posttrans scriptlet" in scripts and "rm -f \"$cron_file\"" in scripts
    assert not re.search(r"^\s*%(systemd_|sysctl_apply|pyproject_)", scripts, re.MULTILINE)


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
        # A shell cannot trap a signal ignored when it started, and a suite run under nohup
        # ignores SIGHUP: give the script (and the stand-in it starts) the default, as init does.
        return subprocess.run(["sh", str(script), action], capture_output=True, text=True, timeout=180,
                              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))

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
