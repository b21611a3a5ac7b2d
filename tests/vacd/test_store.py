"""Records on disk: Vac's layout, atomic writes, and a crash at any step reloads consistently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vacd.paths import Paths
from vacd.store import FinishRecord, Heartbeat, MachineRecord, Store


def record(created: int = 1000, name: str = "f1-03.example.com", machinetype: str = "atlas") -> MachineRecord:
    return MachineRecord(name, 3, "11111111-2222-3333-4444-555555555555", machinetype, "vm-raw", 2, created,
                         created + 3600, "169.254.169.3", 2.0, 4096)


def finish(time: int) -> FinishRecord:
    return FinishRecord(time, "200 Success", time, 1001, time, 12.5)


def test_begin_creation_binds_the_slot_in_vac_format(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    assert directory == tmp_path / "var/lib/vac/machines/1000_atlas_f1-03.example.com"
    assert (tmp_path / "var/lib/vac/slots/f1-03.example.com").read_text() == "1000 atlas vm-raw\n"
    for tree in ("machinefeatures", "jobfeatures", "joboutputs"):
        assert (directory / tree).is_dir()
    loaded = store.slot_binding("f1-03.example.com")
    assert loaded is not None and loaded.record == record() and not loaded.has_started


def test_started_heartbeat_and_finish_round_trip(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.write_heartbeat(record(), Heartbeat(1500, 42.0, 8.4))
    store.finish(record(), finish(1600))
    loaded = store.slot_binding("f1-03.example.com")
    assert loaded is not None
    assert loaded.started_time == 1001
    assert loaded.heartbeat == Heartbeat(1500, 42.0, 8.4)
    assert loaded.finish == finish(1600)
    assert (tmp_path / "var/lib/vac/finishes/atlas").read_text() == "1000 atlas f1-03.example.com\n"


def test_finishes_names_the_most_recently_created_finished_machine(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    newer, older = record(2000, "f1-01.example.com"), record(1000, "f1-02.example.com")
    for machine in (newer, older):
        store.begin_creation(machine)
    store.finish(newer, finish(2500))
    store.finish(older, finish(2600))
    last = store.last_finished("atlas")
    assert last is not None and last.record == newer


def test_factory_message_never_overwrites_the_guest_message(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    (directory / "joboutputs" / "shutdown_message").write_text("300 No work\n")
    store.request_destroy(record(), 2000, "700 Exceeded max_wallclock_seconds")
    assert store.read_shutdown_message(record()) == "300 No work"
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.destroy_request is not None
    assert loaded.destroy_request.shutdown_message == "700 Exceeded max_wallclock_seconds"


def test_an_empty_vac03_finished_file_still_means_finished(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    (directory / "finished").write_text("")
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.has_finished


def test_remove_refuses_paths_outside_the_machines_directory(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    with pytest.raises(Exception):
        store.remove_machine_dir(tmp_path)


class Crash(Exception):
    pass


@settings(max_examples=30, deadline=None)
@given(crash_at=st.integers(min_value=0, max_value=40))
def test_crash_at_any_write_step_reloads_to_a_consistent_state(tmp_path_factory: pytest.TempPathFactory, crash_at: int) -> None:
    """Interrupt the creation-to-finish sequence at the Nth file operation; the store must reload."""
    root = tmp_path_factory.mktemp("crash")
    store = Store(Paths(root))
    calls = {"count": 0}
    real_replace = os.replace

    def replace_that_crashes(source: str, target: str) -> None:
        calls["count"] += 1
        if calls["count"] == crash_at:
            raise Crash()
        real_replace(source, target)

    os.replace = replace_that_crashes  # type: ignore[assignment]
    try:
        store.begin_creation(record())
        store.mark_started(record(), 1001)
        store.write_heartbeat(record(), Heartbeat(1500, 42.0, None))
        store.request_destroy(record(), 1600, "700 Exceeded max_wallclock_seconds")
        store.finish(record(), finish(1700))
    except Crash:
        pass
    finally:
        os.replace = real_replace  # type: ignore[assignment]
    loaded = store.slot_binding(record().name)
    if loaded is not None:
        assert loaded.record == record()
        if loaded.finish is not None:
            assert loaded.finish == finish(1700)
    leftovers = [path for path in root.rglob("*.tmp")]
    assert leftovers == []
    for path in root.rglob("*.json"):
        json.loads(path.read_text())


class KilledHere(BaseException):
    """Stands for a SIGKILL at one write: nothing after it runs."""


@pytest.mark.parametrize("killed_at_write", [0, 1])
def test_a_kill_inside_begin_creation_leaves_no_record_that_its_slot_does_not_point_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_at_write: int
) -> None:
    # Patched in vacd.store: the one seam through which begin_creation writes its two files.
    import vacd.store

    real_write_atomic = vacd.store.write_atomic
    writes: list[Path] = []

    def write_until_killed(path: Path, content: object, mode: int = 0o644) -> None:
        if len(writes) == killed_at_write:
            raise KilledHere()
        writes.append(Path(path))
        real_write_atomic(path, content, mode)  # type: ignore[arg-type]

    store = Store(Paths(tmp_path))
    store.begin_creation(record(created=900))
    store.finish(record(created=900), finish(950))
    monkeypatch.setattr(vacd.store, "write_atomic", write_until_killed)
    with pytest.raises(KilledHere):
        store.begin_creation(record(created=1000))
    monkeypatch.undo()
    bound = store.slot_binding("f1-03.example.com")
    for directory in store.all_machine_dirs():
        stored = store.load_machine(directory)
        if stored is not None and not stored.has_finished:
            assert bound is not None and bound.directory == directory, f"{directory.name} is a record no slot holds"
