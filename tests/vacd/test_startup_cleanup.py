"""What a kill -9 left is removed at start, and nothing else (vacd.startup_cleanup, issue 8 item 4)."""

from __future__ import annotations

import logging
import os
import uuid as uuid_module
from pathlib import Path

import pytest

from vacd.atomicfile import atomic_replace, is_temp_file_name
from vacd.paths import Paths
from vacd.startup_cleanup import live_machine_names, live_machine_uuids, remove_leftovers
from vacd.records import FinishRecord, MachineRecord
from vacd.store import Store

LIVE_UUID = "6f1c3a52-0f54-4c4e-9d55-7f2b0d1e2a10"
DEAD_UUID = "0b8a9d3e-7a41-4b61-a0f6-2c9d5e4f3b21"


def record(name: str, machine_uuid: str, created_time: int) -> MachineRecord:
    return MachineRecord(name=name, ordinal=0, uuid=machine_uuid, machinetype="atlas", machine_model="vm-raw",
                         processors=1, created_time=created_time, shutdown_time=created_time + 3600,
                         ip_address="169.254.1.1", hs06=1.0, mb=2048)


def killed_temp_file(target: Path) -> Path:
    """The temp file atomic_replace leaves when the process dies inside it (a kill -9).

    atomic_replace removes its temp file on an exception, which a kill -9 never raises: the
    file is hard-linked aside while it exists and put back afterwards.
    """

    class Killed(Exception):
        pass

    target.parent.mkdir(parents=True, exist_ok=True)
    before = set(target.parent.iterdir())
    kept = target.parent / "kept-by-test"
    try:
        with atomic_replace(target) as temp_file:
            temp_file.write(b"half")
            (temp_path,) = set(target.parent.iterdir()) - before
            os.link(temp_path, kept)
            raise Killed
    except Killed:
        pass
    kept.rename(temp_path)
    return temp_path


@pytest.fixture
def state(tmp_path: Path) -> tuple[Paths, Store]:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    return paths, Store(paths)


def test_temp_files_of_atomic_writes_are_removed_everywhere_vacd_writes(state: tuple[Paths, Store]) -> None:
    paths, store = state
    live = record("f1-00.example.com", LIVE_UUID, 1700000000)
    directory = store.begin_creation(live)
    targets = [
        paths.status_file, paths.heartbeat_file("factory"), paths.slots_dir / live.name,
        paths.finishes_dir / "atlas", directory / "machine.json", directory / "heartbeat",
        directory / "machinefeatures" / "shutdowntime", directory / "jobfeatures" / "shutdowntime_job",
        paths.apel_outgoing_dir / "20240101" / "record", paths.apel_archive_dir / "20240101" / "record",
        paths.imagecache_dir / "https%3A%2F%2Fimages.example.org%2Fcernvm.iso",  # a partial download
        paths.pipescache_dir / "lhcb.pipe", paths.tmp_dir / "apel-staging-record",
    ]
    left = [killed_temp_file(target) for target in targets]
    assert all(path.exists() and is_temp_file_name(path.name) for path in left)

    report = remove_leftovers(paths, live_machine_uuids(store))

    assert sorted(report.temp_files) == sorted(left)
    assert not any(path.exists() for path in left)
    assert (directory / "machine.json").exists() and (paths.slots_dir / live.name).exists()


def test_orphan_disks_in_tmp_are_removed_and_other_files_there_are_kept(
        state: tuple[Paths, Store], caplog: pytest.LogCaptureFixture) -> None:
    paths, store = state
    store.begin_creation(record("f1-00.example.com", LIVE_UUID, 1700000000))
    dead = record("f1-01.example.com", DEAD_UUID, 1700000000)
    store.begin_creation(dead)
    store.finish(dead, FinishRecord(1700000100, None, None, None, None, 0.0))
    orphan = paths.tmp_dir / f"{DEAD_UUID}.vda.qcow2"
    never_created = paths.tmp_dir / f"{uuid_module.uuid4()}.vda.raw"
    running = paths.tmp_dir / f"{LIVE_UUID}.vda.qcow2"  # unlink lost: QEMU holds it open
    staging = paths.tmp_dir / "apel-staging-20240101-abc"  # APEL's exactly-once state
    admin_file = paths.tmp_dir / "notes.qcow2"
    for path in (orphan, never_created, running, staging, admin_file):
        path.write_bytes(b"x")

    with caplog.at_level(logging.INFO, logger="vacd.startup_cleanup"):
        report = remove_leftovers(paths, live_machine_uuids(store))

    assert sorted(report.disk_files) == sorted([orphan, never_created, running])
    assert staging.exists() and admin_file.exists()
    assert f"removed orphan disk file path={orphan}" in caplog.text
    assert f"unlinked disk file of a running machine (QEMU holds it open) path={running}" in caplog.text


def test_guest_and_admin_files_that_look_like_temp_files_are_left_alone(state: tuple[Paths, Store]) -> None:
    paths, store = state
    directory = store.begin_creation(record("f1-00.example.com", LIVE_UUID, 1700000000))
    guest_file = directory / "joboutputs" / ".log.abcdefgh.tmp"  # a guest may name a file anything
    admin_file = paths.machinetypes_dir / "atlas" / "files" / ".image.abcdefgh.tmp"
    unrelated = paths.state_dir / "notes.tmp"
    for path in (guest_file, admin_file, unrelated):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")

    report = remove_leftovers(paths, ())

    assert report.temp_files == [] and report.disk_files == []
    assert guest_file.exists() and admin_file.exists() and unrelated.exists()


def test_a_file_that_cannot_be_removed_is_reported_and_the_rest_go_on(
        state: tuple[Paths, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    paths, _ = state
    stuck = killed_temp_file(paths.slots_dir / "f1-00.example.com")
    removable = killed_temp_file(paths.status_file)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    report = remove_leftovers(paths, ())
    assert report.temp_files == [removable] and [path for path, _ in report.failures] == [stuck]


def test_an_empty_or_missing_state_directory_is_not_an_error(tmp_path: Path) -> None:
    report = remove_leftovers(Paths(tmp_path / "nothing"), ())
    assert (report.temp_files, report.disk_files, report.failures) == ([], [], [])


def test_live_machine_names_are_those_of_unfinished_records(state: tuple[Paths, Store]) -> None:
    # What vacd's start keeps of the volumes named as its machines (volume_group, issue 13).
    paths, store = state
    store.begin_creation(record("f1-00.example.com", LIVE_UUID, 1700000000))
    dead = record("f1-01.example.com", DEAD_UUID, 1700000000)
    store.begin_creation(dead)
    store.finish(dead, FinishRecord(1700000100, None, None, None, None, 0.0))
    # A corrupt record is quarantined: its machine is a zombie to the factory, so not live.
    corrupt = store.begin_creation(record("f1-02.example.com", str(uuid_module.uuid4()), 1700000000))
    (corrupt / "machine.json").write_text("{not json")
    assert live_machine_names(store) == frozenset({"f1-00.example.com"})
