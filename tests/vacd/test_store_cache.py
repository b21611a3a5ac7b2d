"""Records are read through a cache keyed on each file's identity (issue 15 items 2 and 4).

A pass over an unchanged node opens no record; a file changed in any way its key shows
(new inode, mtime, size or ctime) is read again; heartbeats are fsync-ed once a minute
per machine, not every pass. Opens are counted by wrapping the store's read function.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import pytest

import vacd.heartbeatfiles
import vacd.markerfiles
import vacd.recordfiles
from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.atomicfile import write_atomic
from vacd.heartbeatfiles import HEARTBEAT_DURABLE_SECONDS
from vacd.paths import Paths
from vacd.records import Heartbeat, MachineRecord
from vacd.store import Store

NAME = "f1-03.example.com"


def record(created: int = 1000) -> MachineRecord:
    return MachineRecord(NAME, 3, "11111111-2222-3333-4444-555555555555", "atlas", "vm-raw", 2, created,
                         created + 3600, "169.254.169.3", 2.0, 4096)


class OpenCounter:
    """Wraps the store's read function: which record files were opened and read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        real = vacd.recordfiles.read_capped_with_status

        def counting(path: "os.PathLike[str]", max_bytes: int) -> Optional[tuple[bytes, os.stat_result]]:
            found = real(path, max_bytes)
            if found is not None:
                self.opened.append(os.fspath(path))
            return found

        monkeypatch.setattr(vacd.recordfiles, "read_capped_with_status", counting)

    def take(self) -> list[str]:
        opened, self.opened = self.opened, []
        return sorted(Path(path).name for path in opened)


def age_everything(root: Path, seconds: float = 3600.0) -> None:
    """Move every file's mtime into the past, as if written long before this read."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


def test_a_second_lookup_of_an_unchanged_machine_opens_no_record_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(Paths(tmp_path)).begin_creation(record())
    writer = Store(Paths(tmp_path))
    writer.mark_started(record(), 1001)
    writer.write_heartbeat(record(), Heartbeat(1500, 42.0, 8.4))
    age_everything(tmp_path)
    counter = OpenCounter(monkeypatch)
    store = Store(Paths(tmp_path))  # a restart: nothing cached yet
    first = store.slot_binding(NAME)
    assert counter.take() == ["f1-03.example.com", "heartbeat", "heartbeat.json", "machine.json", "started"]
    second = store.slot_binding(NAME)
    assert counter.take() == []
    assert first == second and second is not None and second.heartbeat == Heartbeat(1500, 42.0, 8.4)
    assert store.record_cache_hits >= 5


def test_what_the_store_wrote_itself_is_never_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = OpenCounter(monkeypatch)
    store = Store(Paths(tmp_path))
    store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.write_heartbeat(record(), Heartbeat(1500, 42.0, 8.4))
    loaded = store.slot_binding(NAME)
    assert loaded is not None and loaded.started_time == 1001 and loaded.heartbeat == Heartbeat(1500, 42.0, 8.4)
    assert counter.take() == []
    assert store.record_file_reads == 0


def test_a_record_replaced_by_rename_is_read_again_even_with_the_same_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    write_atomic(directory / "started", "1001\n")
    age_everything(tmp_path)
    counter = OpenCounter(monkeypatch)
    assert store.slot_binding(NAME).started_time == 1001  # type: ignore[union-attr]
    counter.take()
    old = os.lstat(directory / "started")
    write_atomic(directory / "started", "1002\n")  # another writer: a new inode, same size
    os.utime(directory / "started", ns=(old.st_atime_ns, old.st_mtime_ns))
    assert store.slot_binding(NAME).started_time == 1002  # type: ignore[union-attr]
    assert counter.take() == ["started"]


def test_a_record_changed_in_place_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    write_atomic(directory / "started", "1001\n")
    age_everything(tmp_path)
    counter = OpenCounter(monkeypatch)
    assert store.slot_binding(NAME).started_time == 1001  # type: ignore[union-attr]
    counter.take()
    inode = os.lstat(directory / "started").st_ino
    (directory / "started").write_text("1777\n")  # same inode, same size: mtime and ctime move
    past = time.time() - 60
    os.utime(directory / "started", (past, past))
    assert os.lstat(directory / "started").st_ino == inode
    assert store.slot_binding(NAME).started_time == 1777  # type: ignore[union-attr]
    assert counter.take() == ["started"]


def test_a_file_read_within_the_racy_window_of_its_mtime_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in the same timestamp tick could keep every field of the key: not trusted."""
    Store(Paths(tmp_path)).begin_creation(record())
    write_atomic(tmp_path / "var/lib/vac/machines/1000_atlas_f1-03.example.com/started", "1001\n")
    counter = OpenCounter(monkeypatch)
    store = Store(Paths(tmp_path))
    store.slot_binding(NAME)
    store.slot_binding(NAME)
    assert counter.take().count("started") == 2


def test_a_removed_record_is_not_answered_from_the_cache(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    (directory / "started").unlink()
    assert store.slot_binding(NAME).started_time is None  # type: ignore[union-attr]


def test_heartbeats_are_fsynced_once_a_minute_per_machine_not_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(Paths(tmp_path))
    store.begin_creation(record())
    store.mark_started(record(), 1001)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        fsyncs.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for now in range(1011, 1001 + HEARTBEAT_DURABLE_SECONDS, 10):
        store.write_heartbeat(record(), Heartbeat(now, float(now - 1001), 10.0))
    assert fsyncs == []
    store.write_heartbeat(record(), Heartbeat(1001 + HEARTBEAT_DURABLE_SECONDS, 60.0, 10.0))
    assert len(fsyncs) == 4  # each file and the directory after each rename
    loaded = Store(Paths(tmp_path)).slot_binding(NAME)  # what a restarted vacd reads
    assert loaded is not None and loaded.heartbeat == Heartbeat(1001 + HEARTBEAT_DURABLE_SECONDS, 60.0, 10.0)


def test_vacs_heartbeat_line_is_rewritten_once_a_minute_and_left_alone_between(tmp_path: Path) -> None:
    """Vac 03 rewrote it once a 60 s cycle (its mtime was the heartbeat time): so does vacd, and no more."""
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    before = os.lstat(directory / "heartbeat")
    for now in range(1011, 1001 + HEARTBEAT_DURABLE_SECONDS, 10):
        store.write_heartbeat(record(), Heartbeat(now, float(now - 1001), 59.0))
    after = os.lstat(directory / "heartbeat")
    assert (directory / "heartbeat").read_text() == "0.0 0.0\n"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not even touched
    store.flush_heartbeats()
    assert Store(Paths(tmp_path)).slot_binding(NAME).heartbeat == Heartbeat(1051, 50.0, 59.0)  # type: ignore[union-attr]
    store.write_heartbeat(record(), Heartbeat(1001 + HEARTBEAT_DURABLE_SECONDS, 30.0, 50.0))
    assert (directory / "heartbeat").read_text() == "30 50.0\n"
    assert os.lstat(directory / "heartbeat").st_ino != before.st_ino


def settled_four_slot_node(tmp_path: Path) -> Harness:
    """A factory whose four slots were filled one pass ago and read once since: nothing changes now."""
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()  # fills the four slots
    harness.clock.advance(10)
    harness.run_pass()
    return harness


def test_a_pass_over_an_unchanged_node_opens_no_record_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = settled_four_slot_node(tmp_path)
    counter = OpenCounter(monkeypatch)
    for _ in range(3):
        harness.clock.advance(10)
        report = harness.run_pass()
        assert [slot.state for slot in report.slots] == ["Running"] * 4
        assert counter.take() == []


def test_a_restarted_factory_reads_each_record_once_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    age_everything(tmp_path / "root")
    harness.store = Store(harness.paths)  # a restart over the same state directory
    harness.factory = harness.new_factory()
    counter = OpenCounter(monkeypatch)
    harness.clock.advance(10)
    harness.run_pass()
    assert counter.take().count("machine.json") == 4
    harness.clock.advance(10)
    harness.run_pass()
    assert counter.take() == []


def test_heartbeats_between_durable_ones_reach_disk_in_one_node_file_per_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass renames one file for all its machines' heartbeats; a restart reads the newest."""
    store = Store(Paths(tmp_path))
    others = [record(1000), MachineRecord("f1-04.example.com", 4, "22222222-2222-3333-4444-555555555555", "atlas",
                                          "vm-raw", 2, 1000, 4600, "169.254.169.4", 2.0, 4096)]
    for machine in others:
        store.begin_creation(machine)
        store.mark_started(machine, 1001)
    renames: list[str] = []
    real_replace = os.replace

    def counting_replace(source: str, target: str, **options: object) -> None:
        renames.append(os.path.basename(os.fspath(target)))
        real_replace(source, target, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", counting_replace)
    for machine in others:
        store.write_heartbeat(machine, Heartbeat(1011, 3.0, 30.0))
    store.flush_heartbeats()
    assert renames == ["heartbeats.json"]
    for machine in others:
        loaded = Store(Paths(tmp_path)).slot_binding(machine.name)
        assert loaded is not None and loaded.heartbeat == Heartbeat(1011, 3.0, 30.0)
        directory = tmp_path / "var/lib/vac/machines" / machine.directory_name
        assert '"time": 1001' in (directory / "heartbeat.json").read_text()  # the durable one, a minute's worth


def test_a_heartbeat_not_yet_flushed_is_read_by_the_same_store(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    store.begin_creation(record())
    store.mark_started(record(), 1001)
    store.write_heartbeat(record(), Heartbeat(1011, 3.0, 30.0))
    assert store.slot_binding(NAME).heartbeat == Heartbeat(1011, 3.0, 30.0)  # type: ignore[union-attr]


class ParseCounter:
    """Counts the store's parses of machine records, by wrapping its parsers."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parsed: list[str] = []
        real_record = MachineRecord.from_json.__func__  # type: ignore[attr-defined]
        real_time = vacd.markerfiles.parse_time
        real_heartbeat = vacd.markerfiles.parse_heartbeat_json

        def record_from_json(cls: type, raw_text: str) -> MachineRecord:
            self.parsed.append("machine.json")
            return real_record(cls, raw_text)  # type: ignore[no-any-return]

        def parse_time(raw_text: str) -> int:
            self.parsed.append("started")
            return real_time(raw_text)

        def parse_heartbeat_json(raw_text: str, path: Path) -> Heartbeat:
            self.parsed.append(path.name)
            return real_heartbeat(raw_text, path)

        monkeypatch.setattr(MachineRecord, "from_json", classmethod(record_from_json))
        monkeypatch.setattr(vacd.markerfiles, "parse_time", parse_time)
        monkeypatch.setattr(vacd.markerfiles, "parse_heartbeat_json", parse_heartbeat_json)
        monkeypatch.setattr(vacd.heartbeatfiles, "parse_heartbeat_json", parse_heartbeat_json)

    def take(self) -> list[str]:
        parsed, self.parsed = self.parsed, []
        return sorted(parsed)


def test_a_pass_over_an_unchanged_node_parses_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = settled_four_slot_node(tmp_path)
    parses = ParseCounter(monkeypatch)
    for _ in range(3):
        harness.clock.advance(10)
        report = harness.run_pass()
        assert [slot.state for slot in report.slots] == ["Running"] * 4
        assert parses.take() == []
    # The heartbeats still move every pass (a slot shows the last pass's, read before this
    # pass writes its own): they come from memory, not from a parse.
    assert {slot.machine.heartbeat.time for slot in report.slots if slot.machine and slot.machine.heartbeat} == {
        int(harness.clock()) - 10}


def test_a_record_another_writer_adds_between_lookups_is_seen(tmp_path: Path) -> None:
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    assert store.slot_binding(NAME).destroy_request is None  # type: ignore[union-attr]
    assert store.slot_binding(NAME).destroy_request is None  # type: ignore[union-attr]  # now from the parsed machine
    write_atomic(directory / "destroy_requested", '{"requested_time": 1500, "shutdown_message": null}\n')
    stopping = store.slot_binding(NAME)
    assert stopping is not None and stopping.destroy_request is not None
    assert stopping.destroy_request.requested_time == 1500
    (directory / "destroy_requested").unlink()
    assert store.slot_binding(NAME).destroy_request is None  # type: ignore[union-attr]


def test_a_machine_record_edited_in_place_with_its_size_and_mtime_kept_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the ctime shows this edit: the parsed machine must not hide it."""
    store = Store(Paths(tmp_path))
    directory = store.begin_creation(record())
    store.mark_started(record(), 1001)
    age_everything(tmp_path)
    first = store.slot_binding(NAME)
    assert first is not None and store.slot_binding(NAME) is first  # answered from the parsed machine
    path = directory / "machine.json"
    old = os.lstat(path)
    edited = path.read_text().replace('"shutdown_time": 4600', '"shutdown_time": 4000')
    assert len(edited) == old.st_size
    with open(path, "r+") as in_place:
        in_place.write(edited)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    parses = ParseCounter(monkeypatch)
    second = store.slot_binding(NAME)
    assert second is not None and second.record.shutdown_time == 4000
    assert parses.take() == ["heartbeat.json", "machine.json", "started"]


def test_a_machine_whose_files_are_within_the_racy_window_is_parsed_at_every_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in the same timestamp tick could keep every key: such files are never trusted."""
    writer = Store(Paths(tmp_path))
    writer.begin_creation(record())
    writer.mark_started(record(), 1001)
    store = Store(Paths(tmp_path))  # did not write them, and they are seconds old
    parses = ParseCounter(monkeypatch)
    store.slot_binding(NAME)
    store.slot_binding(NAME)
    assert parses.take().count("machine.json") == 2


def test_a_pass_lstats_each_record_file_once_and_opens_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work left in an unchanged pass: one lstat per record file (a change by hand is seen at once)."""
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.clock.advance(10)
    harness.run_pass()
    looked_at: list[str] = []
    real_lstat = os.lstat

    def counting_lstat(path: "os.PathLike[str] | str", *arguments: object, **options: object) -> os.stat_result:
        looked_at.append(os.path.basename(os.fspath(path)))
        return real_lstat(path, *arguments, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", counting_lstat)
    counter = OpenCounter(monkeypatch)
    harness.clock.advance(10)
    harness.run_pass()
    assert counter.take() == []
    per_slot = sorted(name for name in looked_at if name in (
        "machine.json", "started", "heartbeat.json", "heartbeat", "finished.json", "finished", "destroy_requested"))
    assert per_slot == sorted(["machine.json", "started", "heartbeat.json", "heartbeat", "finished.json", "finished",
                               "destroy_requested"] * 4)
    # The node file is this store's own: looked at once, after its write, not once a slot.
    assert looked_at.count("heartbeats.json") == 1
