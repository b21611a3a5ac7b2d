"""Tests of vacd.backends.libvirt against libvirt's test driver (no daemon, no QEMU).

Each test gets a private `test:///<tmp>/node.xml` driver, whose state belongs to the one
connection the backend opens, so tests cannot see each other's domains.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import libvirt
import pytest

from tests.vacd.test_lvm import RecordingLvm
from vacd.backends.base import MachineSpec, ObservedState
from vacd.backends.libvirt import LibvirtBackend, machine_volumes, observed_state
from vacd.commands import run_command
from vacd.errors import BackendError, CommandFailed
from vacd.imagecheck import ImageRefused
from vacd.lvm import LogicalVolumes, VolumeGroup, VolumeRequest, lvremove_argv
from vacd.slots import slot_identity

pytestmark = pytest.mark.libvirt_test_driver

NETWORK = "vac_169.254.0.0"
# Lifecycle events arrive on libvirt's event thread; this bounds the wait, it is no timing test.
EVENT_WAIT_SECONDS = 10.0


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LibvirtBackend]:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    made = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK,
                          tmp_dir=tmp_path / "tmp")
    try:
        yield made
    finally:
        made.close()


def make_spec(tmp_path: Path, ordinal: int = 3, **changes: object) -> MachineSpec:
    identity = slot_identity("f1.example.com", ordinal)
    spec = MachineSpec(
        name=identity.machine_name,
        uuid=str(uuid.uuid4()),
        ordinal=ordinal,
        mac_address=identity.mac_address,
        ip_address=identity.ip_address,
        vnc_port=identity.vnc_port,
        processors=1,
        memory_mib=128,
        machine_dir=tmp_path / "machines" / identity.machine_name,
        root_kernel=Path("/guest/vmlinuz"),
        root_initrd=Path("/guest/initrd.gz"),
        kernel_command_line="console=ttyS0",
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def names(backend: LibvirtBackend) -> list[str]:
    return sorted(machine.name for machine in backend.list_machines())


def test_created_machine_is_listed_running_with_its_uuid(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    (machine,) = backend.list_machines()
    assert (machine.name, machine.uuid, machine.state) == (spec.name, spec.uuid, ObservedState.RUNNING)
    assert machine.cpu_seconds >= 0.0


def test_creating_a_name_twice_fails_and_keeps_the_first(backend: LibvirtBackend, tmp_path: Path) -> None:
    first = make_spec(tmp_path)
    backend.create(first)
    with pytest.raises(BackendError) as raised:
        backend.create(dataclasses.replace(first, uuid=str(uuid.uuid4())))
    assert raised.value.operation == "create"
    assert isinstance(raised.value.__cause__, libvirt.libvirtError)
    assert [m.uuid for m in backend.list_machines()] == [first.uuid]


def test_destroy_removes_the_machine_and_is_idempotent(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    backend.destroy(spec.name)
    assert names(backend) == []
    backend.destroy(spec.name)
    backend.destroy(spec.name, spec.uuid)


def test_destroy_with_uuid_spares_a_machine_with_another_uuid(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    backend.destroy(spec.name, str(uuid.uuid4()))
    assert names(backend) == [spec.name]
    backend.destroy(spec.name, spec.uuid)
    assert names(backend) == []


def test_destroy_with_uuid_of_a_machine_with_another_name_spares_it(
    backend: LibvirtBackend, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    backend.destroy("f1-99.example.com", spec.uuid)
    assert names(backend) == [spec.name]


def test_shutdown_of_missing_machine_succeeds(backend: LibvirtBackend) -> None:
    backend.shutdown("f1-07.example.com")


def test_shutdown_stops_a_machine(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    backend.create(spec)
    backend.shutdown(spec.name)
    # The test driver powers off at once; QEMU guests take their time (integration tests).
    assert names(backend) == []


def test_list_shows_every_machine(backend: LibvirtBackend, tmp_path: Path) -> None:
    specs = [make_spec(tmp_path, ordinal) for ordinal in range(3)]
    for spec in specs:
        backend.create(spec)
    assert names(backend) == sorted(spec.name for spec in specs)


def test_concurrent_creates_and_destroys_from_a_thread_pool(backend: LibvirtBackend, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    specs = [make_spec(tmp_path, ordinal) for ordinal in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(backend.create, specs))
    assert len(backend.list_machines()) == 8
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda spec: backend.destroy(spec.name, spec.uuid), specs))
    assert backend.list_machines() == []


def test_lifecycle_events_wake_with_the_machine_name(backend: LibvirtBackend, tmp_path: Path) -> None:
    woken: list[str] = []
    started, stopped = threading.Event(), threading.Event()
    spec = make_spec(tmp_path)

    def wake(name: str) -> None:
        woken.append(name)
        (stopped if started.is_set() else started).set()

    backend.watch(wake)
    backend.create(spec)
    assert started.wait(EVENT_WAIT_SECONDS)
    backend.destroy(spec.name)
    assert stopped.wait(EVENT_WAIT_SECONDS)
    assert set(woken) == {spec.name}


def test_a_failing_wake_does_not_stop_later_events(backend: LibvirtBackend, tmp_path: Path) -> None:
    calls: list[str] = []
    second = threading.Event()

    def wake(name: str) -> None:
        calls.append(name)
        if len(calls) >= 2:
            second.set()
        raise RuntimeError("factory bug")

    backend.watch(wake)
    spec = make_spec(tmp_path)
    backend.create(spec)
    backend.destroy(spec.name)
    assert second.wait(EVENT_WAIT_SECONDS)


def test_closed_backend_refuses_work(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK, tmp_dir=tmp_path)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.list_machines()


def test_unreachable_libvirt_is_a_backend_error(tmp_path: Path) -> None:
    backend = LibvirtBackend(f"test://{tmp_path}/missing.xml", domain_type="qemu", network_name=NETWORK,
                             tmp_dir=tmp_path)
    try:
        with pytest.raises(BackendError, match="cannot connect") as raised:
            backend.list_machines()
        assert isinstance(raised.value.__cause__, libvirt.libvirtError)
    finally:
        backend.close()


def test_spec_of_a_container_model_is_refused(backend: LibvirtBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="not a VM model"):
        backend.create(make_spec(tmp_path, machine_model="docker"))


@pytest.mark.parametrize(
    "libvirt_state, expected",
    [
        (libvirt.VIR_DOMAIN_RUNNING, ObservedState.RUNNING),
        (libvirt.VIR_DOMAIN_BLOCKED, ObservedState.RUNNING),
        (libvirt.VIR_DOMAIN_SHUTDOWN, ObservedState.SHUTTING_DOWN),
        (libvirt.VIR_DOMAIN_PAUSED, ObservedState.PAUSED),
        (libvirt.VIR_DOMAIN_CRASHED, ObservedState.PAUSED),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, ObservedState.PAUSED),
        (libvirt.VIR_DOMAIN_NOSTATE, ObservedState.PAUSED),
    ],
)
def test_libvirt_states_map_to_what_the_factory_acts_on(libvirt_state: int, expected: ObservedState) -> None:
    assert observed_state(libvirt_state) == expected


class RecordingRunner:
    """The real command runner, recording each argv (to check what reached qemu-img)."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.argvs.append(list(argv))
        return run_command(argv)


@pytest.mark.allow_commands("qemu-img")
def test_vm_raw_image_gets_a_qcow2_overlay_that_is_unlinked_after_create(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"\0" * 1024 * 1024)
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    runner = RecordingRunner()
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK,
                             tmp_dir=tmp_path / "tmp", run_command=runner)
    try:
        spec = make_spec(tmp_path, root_kernel=None, root_initrd=None, root_image=image)
        backend.create(spec)
        assert names(backend) == [spec.name]
    finally:
        backend.close()
    overlay = tmp_path / "tmp" / f"{spec.uuid}.vda.qcow2"
    assert runner.argvs[-1] == ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image),
                                str(overlay)]
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.allow_commands("qemu-img")
def test_missing_image_fails_create_from_command_failed_and_leaves_nothing(
    backend: LibvirtBackend, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, root_kernel=None, root_initrd=None, root_image=tmp_path / "missing.img")
    with pytest.raises(BackendError) as raised:
        backend.create(spec)
    assert isinstance(raised.value.__cause__, CommandFailed)
    assert backend.list_machines() == []
    assert not (tmp_path / "tmp").exists() or list((tmp_path / "tmp").iterdir()) == []


def test_cernvm_sparse_root_disk_is_made_then_unlinked(backend: LibvirtBackend, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, machine_model="cernvm3", root_kernel=None, root_initrd=None,
                     root_image=Path("/images/cernvm.iso"), disk_bytes=10**9)
    backend.create(spec)
    assert names(backend) == [spec.name]
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.allow_commands("qemu-img")
def test_command_runner_reports_argv_exit_code_and_stderr() -> None:
    with pytest.raises(CommandFailed) as raised:
        run_command(["qemu-img", "info", "/nonexistent/vac-test.img"])
    assert raised.value.argv[:2] == ("qemu-img", "info")
    assert raised.value.returncode != 0
    assert "nonexistent" in raised.value.stderr_tail


def test_connection_closed_by_libvirt_is_replaced_and_events_are_registered_again(
    backend: LibvirtBackend, tmp_path: Path
) -> None:
    """A libvirtd restart closes the connection (issue 8): the next call reconnects, and events flow again."""
    woken: list[str] = []
    event = threading.Event()

    def wake(name: str) -> None:
        woken.append(name)
        event.set()

    backend.watch(wake)
    first = make_spec(tmp_path, ordinal=1)
    backend.create(first)
    assert event.wait(EVENT_WAIT_SECONDS)
    # libvirt calls this from its event thread when libvirtd goes away (VIR_CONNECT_CLOSE_REASON_EOF);
    # the test driver never closes on its own, so the test says it did.
    backend._on_connection_closed(backend._connection, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
    # A private test driver's machines belong to its connection: a new connection starts empty.
    assert names(backend) == []
    event.clear()
    woken.clear()
    second = make_spec(tmp_path, ordinal=2)
    backend.create(second)
    assert event.wait(EVENT_WAIT_SECONDS)
    assert set(woken) == {second.name}


@pytest.mark.allow_commands("qemu-img")
def test_vo_qcow2_with_a_host_file_as_backing_file_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    # Issue 11 item 1: layered under the overlay, this image would show /etc/shadow to the guest.
    hostile = tmp_path / "hostile.qcow2"
    run_command(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(hostile), "1M"])
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    runner = RecordingRunner()
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK,
                             tmp_dir=tmp_path / "tmp", run_command=runner)
    try:
        spec = make_spec(tmp_path, root_kernel=None, root_initrd=None, root_image=hostile)
        with pytest.raises(BackendError) as raised:
            backend.create(spec)
        assert backend.list_machines() == []
    finally:
        backend.close()
    assert isinstance(raised.value.__cause__, ImageRefused)
    assert f"image {hostile} refused: it has a backing file /etc/shadow that vacd did not create" in str(raised.value)
    assert not any(argv[:2] == ["qemu-img", "create"] for argv in runner.argvs)
    assert not (tmp_path / "tmp").exists() or list((tmp_path / "tmp").iterdir()) == []


# --- logical volumes and the room for sparse disks (issue 13) ----------------------------------


def lvm_backend(tmp_path: Path, lvm: RecordingLvm) -> LibvirtBackend:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    return LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK, tmp_dir=tmp_path / "tmp",
                          logical_volumes=LogicalVolumes(lvm, is_block_device=lambda path: True))


def volume_for(spec: MachineSpec) -> VolumeRequest:
    return VolumeRequest("vg", spec.name, 1, 4, 1, "f1.example.com")


def test_a_machines_volume_is_made_before_it_starts_and_removed_when_destroyed(tmp_path: Path) -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 10**10, 10**10, 4 * 1024 * 1024))
    backend = lvm_backend(tmp_path, lvm)
    try:
        spec = make_spec(tmp_path)
        spec = dataclasses.replace(spec, logical_volume=volume_for(spec))
        backend.create(spec)
        assert [volume.name for volume in lvm.volumes] == [spec.name]
        assert "lvcreate" in lvm.commands()
        backend.destroy(spec.name)
        assert lvm.volumes == []
        assert lvm.argvs[-1] == lvremove_argv("vg", spec.name)
    finally:
        backend.close()


def test_a_creation_that_fails_after_the_volume_is_made_removes_it(tmp_path: Path) -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 10**10, 10**10, 4 * 1024 * 1024))
    backend = lvm_backend(tmp_path, lvm)
    try:
        first = make_spec(tmp_path)
        backend.create(first)
        # The same name again: libvirt refuses the domain after the volume was made.
        second = dataclasses.replace(make_spec(tmp_path), logical_volume=volume_for(first))
        with pytest.raises(BackendError):
            backend.create(second)
        assert lvm.volumes == []
    finally:
        backend.close()


def test_a_volume_that_cannot_be_made_fails_the_creation_naming_it(tmp_path: Path) -> None:
    lvm = RecordingLvm(VolumeGroup("vg", 10**10, 10**10, 4 * 1024 * 1024))
    lvm.fail["lvcreate"] = CommandFailed(["lvcreate"], 3, "/dev/mapper/control: open failed: No such device")
    backend = lvm_backend(tmp_path, lvm)
    try:
        spec = make_spec(tmp_path)
        with pytest.raises(BackendError, match=f"create {spec.name}: logical volume vg/{spec.name}: lvcreate failed"):
            backend.create(dataclasses.replace(spec, logical_volume=volume_for(spec)))
        assert backend.list_machines() == []
    finally:
        backend.close()


def test_destroy_leaves_volumes_not_named_as_the_machine() -> None:
    xml = """<domain><devices>
      <disk type='block'><source dev='/dev/vg/f1-03.example.com'/></disk>
      <disk type='block'><source dev='/dev/vg/admins-disk'/></disk>
      <disk type='block'><source dev='/dev/sdb'/></disk>
      <disk type='file'><source file='/var/lib/vac/tmp/f1-03.example.com'/></disk>
    </devices></domain>"""
    assert machine_volumes(xml, "f1-03.example.com") == [("vg", "f1-03.example.com")]


def test_a_sparse_disk_is_not_made_without_room_for_all_it_may_grow_to(tmp_path: Path) -> None:
    asked: list[tuple[Path, int]] = []

    def no_room(directory: Path, size_bytes: int) -> str:
        asked.append((directory, size_bytes))
        return f"disk: {directory} has 10 MiB free; a sparse disk that may grow to ..."

    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    backend = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name=NETWORK, tmp_dir=tmp_path / "tmp",
                             room_check=no_room)
    try:
        spec = make_spec(tmp_path, machine_model="cernvm3", root_kernel=None, root_initrd=None,
                         root_image=Path("/images/cernvm.iso"), disk_bytes=10**9)
        with pytest.raises(BackendError, match="has 10 MiB free"):
            backend.create(spec)
        assert asked == [(tmp_path / "tmp", 10**9)]
        assert backend.list_machines() == []
        assert not (tmp_path / "tmp").exists() or list((tmp_path / "tmp").iterdir()) == []
    finally:
        backend.close()
