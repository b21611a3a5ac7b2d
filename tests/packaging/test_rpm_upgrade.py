"""The RPM installed over Vac 03 (issue 10 item 3): what rpm and the scriptlets do to the node.

The upgrade tests run the real thing: `rpm --root` of the RPMs vac.spec builds
(conftest.built_packages) over a fake root where a Vac 03 was installed from RPMs the test
builds itself. Those are named as Vac 03's were (vac and vac-command, version 03.01.04) and
hold what its packages held that matters here (behaviour reference §10.1, §10.2): the SysV
script /etc/rc.d/init.d/vacd (a stand-in that logs its calls and whose `status` says running
while /var/tmp/vac03-running exists), /usr/sbin/vacd, /var/lib/vac with VERSION, /etc/vac.d,
/etc/apel/vac-ssmsend-prod.cfg as a plain (not %config) file, and a %post that writes
/etc/cron.d/vac-ssmsend as Vac 03's did. It also lists /etc/vac.conf as a plain file, which
Vac 03's own package did not: the harder case, where rpm would erase the file with the old
package unless the new one owns it.

rpm runs the scriptlets chrooted in the fake root with /bin/sh, so the root holds a static
busybox as its shell and tools, /dev/null and nothing else: no init, no systemd, no Python.
Where a test needs to see what the scriptlets asked of systemctl, chkconfig or
`vacd --check-host`, it puts recording stand-ins in the root (/usr/bin/systemctl,
/sbin/chkconfig, and /usr/bin/python3, the interpreter of /usr/sbin/vacd, answering
--check-host as the test says). These tests need root (rpm chroots) and skip without it.

The pid-file clean-up of %pre, which needs live processes, and the SysV build's %posttrans
(this build is the systemd one) run the scriptlet with sh against a scratch root, as
test_spec.py runs the other scriptlets.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging.conftest import BuiltPackages
from tests.packaging.test_spec import SPEC, scratch_root, scriptlet

VAC03_VERSION = "03.01.04"
# Every version Vac's RPMs had, from its tags (0.9.0 … 03.00.01) and its VERSION file
# (03.01+pre00), and a 03.01 release.
VAC03_VERSIONS = ("0.9.0", "0.19.0", "00.20.01", "00.22+pre09", "01.00.01", "02.01+pre00", "03.00.01",
                  "03.01+pre00", "03.01.99")
STATE_FILE = "var/lib/rpm-state/vac/vac03"

VAC03_INIT_SCRIPT = """\
#!/bin/sh
# chkconfig: 345 56 02
# Stands in for Vac 03's /etc/rc.d/init.d/vacd, whose stop kills vacd-factory,
# vacd-responder, vacd-metadata and vacd-mjf; it logs each call.
echo "$1" >> /var/tmp/vac03-init-calls
case "$1" in
    status) [ -e /var/tmp/vac03-running ] ;;
    stop) rm -f /var/tmp/vac03-running ;;
esac
"""

VAC03_SPEC = f"""\
Name:       vac
Version:    {VAC03_VERSION}
Release:    1
BuildArch:  noarch
Summary:    Vac 03 as its packages installed it, for the upgrade tests
License:    BSD
Source0:    vacd.init

%description
Vac 03 as its packages installed it, for the upgrade tests.

%package -n vac-command
Summary:    Vac 03's vac-command, for the upgrade tests

%description -n vac-command
Vac 03's vac-command, for the upgrade tests.

%install
mkdir -p %{{buildroot}}/etc/rc.d/init.d %{{buildroot}}/etc/vac.d %{{buildroot}}/etc/apel %{{buildroot}}/usr/sbin
for directory in tmp imagecache machinetypes pipescache apel-archive apel-outgoing slots finishes machines; do
    mkdir -p %{{buildroot}}/var/lib/vac/$directory
done
install -m 0755 %{{SOURCE0}} %{{buildroot}}/etc/rc.d/init.d/vacd
echo 'VERSION={VAC03_VERSION}' > %{{buildroot}}/var/lib/vac/VERSION
echo '# as Vac 03 shipped it' > %{{buildroot}}/etc/apel/vac-ssmsend-prod.cfg
echo '# as Vac 03 shipped it' > %{{buildroot}}/etc/vac.conf
printf '#!/bin/sh\\necho Vac 03\\n' > %{{buildroot}}/usr/sbin/vacd
chmod 0755 %{{buildroot}}/usr/sbin/vacd

%post
echo "$(shuf -i 0-59 -n 1) * * * * root /usr/bin/ssmsend -c /etc/apel/vac-ssmsend-prod.cfg >>/var/log/vac-ssmsend 2>&1" > /etc/cron.d/vac-ssmsend
echo '0 12 * * * root /usr/sbin/vac apel-sync >>/var/log/vac-ssmsend 2>&1' >> /etc/cron.d/vac-ssmsend

%preun
if [ "$1" = 0 ]; then
    /etc/rc.d/init.d/vacd stop
    rm -f /etc/cron.d/vac-ssmsend
fi

%files
/etc/rc.d/init.d/vacd
/etc/apel/vac-ssmsend-prod.cfg
/etc/vac.conf
/usr/sbin/vacd
/var/lib/vac
/etc/vac.d

%files -n vac-command
/var/lib/vac/VERSION
/etc/vac.d
"""

# The stand-in interpreter of /usr/sbin/vacd: `vacd --check-host` exits with the status in
# /var/tmp/check-host-status after printing /var/tmp/check-host-output.
FAKE_PYTHON = """\
#!/bin/sh
echo "$*" >> /var/tmp/python3-calls
[ "$2" = --check-host ] || exit 99
cat /var/tmp/check-host-output
exit "$(cat /var/tmp/check-host-status)"
"""
RECORDER = '#!/bin/sh\necho "$*" >> /var/tmp/{name}-calls\n'
ADMIN_VAC_CONF = "[settings]\nspace = vac01.example.org\n# changed by the admin\n"
MACHINE_DIR = "var/lib/vac/machines/1764000000_lhcb_f1-00.example.org"


def rpm_version_compare(left: str, right: str) -> int:
    """rpm's own comparison of two versions: -1, 0 or 1."""
    completed = subprocess.run(["rpm", "--eval", f"%{{lua: print(rpm.vercmp('{left}', '{right}'))}}"],
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    return int(completed.stdout.strip())


def spec_version() -> str:
    match = re.search(r"^Version:\s+(\S+)$", SPEC.read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None
    return match.group(1)


def spec_version_release() -> str:
    match = re.search(r"^Release:\s+(\d+)%\{\?dist\}$", SPEC.read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None
    return f"{spec_version()}-{match.group(1)}"


@pytest.mark.allow_commands("rpm")
@pytest.mark.parametrize("vac03_version", VAC03_VERSIONS)
def test_every_vac03_version_sorts_below_this_package_and_its_conflict(vac03_version: str) -> None:
    if shutil.which("rpm") is None:
        pytest.skip("rpm is not installed (apt-get install rpm)")
    # Same names, a higher version, no epoch on either side: rpm -U and dnf upgrade.
    assert rpm_version_compare(vac03_version, spec_version()) == -1
    # vac-command's "Conflicts: vac < 4" hits every Vac 03 and no vac of this spec.
    assert rpm_version_compare(vac03_version, "4") == -1
    assert rpm_version_compare(spec_version(), "4") == 1


def test_vac_command_conflicts_with_vac03s_vac() -> None:
    text = SPEC.read_text(encoding="utf-8")
    command = text[text.index("%package command"):text.index("%description command")]
    assert re.search(r"^Conflicts:\s+vac < 4$", command, re.MULTILINE)
    # No Obsoletes: the names are Vac 03's own, so this is an upgrade, not a replacement.
    assert not re.search(r"^Obsoletes:", text, re.MULTILINE)


# ------------------------------------------------------------------ rpm --root upgrades

@dataclass(frozen=True)
class FakeRoot:
    """A directory rpm installs into and chroots to for the scriptlets."""
    path: Path

    def rpm(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rpm", "--root", str(self.path), "--dbpath", "/var/lib/rpm", *arguments],
                              capture_output=True, text=True, timeout=600)

    def __truediv__(self, relative: str) -> Path:
        return self.path / relative

    def installed(self) -> list[str]:
        completed = self.rpm("-qa", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\n")
        assert completed.returncode == 0, completed.stderr
        return sorted(completed.stdout.split())

    def calls(self, name: str) -> list[str]:
        log = self / f"var/tmp/{name}-calls"
        return log.read_text().splitlines() if log.exists() else []

    def add_recorders(self, check_host_status: int, check_host_output: str) -> None:
        """systemctl and chkconfig that log their arguments, and vacd's Python answering --check-host."""
        for relative, text in (("usr/bin/systemctl", RECORDER.format(name="systemctl")),
                               ("sbin/chkconfig", RECORDER.format(name="chkconfig")),
                               ("usr/bin/python3", FAKE_PYTHON)):
            (self / relative).parent.mkdir(parents=True, exist_ok=True)
            (self / relative).write_text(text)
            (self / relative).chmod(0o755)
        (self / "var/tmp/check-host-status").write_text(f"{check_host_status}\n")
        (self / "var/tmp/check-host-output").write_text(check_host_output)


def rpm_output(completed: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines rpm and the scriptlets printed, without Debian rpm's warning about alien."""
    return [line for line in (completed.stdout + completed.stderr).splitlines()
            if "Alien" not in line and "assuming you know what you are doing" not in line]


@pytest.fixture
def fake_root(tmp_path: Path) -> FakeRoot:
    for tool in ("rpm", "rpmbuild", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install rpm busybox-static)")
    if os.geteuid() != 0:
        pytest.skip("rpm --root runs the scriptlets chrooted, which needs root")
    root = FakeRoot(tmp_path / "root")
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    busybox = Path(shutil.which("busybox") or "")
    shutil.copy2(busybox, bin_dir / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=60).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    # What every EL system has and the scriptlets rely on.
    for directory in ("dev", "tmp", "var/tmp", "var/log", "etc/cron.d"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot make /dev/null in the fake root (no CAP_MKNOD)")
    os.chmod(root / "dev/null", 0o666)
    probe = subprocess.run(["chroot", str(root.path), "/bin/sh", "-c", "echo ok"], capture_output=True, text=True,
                           timeout=60)
    if probe.stdout.strip() != "ok":
        pytest.skip(f"busybox does not run chrooted (is it static? apt-get install busybox-static): {probe.stderr}")
    completed = root.rpm("--initdb")
    assert completed.returncode == 0, completed.stderr
    return root


@pytest.fixture(scope="session")
def vac03_rpms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Vac 03's vac and vac-command, built from VAC03_SPEC."""
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed (apt-get install rpm)")
    work = tmp_path_factory.mktemp("vac03")
    (work / "vacd.init").write_text(VAC03_INIT_SCRIPT)
    (work / "vac03.spec").write_text(VAC03_SPEC)
    completed = subprocess.run(["rpmbuild", "-bb", "--define", f"_topdir {work / 'top'}",
                                "--define", f"_sourcedir {work}", str(work / "vac03.spec")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    rpms = sorted((work / "top/RPMS/noarch").glob("*.rpm"))
    assert [path.name for path in rpms] == [f"vac-{VAC03_VERSION}-1.noarch.rpm",
                                            f"vac-command-{VAC03_VERSION}-1.noarch.rpm"]
    return rpms


def install_vac03(root: FakeRoot, rpms: list[Path], running: bool, enabled: bool) -> None:
    """Vac 03 installed, configured by the admin, with a machine on disk; running and enabled as asked."""
    completed = root.rpm("-i", "--nodeps", *map(str, rpms))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (root / "etc/cron.d/vac-ssmsend").is_file()
    (root / "etc/vac.conf").write_text(ADMIN_VAC_CONF)
    (root / "etc/vac.d/site.conf").write_text("[machinetype lhcb]\n")
    (root / "etc/apel/vac-ssmsend-prod.cfg").write_text("# the site's broker settings\n")
    (root / MACHINE_DIR / "jobfeatures").mkdir(parents=True)
    (root / MACHINE_DIR / "started").write_text("1764000000\n")
    (root / MACHINE_DIR / "jobfeatures/job_id").write_text("f1-00.example.org:1764000000\n")
    (root / "var/lib/vac/slots/f1-00.example.org").write_text("1764000000 lhcb vm-raw\n")
    if running:
        (root / "var/tmp/vac03-running").touch()
    if enabled:
        # What `chkconfig vacd on` leaves for its "345 56 02".
        for level in range(7):
            links = root / f"etc/rc.d/rc{level}.d"
            links.mkdir(parents=True, exist_ok=True)
            name = "S56vacd" if level in (3, 4, 5) else "K02vacd"
            (links / name).symlink_to("../init.d/vacd")


def upgrade(root: FakeRoot, built_packages: BuiltPackages, *options: str) -> list[str]:
    completed = root.rpm("-U", "--nodeps", *options, str(built_packages.rpms["vac"]),
                         str(built_packages.rpms["vac-command"]))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return rpm_output(completed)


UPGRADE = pytest.mark.allow_commands("make", "rpmbuild", "rpm", "chroot", "busybox")


@pytest.mark.slow
@UPGRADE
def test_upgrade_over_vac03_replaces_its_packages_and_keeps_config_and_state(
        fake_root: FakeRoot, vac03_rpms: list[Path], built_packages: BuiltPackages) -> None:
    install_vac03(fake_root, vac03_rpms, running=True, enabled=True)
    output = upgrade(fake_root, built_packages)
    assert fake_root.installed() == [f"vac-{spec_version_release()}", f"vac-command-{spec_version_release()}"]
    # The admin's configuration, untouched; Vac 03's plain file with the site's settings is
    # kept, and this package's template put beside it.
    assert (fake_root / "etc/vac.conf").read_text() == ADMIN_VAC_CONF
    assert (fake_root / "etc/vac.d/site.conf").read_text() == "[machinetype lhcb]\n"
    assert (fake_root / "etc/apel/vac-ssmsend-prod.cfg").read_text() == "# the site's broker settings\n"
    assert (fake_root / "etc/apel/vac-ssmsend-prod.cfg.rpmnew").is_file()
    # Vac 03's machine and slot, for vacd to adopt.
    assert (fake_root / MACHINE_DIR / "started").read_text() == "1764000000\n"
    assert (fake_root / MACHINE_DIR / "jobfeatures/job_id").is_file()
    assert (fake_root / "var/lib/vac/slots/f1-00.example.org").read_text() == "1764000000 lhcb vm-raw\n"
    assert (fake_root / "var/lib/vac/VERSION").read_text() == "VERSION=4.0.0a1\n"
    assert (fake_root / "usr/sbin/vacd").read_text().startswith("#!/usr/bin/python3\n")
    # %pre asked Vac 03's script whether it ran, stopped it and took it out of the boot
    # sequence (with no chkconfig here, by removing its links); the script went with Vac 03.
    assert fake_root.calls("vac03-init") == ["status", "stop"]
    assert not (fake_root / "etc/rc.d/init.d/vacd").exists()
    assert sorted(path.name for path in (fake_root / "etc/rc.d").glob("rc?.d/*")) == []
    assert f"vac: Vac {VAC03_VERSION} found: stopping it and taking it out of the boot sequence; its machines " \
           "keep running, and vacd adopts them" in output
    # The cron file Vac 03 generated gives way to the timers.
    assert not (fake_root / "etc/cron.d/vac-ssmsend").exists()
    # No Python in this root: the check cannot pass, so vacd is not started, and rpm says why.
    check = output.index("vac: vacd is not started: vacd --check-host failed (exit status 127):")
    assert "/usr/sbin/vacd" in output[check + 1] and output[check + 1].startswith("    ")
    assert output[check + 2] == (f"vac: Vac {VAC03_VERSION} stays stopped and disabled, and its machines keep "
                                 "running; fix what is said above, then: vacd --check-host && "
                                 "systemctl enable --now vacd")
    assert not (fake_root / STATE_FILE).exists()
    # Erasing vac later leaves the configuration too.
    erased = fake_root.rpm("-e", "vac", "vac-command")
    assert erased.returncode == 0, erased.stdout + erased.stderr
    assert (fake_root / "etc/vac.conf").read_text() == ADMIN_VAC_CONF
    assert (fake_root / "etc/vac.d/site.conf").is_file()


@pytest.mark.slow
@UPGRADE
def test_pre_records_what_vac03_was_doing_for_posttrans(
        fake_root: FakeRoot, vac03_rpms: list[Path], built_packages: BuiltPackages) -> None:
    install_vac03(fake_root, vac03_rpms, running=True, enabled=True)
    upgrade(fake_root, built_packages, "--noposttrans")
    assert (fake_root / STATE_FILE).read_text().splitlines() == [
        f"version={VAC03_VERSION}", "was_enabled=yes", "was_running=yes"]


@pytest.mark.slow
@UPGRADE
def test_posttrans_starts_and_enables_vacd_as_vac03_was_once_check_host_passes(
        fake_root: FakeRoot, vac03_rpms: list[Path], built_packages: BuiltPackages) -> None:
    install_vac03(fake_root, vac03_rpms, running=True, enabled=True)
    fake_root.add_recorders(check_host_status=0, check_host_output="host ready for vacd\n")
    (fake_root / "run/systemd/system").mkdir(parents=True)
    output = upgrade(fake_root, built_packages)
    assert fake_root.calls("chkconfig") == ["--del vacd"]
    assert fake_root.calls("python3") == ["/usr/sbin/vacd --check-host"]
    # daemon-reload first: systemd still has the vacd.service it generated from Vac 03's script.
    # No preset: on an upgrade %systemd_post leaves the units as they are.
    assert fake_root.calls("systemctl") == ["daemon-reload", "enable --now vac-ssmsend.timer vac-apel-sync.timer",
                                            "enable vacd.service", "start --no-block vacd.service"]
    assert (f"vac: vacd --check-host passed; vacd is enabled at boot; vacd is started (systemctl status vacd), "
            f"in place of Vac {VAC03_VERSION}") in output
    assert not any("not started" in line for line in output)


@pytest.mark.slow
@UPGRADE
def test_posttrans_leaves_vacd_stopped_and_says_why_when_check_host_fails(
        fake_root: FakeRoot, vac03_rpms: list[Path], built_packages: BuiltPackages) -> None:
    install_vac03(fake_root, vac03_rpms, running=True, enabled=True)
    fake_root.add_recorders(check_host_status=1, check_host_output="UDP port 995 is in use (pid 4242 vacd-responder)\n")
    (fake_root / "run/systemd/system").mkdir(parents=True)
    output = upgrade(fake_root, built_packages)
    assert fake_root.calls("systemctl") == ["daemon-reload", "enable --now vac-ssmsend.timer vac-apel-sync.timer"]
    check = output.index("vac: vacd is not started: vacd --check-host failed (exit status 1):")
    assert output[check + 1] == "    UDP port 995 is in use (pid 4242 vacd-responder)"
    assert output[check + 2].endswith("then: vacd --check-host && systemctl enable --now vacd")


@pytest.mark.slow
@UPGRADE
def test_upgrade_over_a_stopped_and_disabled_vac03_leaves_vacd_off(
        fake_root: FakeRoot, vac03_rpms: list[Path], built_packages: BuiltPackages) -> None:
    install_vac03(fake_root, vac03_rpms, running=False, enabled=False)
    (fake_root / "etc/cron.d/vac-ssmsend").unlink()
    fake_root.add_recorders(check_host_status=0, check_host_output="")
    output = upgrade(fake_root, built_packages)
    assert fake_root.calls("vac03-init") == ["status", "stop"]
    assert fake_root.calls("python3") == []
    assert fake_root.calls("systemctl") == ["daemon-reload"]
    assert (f"vac: Vac {VAC03_VERSION} was neither running nor enabled, so vacd is left stopped and disabled; "
            "to start it: vacd --check-host && systemctl enable --now vacd") in output
    assert ("vac: there was no /etc/cron.d/vac-ssmsend, so the APEL timers that replace it are not enabled: to "
            "send accounting records, systemctl enable --now vac-ssmsend.timer vac-apel-sync.timer") in output


@pytest.mark.slow
@UPGRADE
def test_fresh_install_says_nothing_of_vac03_and_keeps_no_state(
        fake_root: FakeRoot, built_packages: BuiltPackages) -> None:
    completed = fake_root.rpm("-i", "--nodeps", str(built_packages.rpms["vac"]),
                              str(built_packages.rpms["vac-command"]))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert rpm_output(completed) == []
    assert not (fake_root / "var/lib/rpm-state").exists()
    assert not (fake_root / "etc/vac.conf").exists()


# ------------------------------------------------------------------ %pre's pid files

@pytest.fixture
def vac03_daemon(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process named vacd-responder, as Vac 03's responder names itself (§1.2)."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    named = tmp_path / "vacd-responder"
    named.symlink_to(sleep)
    process = subprocess.Popen([str(named), "600"])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.mark.allow_commands("rpmspec", "sh", "sleep")
def test_pre_stops_a_vac03_daemon_its_init_script_left_running(
        tmp_path: Path, vac03_daemon: subprocess.Popen[bytes]) -> None:
    root = scratch_root(tmp_path)
    state_dir = root.var / "lib/vac"
    state_dir.mkdir(parents=True)
    (state_dir / "VERSION").write_text(f"VERSION={VAC03_VERSION}\n")
    (state_dir / "responder.pid").write_text(f"{vac03_daemon.pid}\n")
    # A pid file naming a process of another name (a reused pid) is left alone.
    bystander = subprocess.Popen([shutil.which("sleep") or "sleep", "600"])
    try:
        (state_dir / "metadata.pid").write_text(f"{bystander.pid}\n")
        completed = subprocess.run(["sh", "-e", "-c", scriptlet("%pre", root), "scriptlet", "2"],
                                   capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr
        deadline = time.monotonic() + 30
        while vac03_daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert vac03_daemon.returncode == -signal.SIGTERM
        assert bystander.poll() is None
        assert f"vac: stopped vacd-responder (pid {vac03_daemon.pid}), which was still running" in \
            completed.stdout.splitlines()
        assert (root.var / "lib/rpm-state/vac/vac03").read_text().splitlines() == [
            f"version={VAC03_VERSION}", "was_running=yes"]
    finally:
        bystander.kill()
        bystander.wait(timeout=30)


@pytest.mark.allow_commands("rpmspec", "sh")
def test_pre_on_a_host_without_vac03_does_nothing(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    (root.var / "lib/vac").mkdir(parents=True)
    (root.var / "lib/vac/VERSION").write_text("VERSION=4.0.0a1\n")
    completed = subprocess.run(["sh", "-e", "-c", scriptlet("%pre", root), "scriptlet", "2"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "" and completed.stderr == ""
    assert not (root.var / "lib/rpm-state").exists()


# ------------------------------------------------------------------ the SysV build's %posttrans

@pytest.mark.allow_commands("rpmspec", "sh")
@pytest.mark.parametrize("check_host_status", [0, 3])
def test_sysv_posttrans_adds_and_starts_vacd_as_vac03_was_only_once_check_host_passes(
        tmp_path: Path, check_host_status: int) -> None:
    root = scratch_root(tmp_path)
    state = root.var / "lib/rpm-state/vac/vac03"
    state.parent.mkdir(parents=True)
    state.write_text(f"version={VAC03_VERSION}\nwas_enabled=yes\nwas_running=yes\n")
    calls = tmp_path / "calls"
    stand_ins = {}
    for command, text in (("vacd", f'#!/bin/sh\necho "vacd $*" >> {calls}\necho "port 995 in use"\n'
                                   f"exit {check_host_status}\n"),
                          ("chkconfig", f'#!/bin/sh\necho "chkconfig $*" >> {calls}\n'),
                          ("service", f'#!/bin/sh\necho "service $*" >> {calls}\n')):
        stand_ins[command] = tmp_path / command
        stand_ins[command].write_text(text)
        stand_ins[command].chmod(0o755)
    body = (scriptlet("%posttrans", root, with_systemd=False)
            .replace("/usr/sbin/vacd --check-host", f"{stand_ins['vacd']} --check-host")
            .replace("/sbin/chkconfig", str(stand_ins["chkconfig"]))
            .replace("/sbin/service", str(stand_ins["service"])))
    completed = subprocess.run(["sh", "-e", "-c", body, "scriptlet", "0"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert not state.exists()
    if check_host_status == 0:
        assert calls.read_text().splitlines() == ["vacd --check-host", "chkconfig --add vacd", "service vacd start"]
        assert completed.stdout == (f"vac: vacd --check-host passed; vacd is enabled at boot; vacd is started "
                                    f"(service vacd status), in place of Vac {VAC03_VERSION}\n")
    else:
        assert calls.read_text().splitlines() == ["vacd --check-host"]
        assert completed.stderr.splitlines() == [
            "vac: vacd is not started: vacd --check-host failed (exit status 3):",
            "    port 995 in use",
            f"vac: Vac {VAC03_VERSION} stays stopped and disabled, and its machines keep running; fix what is said "
            "above, then: vacd --check-host && chkconfig --add vacd && service vacd start"]
