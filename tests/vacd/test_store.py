"""Records on disk: Vac's layout, atomic writes, and a crash at any step reloads consistently."""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vacd.paths import Paths
from vacd.records import FinishRecord, Heartbeat, MachineRecord, SlotCondition
from vacd.recordfiles import CORRUPT_MARK
from vacd.store import MachineDirectoryExists, Store


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


# ---------------------------------------------------------------- Vac's marker formats (issue 10 item 5)


def test_markers_are_written_exactly_as_vac03_wrote_them(tmp_path: Path) -> None:
    """Admins' scripts read these: `started` a time, `heartbeat` two fields, `finished` empty (§1.4)."""
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    assert (directory / "started").read_text() == "1001\n"
    assert (directory / "heartbeat").read_text() == "0.0 0.0\n"
    store.write_heartbeat(record(), Heartbeat(1500, 42.7, 8.44))
    assert (directory / "heartbeat").read_text() == "42 8.4\n"  # Vac: str(int seconds) + " %.1f"
    store.write_heartbeat(record(), Heartbeat(1560, 50.0, None))
    assert (directory / "heartbeat").read_text() == "50 0.0\n"
    store.finish(record(), finish(1600))
    assert (directory / "finished").read_bytes() == b""


def test_what_vacs_formats_cannot_hold_is_in_the_json_files_beside_them(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.write_heartbeat(record(), Heartbeat(1500, 42.7, None))
    assert json.loads((directory / "heartbeat.json").read_text()) == {
        "time": 1500, "cpu_seconds": 42.7, "cpu_percentage": None}
    store.finish(record(), finish(1600))
    assert json.loads((directory / "finished.json").read_text()) == {
        "finished_time": 1600, "shutdown_message": "200 Success", "shutdown_message_time": 1600,
        "started_time": 1001, "last_heartbeat_time": 1600, "cpu_seconds": 12.5}
    loaded = store.slot_binding(record().name)
    assert loaded is not None
    assert loaded.heartbeat == Heartbeat(1500, 42.7, None) and loaded.finish == finish(1600)


def vac03_machine(tmp_path: Path) -> tuple[Store, Path]:
    """A machine directory as Vac 03 left it: its files, their times only in the mtimes."""
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "started").write_text("1001\n")
    (directory / "heartbeat").write_text("4200 97.3\n")
    os.utime(directory / "heartbeat", (1500, 1500))
    return store, directory


def test_vac03_heartbeat_is_read_at_its_mtime(tmp_path: Path) -> None:
    store, directory = vac03_machine(tmp_path)
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.started_time == 1001
    assert loaded.heartbeat == Heartbeat(1500, 4200.0, 97.3)
    assert not loaded.has_finished


def test_vac03_one_field_heartbeat_is_read(tmp_path: Path) -> None:
    store, directory = vac03_machine(tmp_path)
    (directory / "heartbeat").write_text("4200\n")  # Vac's first rewrite after "0.0 0.0"
    os.utime(directory / "heartbeat", (1500, 1500))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat == Heartbeat(1500, 4200.0, None)


def test_vac03_empty_finished_is_finished_at_its_mtime(tmp_path: Path) -> None:
    store, directory = vac03_machine(tmp_path)
    (directory / "finished").write_text("")
    os.utime(directory / "finished", (1700, 1700))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.finish == FinishRecord(1700, None, None, None, None, 0.0)
    assert (directory / "finished").read_bytes() == b"" and not (directory / "finished.json").exists()


def test_earlier_vacd_formats_are_still_read(tmp_path: Path) -> None:
    """Before issue 10: a third heartbeat field with the time, and the JSON record inside `finished`."""
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "started").write_text("1001\n")
    (directory / "heartbeat").write_text("42.0 8.4 1500\n")
    (directory / "finished").write_text(json.dumps(asdict(finish(1600))) + "\n")
    os.utime(directory / "finished", (1900, 1900))
    loaded = store.slot_binding(record().name)
    assert loaded is not None
    assert loaded.heartbeat == Heartbeat(1500, 42.0, 8.4)
    assert loaded.finish == finish(1600)


def test_a_timed_heartbeat_line_newer_than_heartbeat_json_wins(tmp_path: Path) -> None:
    # An earlier vacd ran on the directory after this one (a downgrade): its line is newer.
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.write_heartbeat(record(), Heartbeat(1500, 42.0, 8.4))
    (directory / "heartbeat").write_text("60.0 9.0 1560\n")
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat == Heartbeat(1560, 60.0, 9.0)


def test_heartbeat_json_beats_an_untimed_line_whatever_its_mtime(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.write_heartbeat(record(), Heartbeat(1500, 42.7, 8.4))
    os.utime(directory / "heartbeat", (1999, 1999))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat == Heartbeat(1500, 42.7, 8.4)


def test_kill_between_finished_json_and_finished_leaves_the_machine_finished_once(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.finish(record(), finish(1600))
    (directory / "finished").unlink()  # as a kill -9 after finished.json leaves it
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.finish == finish(1600)
    # The read completes Vac's marker, for the admin's scripts.
    assert (directory / "finished").read_bytes() == b""
    assert store.quarantined_total == 0


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

    def replace_that_crashes(source: str, target: str, **dir_fds: int) -> None:
        calls["count"] += 1
        if calls["count"] == crash_at:
            raise Crash()
        real_replace(source, target, **dir_fds)  # joboutputs/ is written relative to its descriptor

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
            # Vac's marker is there for the admin's scripts once the store has looked.
            assert (loaded.directory / "finished").read_bytes() == b""
        if loaded.heartbeat is not None:
            assert loaded.heartbeat in (Heartbeat(1001, 0.0, 0.0), Heartbeat(1500, 42.0, None))
    leftovers = [path for path in root.rglob("*.tmp")]
    assert leftovers == []
    for path in root.rglob("*.json"):
        json.loads(path.read_text())
    for path in root.rglob("heartbeat"):
        assert path.read_text() in ("0.0 0.0\n", "42 0.0\n")


# ---------------------------------------------------------------- guest-written data (issue 8 item 2)
NOW = 1_700_000_000


def fixed_clock() -> float:
    return float(NOW)


def test_binary_shutdown_message_is_read_with_replacement(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    (directory / "joboutputs" / "shutdown_message").write_bytes(b"\xff\xfe300 bad\n")
    assert store.read_shutdown_message(record()) == "\ufffd\ufffd300 bad"
    message = store.shutdown_message(record())
    assert message is not None and message.code is None


def make_directory(path: Path) -> None:
    path.mkdir()


def make_symlink_to_dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def make_fifo(path: Path) -> None:
    os.mkfifo(path)  # no writer: a blocking open or read would wait for ever


@pytest.mark.parametrize("make", [make_directory, make_symlink_to_dev_zero, make_fifo], ids=["directory", "symlink", "fifo"])
def test_a_shutdown_message_that_is_not_a_regular_file_is_no_message(tmp_path: Path, make: Callable[[Path], None]) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    make(directory / "joboutputs" / "shutdown_message")
    assert store.read_shutdown_message(record()) is None


def test_a_10_gb_shutdown_message_is_read_only_up_to_its_cap(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    path = directory / "joboutputs" / "shutdown_message"
    with path.open("wb") as huge:
        huge.write(b"300 Big file\n")
        huge.truncate(10 * 1024**3)  # sparse: costs no disk
    assert store.read_shutdown_message(record()) == "300 Big file"


def test_factory_reason_survives_a_guest_directory_where_the_message_goes(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    (directory / "joboutputs" / "shutdown_message").mkdir()
    store.request_destroy(record(), 2000, "700 Exceeded max_wallclock_seconds")
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.destroy_request is not None
    assert loaded.destroy_request.shutdown_message == "700 Exceeded max_wallclock_seconds"
    assert (directory / "joboutputs" / "shutdown_message").is_dir()


# ---------------------------------------------------------------- corrupt records are quarantined (issue 8 item 3)


def corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + CORRUPT_MARK + "*"))


def test_corrupt_machine_record_is_quarantined_and_the_slot_reported_corrupt_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "machine.json").write_bytes(b"\x00{not json")
    with caplog.at_level(logging.WARNING, logger="vacd.recordfiles"):
        lookup = store.lookup_slot(record().name)
    assert lookup.condition is SlotCondition.CORRUPT and lookup.machine is None
    assert lookup.problem is not None and "machine.json" in lookup.problem
    assert corrupt_copies(directory / "machine.json") == [directory / f"machine.json.corrupt-{NOW}"]
    assert (directory / f"machine.json.corrupt-{NOW}").read_bytes() == b"\x00{not json"
    assert store.quarantined_total == 1
    assert any(str(directory / "machine.json") in line.getMessage() for line in caplog.records)
    # Unbound on disk: later lookups see a free slot (whatever runs there is a zombie).
    assert not (tmp_path / "var/lib/vac/slots" / record().name).exists()
    assert store.lookup_slot(record().name).condition is SlotCondition.FREE
    assert store.quarantined_total == 1


def test_machine_record_of_another_directory_is_corrupt(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    (directory / "machine.json").write_text(record(created=999).to_json())
    assert store.lookup_slot(record().name).condition is SlotCondition.CORRUPT


def test_corrupt_slot_binding_is_quarantined(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    store.begin_creation(record())
    slot_file = tmp_path / "var/lib/vac/slots" / record().name
    slot_file.write_bytes(b"\xff\xff atlas vm-raw\n")
    lookup = store.lookup_slot(record().name)
    assert lookup.condition is SlotCondition.CORRUPT
    assert corrupt_copies(slot_file) == [slot_file.with_name(f"{record().name}.corrupt-{NOW}")]
    assert store.bound_directories() == set()
    assert store.slot_binding(record().name) is None


def test_corrupt_finished_file_keeps_the_machine_finished(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    (directory / "finished").write_bytes(b"\xde\xad\xbe\xef")
    os.utime(directory / "finished", (1800, 1800))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.has_finished and loaded.finish is not None
    assert loaded.finish.finished_time == 1800
    assert len(corrupt_copies(directory / "finished")) == 1
    # The replacement is a readable record: still finished, nothing quarantined again.
    again = store.slot_binding(record().name)
    assert again is not None and again.finish == loaded.finish
    assert store.quarantined_total == 1


def test_corrupt_started_file_keeps_the_start_time_of_its_mtime(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    (directory / "started").write_bytes(b"garbage")
    os.utime(directory / "started", (1001, 1001))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.started_time == 1001
    assert (directory / "started").read_text() == "1001\n"
    assert len(corrupt_copies(directory / "started")) == 1


def test_corrupt_destroy_request_still_stops_the_machine_from_its_mtime(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "destroy_requested").write_bytes(b"[" * 100_000)  # deeper than Python's recursion limit
    os.utime(directory / "destroy_requested", (1500, 1500))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.destroy_request is not None
    assert loaded.destroy_request.requested_time == 1500


def test_corrupt_heartbeat_line_is_set_aside_and_heartbeat_json_answers(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    (directory / "heartbeat").write_text("nan nan 1500\n")
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat == Heartbeat(1001, 0.0, 0.0) and loaded.started_time == 1001
    assert not (directory / "heartbeat").exists() and len(corrupt_copies(directory / "heartbeat")) == 1


def test_corrupt_heartbeat_json_falls_back_to_vacs_line(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.write_heartbeat(record(), Heartbeat(1500, 42.0, 8.4))
    os.utime(directory / "heartbeat", (1500, 1500))
    (directory / "heartbeat.json").write_text('{"time": 1500, "cpu_seconds": NaN}')
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat == Heartbeat(1500, 42.0, 8.4)
    assert len(corrupt_copies(directory / "heartbeat.json")) == 1


def test_corrupt_heartbeat_is_set_aside_until_the_next_one(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    (directory / "heartbeat").write_text("nan nan 1500\n")
    (directory / "heartbeat.json").write_bytes(b"\xff")
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.heartbeat is None and loaded.started_time == 1001
    for name in ("heartbeat", "heartbeat.json"):
        assert not (directory / name).exists() and len(corrupt_copies(directory / name)) == 1
    store.write_heartbeat(record(), Heartbeat(1600, 1.0, None))
    reloaded = store.slot_binding(record().name)
    assert reloaded is not None and reloaded.heartbeat == Heartbeat(1600, 1.0, None)


def test_corrupt_finished_json_keeps_the_machine_finished_at_the_markers_mtime(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.finish(record(), finish(1600))
    (directory / "finished.json").write_text("{broken")
    os.utime(directory / "finished", (1800, 1800))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.finish == FinishRecord(1800, None, None, None, None, 0.0)
    assert len(corrupt_copies(directory / "finished.json")) == 1
    again = store.slot_binding(record().name)
    assert again is not None and again.finish == loaded.finish and store.quarantined_total == 1


def test_corrupt_finished_json_without_its_marker_stays_finished(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "finished.json").write_text("[]")
    os.utime(directory / "finished.json", (1700, 1700))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.finish == FinishRecord(1700, None, None, None, None, 0.0)
    assert (directory / "finished").read_bytes() == b""


def test_corrupt_finished_marker_gives_its_mtime_to_finished_json_and_becomes_vacs(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    (directory / "finished").write_bytes(b"\xde\xad")
    os.utime(directory / "finished", (1800, 1800))
    loaded = store.slot_binding(record().name)
    assert loaded is not None and loaded.finish == FinishRecord(1800, None, None, None, None, 0.0)
    assert (directory / "finished").read_bytes() == b""
    assert json.loads((directory / "finished.json").read_text())["finished_time"] == 1800
    assert [path.read_bytes() for path in corrupt_copies(directory / "finished")] == [b"\xde\xad"]


def test_two_quarantines_in_one_second_keep_both_copies(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path), clock=fixed_clock)
    directory = store.begin_creation(record())
    for content in (b"first", b"second"):
        (directory / "heartbeat").write_bytes(content)
        store.slot_binding(record().name)
    assert sorted(path.read_bytes() for path in corrupt_copies(directory / "heartbeat")) == [b"first", b"second"]


RECORD_FILES = ["machine.json", "finished", "finished.json", "started", "heartbeat", "heartbeat.json",
                "destroy_requested", "slot"]


@settings(max_examples=150, deadline=None)
@given(target=st.sampled_from(RECORD_FILES), content=st.binary(max_size=300), finished_before=st.booleans())
def test_random_bytes_in_any_record_file_never_raise(
    tmp_path_factory: pytest.TempPathFactory, target: str, content: bytes, finished_before: bool
) -> None:
    root = tmp_path_factory.mktemp("corrupt")
    store = Store(Paths(root), clock=fixed_clock)
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.request_destroy(record(), 1500, "700 Exceeded max_wallclock_seconds")
    if finished_before:
        store.finish(record(), finish(1700))
    path = root / "var/lib/vac/slots" / record().name if target == "slot" else directory / target
    path.write_bytes(content)
    for _ in range(2):  # the quarantining lookup, then the one after it
        lookup = store.lookup_slot(record().name)
        store.load_machine(directory)
        store.slot_binding(record().name)
        store.last_finished("atlas")
        if finished_before and target not in ("machine.json", "slot") and lookup.machine is not None:
            assert lookup.machine.has_finished  # never finalised twice
    leftovers = [entry for entry in root.rglob("*.tmp")]
    assert leftovers == []


# ---------------------------------------------------------------- no directory reuse (issue 8 item 10)


def test_begin_creation_refuses_an_existing_directory(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.finish(record(), finish(1001))
    with pytest.raises(MachineDirectoryExists):
        store.begin_creation(record())
    loaded = store.load_machine(directory)
    assert loaded is not None and loaded.has_finished


def test_bound_directories_are_the_slots_current_machines(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    old = store.begin_creation(record(1000))
    new = store.begin_creation(record(2000))
    other = store.begin_creation(record(1500, name="f1-04.example.com"))
    assert store.bound_directories() == {new, other}
    assert old not in store.bound_directories()
    assert stat.S_ISDIR(os.stat(old).st_mode)


class KilledHere(BaseException):
    """Stands for a SIGKILL at one write: nothing after it runs."""


@pytest.mark.parametrize("killed_at_write", [0, 1])
def test_a_kill_inside_begin_creation_leaves_no_record_that_its_slot_does_not_point_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_at_write: int
) -> None:
    # Patched in vacd.recordfiles: the one seam through which begin_creation writes its two files.
    import vacd.recordfiles

    real_write_atomic = vacd.recordfiles.write_atomic
    writes: list[Path] = []

    def write_until_killed(path: Path, content: object, mode: int = 0o644) -> None:
        if len(writes) == killed_at_write:
            raise KilledHere()
        writes.append(Path(path))
        real_write_atomic(path, content, mode)  # type: ignore[arg-type]

    store = Store(Paths(tmp_path))
    store.begin_creation(record(created=900))
    store.finish(record(created=900), finish(950))
    monkeypatch.setattr(vacd.recordfiles, "write_atomic", write_until_killed)
    with pytest.raises(KilledHere):
        store.begin_creation(record(created=1000))
    monkeypatch.undo()
    bound = store.slot_binding("f1-03.example.com")
    for directory in store.all_machine_dirs():
        stored = store.load_machine(directory)
        if stored is not None and not stored.has_finished:
            assert bound is not None and bound.directory == directory, f"{directory.name} is a record no slot holds"
