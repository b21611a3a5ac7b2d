"""vacd.qemuaccess: can the user QEMU runs as open the files vacd hands it? (issue 8 item 12)"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from vacd.config import Machinetype, Settings
from vacd.configparse import parse_config
from vacd.errors import VacError
from vacd.machinespec import machine_spec
from vacd.paths import Paths
from vacd.qemuaccess import (NotReadableByQemu, QemuIdentity, access_problem, check_readable_by_qemu,
                             config_access_warnings, parse_qemu_conf)
from vacd.slots import slot_identity
from vacd.records import MachineRecord

QEMU = QemuIdentity("libvirt-qemu", 64055, frozenset({64055, 107}))
ROOT, KVM = 0, 107
NAMES = {0: "root", 64055: "libvirt-qemu"}


def fake_stat(tree: dict[str, tuple[int, int, int]]):  # type: ignore[no-untyped-def]
    """A stat function over {path: (mode, uid, gid)}; directories are the entries without a dot."""

    def stat_function(path: str) -> os.stat_result:
        if path not in tree:
            raise FileNotFoundError(2, "No such file or directory", path)
        mode, uid, gid = tree[path]
        kind = stat.S_IFREG if "." in path.rsplit("/", 1)[-1] else stat.S_IFDIR
        return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    return stat_function


CLONE_IN_ROOT = {
    "/": (0o755, ROOT, ROOT),
    "/root": (0o700, ROOT, ROOT),
    "/root/vac": (0o755, ROOT, ROOT),
    "/root/vac/vmlinuz.img": (0o644, ROOT, ROOT),
}


def problem(tree: dict[str, tuple[int, int, int]], path: str, identity: QemuIdentity = QEMU) -> object:
    return access_problem(path, identity, fake_stat(tree), owner_name=lambda uid: NAMES.get(uid, str(uid)))


def test_clone_in_roots_home_names_the_directory_qemu_cannot_traverse() -> None:
    assert problem(CLONE_IN_ROOT, "/root/vac/vmlinuz.img") == "/root is mode 0700 owner root"


def test_error_names_path_user_and_directory() -> None:
    error = NotReadableByQemu("/root/vac/tests/guest/cache/vmlinuz", "libvirt-qemu", "/root is mode 0700 owner root")
    assert isinstance(error, VacError)
    assert str(error) == ("/root/vac/tests/guest/cache/vmlinuz: not readable by libvirt-qemu: "
                          "/root is mode 0700 owner root")


def test_world_traversable_directories_and_a_private_file_pass_with_dynamic_ownership() -> None:
    tree = dict(CLONE_IN_ROOT, **{"/root": (0o711, ROOT, ROOT), "/root/vac/vmlinuz.img": (0o600, ROOT, ROOT)})
    assert problem(tree, "/root/vac/vmlinuz.img") is None


def test_private_file_fails_when_libvirt_does_not_chown() -> None:
    tree = dict(CLONE_IN_ROOT, **{"/root": (0o711, ROOT, ROOT), "/root/vac/vmlinuz.img": (0o600, ROOT, ROOT)})
    assert problem(tree, "/root/vac/vmlinuz.img", dataclasses.replace(QEMU, dynamic_ownership=False)) == (
        "/root/vac/vmlinuz.img is mode 0600 owner root (dynamic_ownership is off)")


def test_group_and_owner_classes_are_read_as_the_kernel_does() -> None:
    group_only = dict(CLONE_IN_ROOT, **{"/root": (0o710, ROOT, KVM)})
    assert problem(group_only, "/root/vac/vmlinuz.img") is None
    # The owner class decides for the owner even where "other" would allow.
    owner_denied = dict(CLONE_IN_ROOT, **{"/root": (0o075, 64055, ROOT)})
    assert problem(owner_denied, "/root/vac/vmlinuz.img") == "/root is mode 0075 owner libvirt-qemu"
    # Likewise the group class for a member of the group.
    group_denied = dict(CLONE_IN_ROOT, **{"/root": (0o705, ROOT, KVM)})
    assert problem(group_denied, "/root/vac/vmlinuz.img") == "/root is mode 0705 owner root"


def test_qemu_running_as_root_opens_everything() -> None:
    assert problem(CLONE_IN_ROOT, "/root/vac/vmlinuz.img", QemuIdentity("root", 0, frozenset({0}))) is None


def test_missing_file_and_relative_path_are_reported() -> None:
    assert problem(CLONE_IN_ROOT, "/root/vac/gone.img", dataclasses.replace(QEMU, uid=0)) == (
        "/root/vac/gone.img: No such file or directory")
    assert problem(CLONE_IN_ROOT, "vmlinuz") == "vmlinuz is not an absolute path"


def test_directory_with_an_acl_is_not_judged_by_its_mode() -> None:
    reason = access_problem("/root/vac/vmlinuz.img", QEMU, fake_stat(CLONE_IN_ROOT),
                            has_acl=lambda path: path == "/root")
    assert reason is None


@pytest.mark.parametrize("text, expected", [
    ("", (None, True)),
    ('#user = "root"\n', (None, True)),
    ('user = "qemu"\ngroup = "qemu"\n', ("qemu", True)),
    ('user = "+0"  # as root\ndynamic_ownership = 0\n', ("+0", False)),
])
def test_qemu_conf_user_and_dynamic_ownership(text: str, expected: tuple[object, bool]) -> None:
    assert parse_qemu_conf(text) == expected


# --- against the real file system -------------------------------------------------------------

NOBODY = pwd.getpwnam("nobody")
NOBODY_IDENTITY = QemuIdentity("nobody", NOBODY.pw_uid, frozenset({NOBODY.pw_gid}), dynamic_ownership=False)


@pytest.fixture
def open_scratch() -> Iterator[Path]:
    """A 0755 directory in /tmp: pytest's tmp_path lies under /tmp/pytest-of-root (0700), which
    would block every path below it. Removed at teardown."""
    scratch = Path(tempfile.mkdtemp(prefix="vac-qemuaccess-", dir="/tmp"))
    try:
        scratch.chmod(0o755)
        yield scratch
    finally:
        shutil.rmtree(scratch)


def kernel_allows(path: Path, identity: QemuIdentity) -> bool:
    """Ask the kernel: can a process with `identity` open `path` for reading?"""
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child only
        try:
            os.setgroups(sorted(identity.gids))
            os.setgid(min(identity.gids))
            os.setuid(identity.uid)
            os.close(os.open(path, os.O_RDONLY))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_mode_700_directory_is_refused_as_the_kernel_refuses_it(open_scratch: Path) -> None:
    home = open_scratch / "home"
    (home / "vac").mkdir(parents=True)
    home.chmod(0o700)
    kernel = home / "vac" / "vmlinuz"
    kernel.write_bytes(b"kernel")
    kernel.chmod(0o644)
    with pytest.raises(NotReadableByQemu) as caught:
        check_readable_by_qemu(kernel, NOBODY_IDENTITY)
    assert str(caught.value) == f"{kernel}: not readable by nobody: {home} is mode 0700 owner root"
    assert not kernel_allows(kernel, NOBODY_IDENTITY)
    home.chmod(0o711)
    check_readable_by_qemu(kernel, NOBODY_IDENTITY)
    assert kernel_allows(kernel, NOBODY_IDENTITY)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("directory_mode", [0o700, 0o710, 0o711, 0o750, 0o755])
@pytest.mark.parametrize("file_mode", [0o600, 0o640, 0o644])
@pytest.mark.parametrize("group_member", [False, True])
def test_verdict_matches_the_kernel(open_scratch: Path, directory_mode: int, file_mode: int,
                                    group_member: bool) -> None:
    directory = open_scratch / "images"
    directory.mkdir()
    image = directory / "root.img"
    image.write_bytes(b"image")
    os.chown(directory, 0, 4242)
    os.chown(image, 0, 4242)
    directory.chmod(directory_mode)
    image.chmod(file_mode)
    identity = dataclasses.replace(NOBODY_IDENTITY, gids=NOBODY_IDENTITY.gids | ({4242} if group_member else set()))
    assert access_problem(str(image), identity) is None or not kernel_allows(image, identity)
    assert (access_problem(str(image), identity) is None) == kernel_allows(image, identity)
    symlink = open_scratch / "link.img"
    symlink.symlink_to(image)
    try:
        check_readable_by_qemu(symlink, identity)
        verdict = True
    except NotReadableByQemu:
        verdict = False
    assert verdict == kernel_allows(symlink, identity)


# --- machine_spec and --check-config ------------------------------------------------------------

def make(tmp_path: Path, libvirt_uri: str) -> tuple[Settings, Machinetype, MachineRecord]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    settings = Settings(vac_space="vac01.example.com", factory_name="f1.example.com", total_processors=1,
                        host_processors=1, gocdb_sitename="example.com", libvirt_uri=libvirt_uri)
    machinetype = Machinetype(name="atlas", machinegroup="atlas", machinetype_path=tmp_path, machine_model="vm-raw",
                              root_kernel=str(kernel))
    identity = slot_identity(settings.factory_name, 0)
    record = MachineRecord(name=identity.machine_name, ordinal=0, uuid="1b4e28ba-2fa1-11d2-883f-000000000000",
                           machinetype="atlas", machine_model="vm-raw", processors=1, created_time=1,
                           shutdown_time=2, ip_address=identity.ip_address, hs06=1.0, mb=128)
    return settings, machinetype, record


def refuse(path: Path) -> None:
    raise NotReadableByQemu(str(path), "libvirt-qemu", "/root is mode 0700 owner root")


def test_machine_spec_refuses_a_file_qemu_cannot_open_under_the_system_driver(tmp_path: Path) -> None:
    settings, machinetype, record = make(tmp_path, "qemu:///system")
    with pytest.raises(NotReadableByQemu, match="vmlinuz: not readable by libvirt-qemu: /root is mode 0700"):
        machine_spec(settings, machinetype, record, slot_identity(settings.factory_name, 0), tmp_path, None, refuse)


def test_machine_spec_does_not_check_for_the_test_driver(tmp_path: Path) -> None:
    settings, machinetype, record = make(tmp_path, "test:///default")
    spec = machine_spec(settings, machinetype, record, slot_identity(settings.factory_name, 0), tmp_path, None, refuse)
    assert spec.root_kernel == tmp_path / "vmlinuz"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a root-owned mode-700 directory")
def test_check_config_warns_for_each_file_qemu_cannot_open(open_scratch: Path) -> None:
    home = open_scratch / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    (home / "vmlinuz").write_bytes(b"kernel")
    (open_scratch / "initrd.gz").write_bytes(b"initrd")
    text = ("[settings]\nvac_space = vac01.example.org\n[machinetype atlas]\ntarget_share = 1\n"
            f"machine_model = vm-raw\nroot_kernel = {home}/vmlinuz\nroot_initrd = {open_scratch}/initrd.gz\n")
    config = parse_config([("/etc/vac.conf", text)], host_fqdn="f1.example.org", host_cpu_count=1,
                          paths=Paths(open_scratch))
    assert config_access_warnings(config, NOBODY_IDENTITY) == [
        f"/etc/vac.conf:6: [machinetype atlas] root_kernel: {home}/vmlinuz: not readable by nobody: "
        f"{home} is mode 0700 owner root"]
    test_driver = dataclasses.replace(config, settings=dataclasses.replace(config.settings, libvirt_uri="test:///default"))
    assert config_access_warnings(test_driver, NOBODY_IDENTITY) == []
