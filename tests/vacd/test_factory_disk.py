"""Disk full is a gate, not a crash (issue 8 item 4), on a real, small tmpfs.

The factory's state directory is a tmpfs of 8 MiB mounted for the test (we run as root), so
the free space is the kernel's and ENOSPC is real. Creations must stop with the disk gate's
reason while machines already running are still policed, stopped, finalised and accounted.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.fakes import InlineExecutor
from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.config import Config
from vacd.diskspace import check_disk
from vacd.factory import Factory, FactoryHooks, Fault
from vacd.outcomes import EXCEEDED_WALLCLOCK
from vacd.status import status_document

TMPFS_SIZE = "8m"
FIRST = "f1-00.example.com"
SECOND = "f1-01.example.com"


@pytest.fixture
def tmpfs_root(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/root as a tmpfs of TMPFS_SIZE, unmounted after the test."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


class DiskHarness(Harness):
    """The factory harness with the real disk gate over its (tmpfs) state directory."""

    def new_factory(self) -> Factory:
        hooks = FactoryHooks(heartbeat_file_mtime=lambda stored, name: self.heartbeat_mtimes.get(stored.record.name))
        return Factory(
            self.store,
            self.backend,
            self.config,
            InlineExecutor(),
            clock=self.clock,
            load_average=lambda: 0.0,
            host_cpu_count=4,
            vacd_start_time=int(self.clock()),
            hooks=hooks,
            tie_break=random.Random(0),
            disk_problem=lambda settings: check_disk(self.paths, settings),
        )

    def require_free_space(self, **options: object) -> None:
        config = self.config.config
        self.config.config = Config(dataclasses.replace(config.settings, **options), config.machinetypes)


def fill(directory: Path, leave_bytes: int) -> Path:
    """Write one file in `directory` until its file system has at most `leave_bytes` free."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb") as handle:
        try:
            while True:
                stat = os.statvfs(directory)
                if stat.f_bavail * stat.f_frsize <= leave_bytes:
                    break
                handle.write(chunk)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def two_machines(tmp_path: Path) -> DiskHarness:
    """Two running machines on the tmpfs, made while the gate was off."""
    settings = make_settings(total_processors=2, host_processors=2, min_free_disk_mb=0, min_free_disk_percent=0)
    harness = DiskHarness(tmp_path, settings, make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    assert harness.backend.created_names() == [FIRST, SECOND]
    return harness


@pytest.mark.allow_commands("mount", "umount")
def test_full_disk_stops_creation_but_policing_and_finalising_go_on(tmp_path: Path, tmpfs_root: Path) -> None:
    harness = two_machines(tmp_path)
    filler = fill(tmpfs_root, leave_bytes=1024 * 1024)
    harness.require_free_space(min_free_disk_mb=4, min_free_disk_percent=0)
    harness.clock.advance(3601)  # the first machine is past its max_wallclock_seconds
    second = harness.store.slot_binding(SECOND)
    assert second is not None
    harness.backend.power_off(SECOND)  # the second one powered itself off

    report = harness.run_pass()
    reason = report.decisions.outlook.gate
    assert reason is not None and reason.startswith(f"disk: {harness.paths.state_dir} has ")
    assert reason.endswith("MiB free, needs 4 MiB")
    assert report.decisions.creates == () and harness.backend.created_names() == [FIRST, SECOND]
    assert [record.name for record, _ in report.finished] == [SECOND]
    assert ("shutdown", FIRST) in harness.backend.actions
    since = report.now
    assert report.faults == [Fault("disk", reason, since)]
    document = status_document(report, heartbeats={}, census=None, draining=False, last_error=None)
    assert document["gate"] == reason

    harness.clock.advance(31)  # the grace is over: the hard destroy goes on under the gate
    report = harness.run_pass()
    assert ("destroy", FIRST) in harness.backend.actions
    assert report.decisions.creates == ()
    assert [fault.since for fault in report.faults if fault.kind == "disk"] == [since]  # kept across passes

    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == EXCEEDED_WALLCLOCK
    assert report.decisions.creates == () and harness.backend.created_names() == [FIRST, SECOND]

    filler.unlink()
    harness.clock.advance(100)  # past the abort backoff that EXCEEDED_WALLCLOCK (a 3xx code) started
    report = harness.run_pass()
    assert report.faults == [] and report.decisions.outlook.gate != reason
    assert harness.backend.created_names() == [FIRST, SECOND, FIRST, SECOND]


def full_disk_with_two_machines_to_handle(tmp_path: Path, tmpfs_root: Path) -> DiskHarness:
    """The tmpfs full to the last block; one machine past its time, one powered off."""
    harness = two_machines(tmp_path)
    # The gate off, so that ENOSPC itself is met, in creation too, not only the gate.
    harness.require_free_space(min_free_disk_mb=0, min_free_disk_percent=0)
    fill(tmpfs_root, leave_bytes=0)
    harness.clock.advance(3601)
    harness.backend.power_off(SECOND)
    return harness


@pytest.mark.allow_commands("mount", "umount")
def test_enospc_on_every_write_does_not_raise_out_of_a_pass(tmp_path: Path, tmpfs_root: Path) -> None:
    harness = full_disk_with_two_machines_to_handle(tmp_path, tmpfs_root)
    for _ in range(3):
        report = harness.run_pass()
        assert report.settings is not None and report.decisions is not None
        harness.clock.advance(31)


# The heartbeat write comes before the stop decision: it has a boundary of its own, so a
# full disk costs the heartbeat and never the policing. With not even the stop decision
# recordable, the machine past its time is destroyed at once rather than left running.
@pytest.mark.allow_commands("mount", "umount")
def test_enospc_does_not_stop_policing(tmp_path: Path, tmpfs_root: Path) -> None:
    harness = full_disk_with_two_machines_to_handle(tmp_path, tmpfs_root)
    report = harness.run_pass()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    assert ("destroy", FIRST) in harness.backend.actions
    assert FIRST not in harness.backend.machines
    # Finalising needs the disk: the slots wait in error (not free, nothing created over them).
    assert {error.step for error in report.slot_errors} <= {"finalise", "account"}
    assert report.decisions is not None and report.decisions.creates == ()
