"""Identity binding: which machine a source address is, as the store changes under the cache."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacd.guestapi.conftest import Site
from vacd.atomicfile import write_atomic
from vacd.guestapi.machines import MachineResolver, StatCache, default_source_to_ordinal
from vacd.records import FinishRecord


class SteppingClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "source, ordinal",
    [
        ("169.254.169.3", 3),
        ("169.254.169.0", 0),
        ("169.254.169.249", 249),
        ("169.254.170.0", 250),
        ("169.254.169.253", None),
        ("169.254.169.254", None),
        ("10.0.0.3", None),
        ("127.0.0.1", None),
        ("::ffff:169.254.169.7", 7),
        ("fe80::544d:a9ff:fefe:a903", 3),
        ("fe80::544d:a9ff:fefe:a903%vacbr0", 3),
        ("fe80::544d:a9ff:feaa:a903", None),  # MAC 56:4D:A9:AA:... is no slot's
        ("fe80::564d:a9ff:fefe:a903", None),  # universal/local bit not flipped: not our MAC
        ("fe80::1", None),
        ("2001:db8::544d:a9ff:fefe:a903", None),  # not link-local
        ("not an address", None),
        ("", None),
    ],
)
def test_source_addresses_map_to_slots(source: str, ordinal: object) -> None:
    assert default_source_to_ordinal(source) == ordinal


@given(st.text(max_size=60))
def test_source_mapping_never_raises(source: str) -> None:
    result = default_source_to_ordinal(source)
    assert result is None or result >= 0


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock(2_000_000_000.0)


@pytest.fixture
def resolver(site: Site, clock: SteppingClock) -> MachineResolver:
    return MachineResolver(site.paths, site.store, clock)


def test_bound_slot_resolves_to_its_machine(site: Site, resolver: MachineResolver) -> None:
    record, directory = site.create_machine(3)
    machine = resolver.machine_for(3, site.settings)
    assert machine is not None
    assert machine.record == record
    assert machine.directory == directory
    assert machine.mac_address == "56:4D:A9:FE:A9:03"
    assert (machine.factory_name, machine.vac_space) == ("f1.example.com", "vac01.example.com")


def test_free_slot_resolves_to_nothing(site: Site, resolver: MachineResolver) -> None:
    assert resolver.machine_for(4, site.settings) is None
    assert resolver.machine_for(10**9, site.settings) is None


def test_finished_machine_is_served_nothing_even_when_cached(site: Site, resolver: MachineResolver) -> None:
    record, _directory = site.create_machine(3)
    assert resolver.machine_for(3, site.settings) is not None
    site.store.finish(record, FinishRecord(1_700_050_000, None, None, record.created_time, None, 0.0))
    assert resolver.machine_for(3, site.settings) is None


def test_machine_being_stopped_is_served_until_it_finishes(site: Site, resolver: MachineResolver) -> None:
    record, _directory = site.create_machine(3)
    site.store.request_destroy(record, now=1_700_050_000, shutdown_message=None)
    assert resolver.machine_for(3, site.settings) is not None
    site.store.finish(record, FinishRecord(1_700_050_030, None, None, record.created_time, None, 0.0))
    assert resolver.machine_for(3, site.settings) is None


def test_slot_rebound_to_a_new_machine_serves_the_new_one(site: Site, resolver: MachineResolver) -> None:
    old, _ = site.create_machine(3)
    assert resolver.machine_for(3, site.settings).record == old  # type: ignore[union-attr]
    site.store.finish(old, FinishRecord(1_700_050_000, None, None, old.created_time, None, 0.0))
    site.store.free_slot(old)
    assert resolver.machine_for(3, site.settings) is None
    new, _ = site.create_machine(3, created_time=1_700_060_000, uuid="22222222-2222-4222-8222-222222222222")
    machine = resolver.machine_for(3, site.settings)
    assert machine is not None and machine.record == new


def test_old_files_are_cached_and_replacements_seen(site: Site, resolver: MachineResolver, clock: SteppingClock) -> None:
    _record, directory = site.create_machine(3)
    # Files written long ago are cached; an atomic replacement has a new inode and is seen.
    old = clock.now - 3600
    for root, directories, files in os.walk(site.paths.state_dir):
        for name in directories + files:
            os.utime(os.path.join(root, name), (old, old))
    machine = resolver.machine_for(3, site.settings)
    assert machine is not None
    assert machine.files.read("jobfeatures/job_id") == b"1b4e28ba-2fa1-11d2-883f-000000000003"
    assert resolver.machine_for(3, site.settings) is machine  # the binding itself is cached
    write_atomic(directory / "jobfeatures" / "job_id", "replaced")
    assert machine.files.read("jobfeatures/job_id") == b"replaced"


def test_replacing_a_top_level_file_is_seen_through_a_new_binding(
    site: Site, resolver: MachineResolver, clock: SteppingClock
) -> None:
    _record, directory = site.create_machine(3)
    old = clock.now - 3600
    for root, directories, files in os.walk(site.paths.state_dir):
        for name in directories + files:
            os.utime(os.path.join(root, name), (old, old))
    machine = resolver.machine_for(3, site.settings)
    assert machine is not None and machine.files.read("user_data") is not None
    write_atomic(directory / "user_data", "new user data")
    again = resolver.machine_for(3, site.settings)
    assert again is not None and again is not machine
    assert again.files.read("user_data") == b"new user data"


def test_recent_files_are_reread_every_time(tmp_path: Path) -> None:
    cache = StatCache(lambda: os.stat(tmp_path).st_mtime)  # "now" is always within the racy window
    target = tmp_path / "value"
    target.write_bytes(b"one")
    assert cache.read(str(target)) == b"one"
    # An in-place rewrite of the same size within the same clock tick keeps the signature
    # (inode, size, perhaps mtime); the racy rule means it was never cached.
    with open(target, "r+b") as rewrite:
        rewrite.write(b"two")
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.read(str(target)) == b"two"


def test_missing_directories_and_non_files_read_as_none(tmp_path: Path) -> None:
    cache = StatCache()
    assert cache.read(str(tmp_path / "missing")) is None
    assert cache.read(str(tmp_path)) is None
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    assert cache.read(str(tmp_path / "link")) is None


def test_factory_rename_changes_slot_names(site: Site, resolver: MachineResolver) -> None:
    site.create_machine(3)
    renamed = replace(site.settings, factory_name="f2.example.com")
    assert resolver.machine_for(3, renamed) is None
    assert resolver.machine_for(3, site.settings) is not None


def test_unreadable_record_is_served_nothing(site: Site, resolver: MachineResolver) -> None:
    _record, directory = site.create_machine(3)
    (directory / "machine.json").write_text("{not json")
    assert resolver.machine_for(3, site.settings) is None
