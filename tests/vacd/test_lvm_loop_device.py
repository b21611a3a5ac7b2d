"""vacd.lvm against real lvm2: a volume group on a loop device each test makes and removes.

What runs depends on the kernel (issue 13 item 3), and each test says which it needs:
- everywhere (as root): the loop device, `pvcreate`, `vgcreate`; vacd finding the group, and
  refusing a missing one by name (`vacd` itself, `--check-config`, `--check-host`); the
  group, its physical volume and the loop device gone afterwards.
- only where the kernel has device-mapper (/dev/mapper/control): logical volumes made,
  replaced, attached to a domain (libvirt's test driver) and removed. Elsewhere they skip,
  saying so, and `test_lvcreate_without_device_mapper_fails_plainly` runs instead: lvcreate
  is attempted and its failure names the group and the missing device-mapper.
Nothing is left behind: clean-up is in `finally`, by the names and devices the test made.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from vacd.commands import run_command
from vacd.errors import CommandFailed
from vacd.lvm import (
    DEVICE_MAPPER_CONTROL,
    LogicalVolumes,
    LvmError,
    VolumeGroupMissing,
    VolumeRequest,
    has_device_mapper,
    run_lvm_command,
)
from vacd.paths import Paths
from vacd.slots import slot_identity

pytestmark = [
    pytest.mark.allow_commands("losetup", "pvcreate", "vgcreate", "vgremove", "pvremove", "vgs", "lvs", "lvcreate",
                               "lvremove", "lvmdevices", sys.executable),
    pytest.mark.skipif(os.geteuid() != 0, reason="losetup, pvcreate and vgcreate need root"),
]

REPOSITORY = Path(__file__).resolve().parents[2]
FACTORY = "f1.example.com"
# Room for a few small volumes: lvm2 takes one 4 MiB extent of metadata, the rest is 63 extents.
PHYSICAL_VOLUME_BYTES = 256 * 1024 * 1024
LVM_DEVICES_FILE = Path("/etc/lvm/devices/system.devices")
needs_device_mapper = pytest.mark.skipif(
    not has_device_mapper(),
    reason=f"this kernel has no device-mapper ({DEVICE_MAPPER_CONTROL} does not open): lvcreate cannot activate a "
           "logical volume here, so the tests that make one run only where it exists")


@dataclass(frozen=True)
class LoopVolumeGroup:
    name: str
    loop_device: str


@contextlib.contextmanager
def loop_volume_group(directory: Path) -> Iterator[LoopVolumeGroup]:
    """A volume group of its own on a loop device over a sparse file in `directory`, removed afterwards."""
    image = directory / "physical-volume.img"
    with open(image, "xb") as image_file:
        image_file.truncate(PHYSICAL_VOLUME_BYTES)
    name = f"vactest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    loop_device = None
    physical_volume_made = volume_group_made = False
    try:
        loop_device = run_command(["losetup", "--find", "--show", "--", str(image)]).strip()
        run_lvm_command(["pvcreate", "--yes", "--", loop_device])
        physical_volume_made = True
        run_lvm_command(["vgcreate", "--yes", "--", name, loop_device])
        volume_group_made = True
        yield LoopVolumeGroup(name, loop_device)
    finally:
        failures = []
        # Each step by the name or device made above, each tried whatever the others did.
        steps = []
        if volume_group_made:
            steps.append(["vgremove", "--force", "--yes", "--", name])  # with any volume left in it
        if physical_volume_made and loop_device is not None:
            steps.append(["pvremove", "--yes", "--", loop_device])
        for argv in steps:
            try:
                run_lvm_command(argv)
            except CommandFailed as error:
                failures.append(str(error))
        if loop_device is not None and loop_device in _devices_file_text():
            # Where lvm2 keeps a devices file (EL9's default), pvcreate added the loop device to it.
            forget = ["lvmdevices", "--yes", "--deldev", loop_device]
            try:
                run_lvm_command(forget)
            except CommandFailed as error:
                failures.append(str(error))
        if loop_device is not None:
            try:
                run_command(["losetup", "--detach", loop_device])
            except CommandFailed as error:
                failures.append(str(error))
        if failures:
            raise AssertionError("clean-up failed: " + "; ".join(failures))


def _devices_file_text() -> str:
    try:
        return LVM_DEVICES_FILE.read_text()
    except OSError:
        return ""


@pytest.fixture
def volume_group(tmp_path: Path) -> Iterator[LoopVolumeGroup]:
    with loop_volume_group(tmp_path) as made:
        yield made


def loop_devices() -> str:
    return run_command(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])


def vacd(prefix: Path, settings: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    config_file = Paths(prefix).config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(settings)
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), *arguments],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=120)


def settings_text(volume_group_name: str) -> str:
    return f"""[settings]
vac_space = vac01.example.com
factory_name = {FACTORY}
host_processors = 4
libvirt_uri = test:///default
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
metrics_address = 127.0.0.1:0
volume_group = {volume_group_name}
"""


def volume_request(volume_group_name: str, ordinal: int = 3, gb_per_processor: int = 0) -> VolumeRequest:
    # No per-processor size: a 1-processor machine of 4 gets a quarter of the group.
    return VolumeRequest(volume_group_name, slot_identity(FACTORY, ordinal).machine_name, 1, 4,
                         gb_per_processor, FACTORY)


# --- what runs on any kernel -----------------------------------------------------------------


def test_the_loop_volume_group_is_gone_afterwards(tmp_path: Path) -> None:
    with loop_volume_group(tmp_path) as made:
        assert made.loop_device in loop_devices()
    with pytest.raises(VolumeGroupMissing, match=made.name):
        LogicalVolumes().volume_group(made.name)
    assert str(tmp_path) not in loop_devices()


def test_vacd_finds_the_volume_group_with_its_size_and_extents(volume_group: LoopVolumeGroup) -> None:
    found = LogicalVolumes().volume_group(volume_group.name)
    assert found.name == volume_group.name
    assert found.extent_bytes == 4 * 1024 * 1024
    assert 0 < found.size_bytes <= PHYSICAL_VOLUME_BYTES and found.free_bytes == found.size_bytes
    assert LogicalVolumes().volumes(volume_group.name) == ()


def test_a_missing_volume_group_is_refused_by_name(volume_group: LoopVolumeGroup) -> None:
    missing = volume_group.name + "_gone"
    with pytest.raises(VolumeGroupMissing, match=rf"volume_group {missing}: no such LVM volume group"):
        LogicalVolumes().volume_group(missing)


def test_check_config_accepts_the_group_and_refuses_a_missing_one_by_name(
        tmp_path: Path, volume_group: LoopVolumeGroup) -> None:
    present = vacd(tmp_path / "present", settings_text(volume_group.name), "--check-config")
    assert present.returncode == 0, present.stderr
    assert f"volume_group = {volume_group.name}" in present.stdout
    missing = volume_group.name + "_gone"
    absent = vacd(tmp_path / "absent", settings_text(missing), "--check-config")
    assert absent.returncode == 1
    assert f"volume_group {missing}: no such LVM volume group on this host" in absent.stderr


def test_check_host_says_the_volume_group_is_missing(tmp_path: Path, volume_group: LoopVolumeGroup) -> None:
    missing = volume_group.name + "_gone"
    result = vacd(tmp_path, settings_text(missing), "--check-host")
    assert result.returncode == 1
    assert f"problem: volume_group {missing}: no such LVM volume group on this host" in result.stdout


def test_vacd_refuses_to_start_naming_a_missing_volume_group(tmp_path: Path, volume_group: LoopVolumeGroup) -> None:
    missing = volume_group.name + "_gone"
    result = vacd(tmp_path, settings_text(missing), "--stderr")
    assert result.returncode == 1
    assert f"volume_group {missing}: no such LVM volume group on this host" in result.stderr
    assert "stopped before touching the guest network" in result.stderr


@pytest.mark.skipif(has_device_mapper(), reason="this kernel has device-mapper: lvcreate succeeds here "
                                                "(test_a_machines_volume_is_made_replaced_and_removed)")
def test_lvcreate_without_device_mapper_fails_plainly(volume_group: LoopVolumeGroup) -> None:
    request = volume_request(volume_group.name)
    # lvcreate makes the control node (and /dev/mapper) when they are missing; what it made goes.
    made_by_lvcreate = [path for path in (DEVICE_MAPPER_CONTROL.parent, DEVICE_MAPPER_CONTROL) if not path.exists()]
    try:
        with pytest.raises(LvmError) as caught:
            LogicalVolumes().create(request)
    finally:
        for path in reversed(made_by_lvcreate):
            if path.is_dir():
                path.rmdir()
            elif path.exists():
                path.unlink()
    message = str(caught.value)
    assert f"logical volume {volume_group.name}/{request.name}: lvcreate failed" in message
    assert f"this kernel has no device-mapper: {DEVICE_MAPPER_CONTROL} does not open" in message
    # The argv vacd ran, with the size it worked out: a quarter of 63 extents is 15 (15 x 4 MiB).
    assert f"lvcreate --yes --name {request.name} -L {15 * 4 * 1024 * 1024}B -- {volume_group.name}" in message
    assert LogicalVolumes().volumes(volume_group.name) == ()


# --- what needs device-mapper ----------------------------------------------------------------


@needs_device_mapper
def test_a_machines_volume_is_made_replaced_and_removed(volume_group: LoopVolumeGroup) -> None:
    volumes = LogicalVolumes()
    request = volume_request(volume_group.name)
    device = volumes.create(request)
    assert device == Path(f"/dev/{volume_group.name}/{request.name}") and device.is_block_device()
    (made,) = volumes.volumes(volume_group.name)
    assert (made.name, made.size_bytes) == (request.name, 15 * 4 * 1024 * 1024)
    with open(device, "wb") as disk:
        disk.write(b"last machine's data")
    # The slot's next machine gets a new volume, not the last one's (§1.11).
    volumes.create(request)
    assert len(volumes.volumes(volume_group.name)) == 1
    with open(device, "rb") as disk:
        assert disk.read(19) != b"last machine's data"
    assert volumes.remove(volume_group.name, request.name) is True
    assert volumes.volumes(volume_group.name) == ()


@needs_device_mapper
def test_leftover_machine_volumes_are_removed_and_others_kept(volume_group: LoopVolumeGroup) -> None:
    volumes = LogicalVolumes()
    for ordinal in (0, 1):
        volumes.create(volume_request(volume_group.name, ordinal, gb_per_processor=0))
    run_lvm_command(["lvcreate", "--yes", "--name", "admins", "-L", "4M", "--", volume_group.name])
    live = frozenset({slot_identity(FACTORY, 1).machine_name})
    assert volumes.remove_leftovers(volume_group.name, FACTORY, live) == (slot_identity(FACTORY, 0).machine_name,)
    assert sorted(volume.name for volume in volumes.volumes(volume_group.name)) == sorted(live | {"admins"})


@needs_device_mapper
@pytest.mark.libvirt_test_driver
def test_a_domain_gets_its_volume_as_a_block_disk_and_destroy_removes_it(
        tmp_path: Path, volume_group: LoopVolumeGroup) -> None:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name="vac_169.254.0.0",
                             tmp_dir=tmp_path / "tmp")
    identity = slot_identity(FACTORY, 3)
    spec = MachineSpec(
        name=identity.machine_name, uuid=str(uuid.uuid4()), ordinal=3, mac_address=identity.mac_address,
        ip_address=identity.ip_address, vnc_port=identity.vnc_port, processors=1, memory_mib=128,
        machine_dir=tmp_path / "machine", root_kernel=Path("/guest/vmlinuz"), kernel_command_line="console=ttyS0",
        logical_volume=volume_request(volume_group.name),
    )
    try:
        backend.create(spec)
        assert [volume.name for volume in LogicalVolumes().volumes(volume_group.name)] == [spec.name]
        assert [machine.name for machine in backend.list_machines()] == [spec.name]
        backend.destroy(spec.name)
        assert LogicalVolumes().volumes(volume_group.name) == ()
    finally:
        backend.close()


# --- a running vacd (libvirt's test driver: no guest, no guest API) -----------------------------

# A real process makes its first creations within a few passes; the limit only stops a hung test.
PROCESS_DEADLINE_SECONDS = 60.0


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + PROCESS_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"vacd did not {what} within {PROCESS_DEADLINE_SECONDS:.0f}s")


def test_a_running_vacd_gives_a_machine_its_volume_or_says_plainly_why_it_cannot(
        tmp_path: Path, volume_group: LoopVolumeGroup) -> None:
    prefix = tmp_path / "prefix"
    paths = Paths(prefix)
    kernel = paths.state_dir / "machinetypes" / "m" / "files" / "vmlinuz"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"a kernel the test driver never boots")
    config_file = paths.config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    # One slot of one processor: a quarter of nothing; 10 GB would not fit, so share the group.
    config_file.write_text(settings_text(volume_group.name).replace("host_processors = 4", "host_processors = 1")
                           # The shared test machine's load must not hold the creation back.
                           + "cycle_seconds = 1\noverload_per_processor = 1000\n[machinetype m]\nmachine_model = vm-raw\ntarget_share = 1\n"
                           "root_kernel = vmlinuz\n")
    log_path = tmp_path / "vacd.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
                                   stdout=log_file, stderr=subprocess.STDOUT, cwd=REPOSITORY)
    made_by_lvcreate = [path for path in (DEVICE_MAPPER_CONTROL.parent, DEVICE_MAPPER_CONTROL) if not path.exists()]
    machine_name = slot_identity(FACTORY, 0).machine_name
    try:
        if has_device_mapper():
            wait_until(lambda: [volume.name for volume in LogicalVolumes().volumes(volume_group.name)] == [machine_name],
                       f"make the logical volume {volume_group.name}/{machine_name}")
            assert "created machine name=" + machine_name in wait_until(
                lambda: "created machine name=" in log_path.read_text() and log_path.read_text(), "create the machine")
        else:
            error = wait_until(lambda: paths.factory_error_file.exists() and paths.factory_error_file.read_text(),
                               "record the creation failure")
            assert f"logical volume {volume_group.name}/{machine_name}: lvcreate failed (this kernel has no " \
                   f"device-mapper: {DEVICE_MAPPER_CONTROL} does not open)" in error
            assert LogicalVolumes().volumes(volume_group.name) == ()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for path in reversed(made_by_lvcreate):
            if path.is_dir():
                path.rmdir()
            elif path.exists():
                path.unlink()
    assert f"machines' disks are logical volumes in volume_group={volume_group.name}" in log_path.read_text()
