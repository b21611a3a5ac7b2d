"""One slot's trouble stays in that slot, and a fault outside vacd costs latency, never the node.

Issue 8 items 1, 5, 7, 9 and 11: per-slot error boundaries with backoff, no race between the
loop and its thread pool (a real ThreadPoolExecutor and a backend that takes time), machines
beyond the configured slot range, policing under the last good configuration after a bad
reload, and a steady clock that a wall-clock jump does not move.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from tests.fakes import SlowBackend
from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.clock import ClockJumpWatch, SteadyClock
from vacd.config import Config
from vacd.errors import ConfigErrors, ConfigProblem
from vacd.factory import SLOT_ERROR_FIRST_BACKOFF_SECONDS, Factory, FactoryHooks
from vacd.outcomes import EXCEEDED_WALLCLOCK
from vacd.records import StoredMachine

BROKEN = ConfigErrors([ConfigProblem("/etc/vac.conf", 12, "settings", "total_processors", "expected an integer, got 'x'")])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-act")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)


def names(count: int) -> list[str]:
    return [f"f1-0{ordinal}.example.com" for ordinal in range(count)]


# ---------------------------------------------------------------- item 1: error boundaries
class FailingHeartbeatLookup:
    """The heartbeat-file hook raises for one machine, as a bug or an odd file would."""

    def __init__(self, failing_name: str) -> None:
        self.failing_name = failing_name
        self.calls: dict[str, int] = {}

    def __call__(self, stored: StoredMachine, name: str) -> float:
        self.calls[stored.record.name] = self.calls.get(stored.record.name, 0) + 1
        if stored.record.name == self.failing_name:
            raise ValueError("odd heartbeat file")
        return float(stored.started_time or 0)


def test_slot_step_that_raises_is_contained_counted_and_backed_off(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "lhcb", heartbeat_file="heartbeat", fizzle_seconds=60, heartbeat_seconds=0)
    harness = Harness(tmp_path, make_settings(), machinetype)
    lookup = FailingHeartbeatLookup("f1-01.example.com")
    harness.factory.hooks.heartbeat_file_mtime = lookup
    harness.run_pass()  # fills the four slots
    harness.clock.advance(1)
    report = harness.run_pass()

    [error] = report.slot_errors
    assert (error.machine_name, error.step, error.count) == ("f1-01.example.com", "police", 1)
    assert "ValueError: odd heartbeat file" in error.error
    assert error.retry_at == report.now + SLOT_ERROR_FIRST_BACKOFF_SECONDS
    assert harness.factory.slot_error_totals["police"] == 1
    states = {slot.identity.machine_name: slot.state for slot in report.slots}
    assert states == {"f1-00.example.com": "Running", "f1-01.example.com": "Error",
                      "f1-02.example.com": "Running", "f1-03.example.com": "Running"}
    # The slot in error is not free: nothing is created over it.
    assert report.decisions is not None and report.decisions.creates == ()

    calls_before = lookup.calls["f1-01.example.com"]
    harness.clock.advance(1)
    report = harness.run_pass()  # within its backoff: not retried hot
    assert lookup.calls["f1-01.example.com"] == calls_before
    assert report.slot_errors[0].count == 1

    harness.clock.advance(SLOT_ERROR_FIRST_BACKOFF_SECONDS)
    report = harness.run_pass()  # retried, fails again: the backoff doubles, since is kept
    again = report.slot_errors[0]
    assert again.count == 2 and again.since == error.since
    assert again.retry_at == report.now + 2 * SLOT_ERROR_FIRST_BACKOFF_SECONDS

    lookup.failing_name = ""
    harness.clock.advance(2 * SLOT_ERROR_FIRST_BACKOFF_SECONDS)
    report = harness.run_pass()
    assert report.slot_errors == []
    assert {slot.state for slot in report.slots} == {"Running"}


def test_other_slots_are_policed_while_one_slot_keeps_failing(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "lhcb", heartbeat_file="heartbeat", fizzle_seconds=60, heartbeat_seconds=0)
    harness = Harness(tmp_path, make_settings(), machinetype)
    harness.factory.hooks.heartbeat_file_mtime = FailingHeartbeatLookup("f1-02.example.com")
    harness.run_pass()
    harness.clock.advance(3601)  # every machine is past its wallclock limit
    harness.run_pass()
    shutdowns = {name for action, name in harness.backend.actions if action == "shutdown"}
    assert shutdowns == {"f1-00.example.com", "f1-01.example.com", "f1-03.example.com"}


# ---------------------------------------------------------------- item 5: the loop and its pool
def test_zombie_destroy_finishes_before_its_slot_is_created_into(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    backend = SlowBackend()
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "atlas"), backend=backend, executor=pool)
    backend.add_foreign("f1-00.example.com", "00000000-0000-0000-0000-000000000000")
    backend.hold_destroys()
    report = harness.run_pass()
    assert report.decisions is not None and report.decisions.creates == ()
    assert report.slots[0].state == "Stopping"
    harness.clock.advance(1)
    report = harness.run_pass()  # the destroy is still running on the pool
    assert report.decisions is not None and report.decisions.creates == ()
    assert backend.created_names() == []

    backend.destroys_may_finish.set()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    harness.clock.advance(1)
    report = harness.run_pass()
    assert report.decisions is not None and [create.ordinal for create in report.decisions.creates] == [0]
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    assert backend.created_names() == ["f1-00.example.com"]
    assert backend.actions.index(("destroy", "f1-00.example.com")) < backend.actions.index(("create", "f1-00.example.com"))


def test_slot_being_created_on_the_pool_is_starting_and_not_judged(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    backend = SlowBackend()
    harness = Harness(tmp_path, make_settings(total_processors=2, host_processors=2),
                      make_machinetype(tmp_path, "atlas"), backend=backend, executor=pool)
    backend.hold_creates()
    harness.run_pass()
    harness.clock.advance(1)
    report = harness.run_pass()  # no domain yet, a record without `started`: must not be finalised
    assert report.finished == []
    assert [slot.state for slot in report.slots] == ["Starting", "Starting"]
    assert harness.factory.in_flight() == {name: "create" for name in names(2)}
    backend.creates_may_finish.set()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    report = harness.run_pass()
    assert [slot.state for slot in report.slots] == ["Running", "Running"]


def test_wait_for_background_work_waits_for_every_destroy(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    backend = SlowBackend(seconds=0.05)
    harness = Harness(tmp_path, make_settings(draining=True), make_machinetype(tmp_path, "atlas"),
                      backend=backend, executor=pool)
    for name in names(4):
        backend.add_foreign(name, "00000000-0000-0000-0000-000000000000")
    harness.run_pass()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    assert backend.machines == {}
    assert harness.factory.in_flight() == {}


def test_creation_failures_from_pool_threads_back_off_once_each(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    backend = SlowBackend(seconds=0.01)
    backend.fail_creates_of.add("vmlinuz")
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"), backend=backend, executor=pool)
    harness.run_pass()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    assert harness.factory.slot_error_totals["create"] == 4
    report = harness.run_pass()  # the four failures were counted under the lock: 2**3 * 30 s
    assert report.decisions is not None and report.decisions.creates == ()
    assert len(report.finished) == 4


# ---------------------------------------------------------------- item 7: beyond the range
def test_lowered_host_processors_keeps_managing_machines_beyond_the_range(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    assert sorted(harness.backend.machines) == names(4)
    smaller = make_settings(total_processors=2, host_processors=2)
    harness.config.config = dataclasses.replace(harness.config.config, settings=smaller)
    harness.clock.advance(10)
    report = harness.run_pass()
    beyond = {slot.identity.machine_name: slot.state for slot in report.slots if slot.beyond_range}
    assert beyond == {"f1-02.example.com": "Running", "f1-03.example.com": "Running"}

    harness.clock.advance(3600)  # past the wallclock limit: every machine is stopped, in range or not
    harness.run_pass()
    harness.clock.advance(31)
    harness.run_pass()
    assert {name for action, name in harness.backend.actions if action == "destroy"} == set(names(4))
    report = harness.run_pass()
    finished = {record.name: finish.shutdown_message for record, finish in report.finished}
    assert finished["f1-02.example.com"] == EXCEEDED_WALLCLOCK
    assert finished["f1-03.example.com"] == EXCEEDED_WALLCLOCK
    # Slots beyond the range are released once their machine is gone, and never refilled.
    report = harness.run_pass()
    assert [slot.identity.ordinal for slot in report.slots] == [0, 1]
    assert all(create.ordinal < 2 for create in (report.decisions.creates if report.decisions else ()))
    assert not (harness.paths.slots_dir / "f1-03.example.com").exists()


def test_renamed_factory_leaves_the_old_machine_its_address_until_it_is_gone(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    renamed = make_settings(total_processors=1, host_processors=1, factory_name="f9.example.com")
    harness.config.config = dataclasses.replace(harness.config.config, settings=renamed)
    harness.clock.advance(10)
    report = harness.run_pass()
    # f9-00 would take 169.254.169.0, which f1-00 still uses: nothing is created.
    assert report.decisions is not None and report.decisions.creates == ()
    assert [(slot.identity.machine_name, slot.beyond_range) for slot in report.slots] == [
        ("f9-00.example.com", False), ("f1-00.example.com", True)]
    old = harness.store.slot_binding("f1-00.example.com")
    assert old is not None
    harness.guest_says(old, "200 Success")
    harness.backend.power_off("f1-00.example.com")
    harness.clock.advance(10)
    report = harness.run_pass()
    assert [record.name for record, _ in report.finished] == ["f1-00.example.com"]
    harness.clock.advance(1)
    report = harness.run_pass()
    assert report.decisions is not None and [create.ordinal for create in report.decisions.creates] == [0]
    assert "f9-00.example.com" in harness.backend.machines


def test_domain_named_for_a_slot_beyond_the_range_with_no_record_is_a_zombie(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1, draining=True),
                      make_machinetype(tmp_path, "atlas"))
    harness.backend.add_foreign("f1-07.example.com", "00000000-0000-0000-0000-000000000007")
    harness.backend.add_foreign("someone-elses-vm", "00000000-0000-0000-0000-000000000008")
    harness.run_pass()
    assert [name for action, name in harness.backend.actions if action == "destroy"] == ["f1-07.example.com"]
    assert "someone-elses-vm" in harness.backend.machines


# ---------------------------------------------------------------- item 9: a bad reload
def test_bad_reload_keeps_policing_finalising_and_accounting_under_the_last_good_config(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    accounted: list[str] = []
    harness.factory.hooks.on_finished.append(lambda settings, machinetype, record, finish: accounted.append(record.name))
    harness.run_pass()
    harness.config.broken = BROKEN
    harness.backend.power_off("f1-00.example.com")
    harness.clock.advance(3601)
    report = harness.run_pass()
    assert report.config_error is not None and "/etc/vac.conf:12" in report.config_error
    assert report.settings is not None  # the last good one
    assert [(fault.kind, fault.since) for fault in report.faults] == [("config", report.now)]
    assert report.decisions is not None and report.decisions.creates == ()
    assert report.decisions.outlook.gate is not None and report.decisions.outlook.gate.startswith("config: ")
    assert accounted == ["f1-00.example.com"]  # finalised and accounted
    shutdowns = {name for action, name in harness.backend.actions if action == "shutdown"}
    assert shutdowns == set(names(4)[1:])  # policed: past their wallclock

    harness.clock.advance(31)
    report = harness.run_pass()
    assert report.faults[0].since == report.now - 31  # since-when is kept across passes
    harness.run_pass()
    assert sorted(accounted) == names(4)
    assert harness.backend.created_names() == names(4)  # nothing created while broken

    harness.config.broken = None
    report = harness.run_pass()
    assert report.faults == [] and report.config_error is None
    # The wallclock endings were the factory's, not aborts: the slots refill at once.
    assert report.decisions is not None and len(report.decisions.creates) == 4


def test_bad_configuration_from_the_start_uses_the_initial_config_it_was_given(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    config: Config = harness.config.config
    harness.config.broken = BROKEN
    factory = Factory(harness.store, harness.backend, harness.config, harness.executor, clock=harness.clock,
                      load_average=lambda: 0.0, host_cpu_count=4, vacd_start_time=int(harness.clock()),
                      hooks=FactoryHooks(), tie_break=random.Random(0), initial_config=config)
    harness.clock.advance(3601)
    report = factory.run_pass()
    assert report.settings == config.settings
    assert ("shutdown", "f1-00.example.com") in harness.backend.actions


# ---------------------------------------------------------------- item 6 (listing) and faults
def test_failed_listing_is_a_fault_with_its_since_time_until_it_clears(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.backend.fail_listing = True
    first = harness.run_pass()
    harness.clock.advance(60)
    second = harness.run_pass()
    assert [(fault.kind, fault.since) for fault in second.faults] == [("listing", first.now)]
    harness.backend.fail_listing = False
    assert harness.run_pass().faults == []


# ---------------------------------------------------------------- item 11: clock jumps
class FakeClocks:
    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.monotonic = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds


def steady_harness(tmp_path: Path, clocks: FakeClocks) -> tuple[Harness, Factory]:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    steady = SteadyClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)
    factory = Factory(harness.store, harness.backend, harness.config, harness.executor, clock=steady,
                      load_average=lambda: 0.0, host_cpu_count=4, vacd_start_time=int(steady()),
                      hooks=FactoryHooks(), tie_break=random.Random(0))
    return harness, factory


@pytest.mark.parametrize("jump_seconds", [86400, -86400])
def test_wall_clock_jump_of_a_day_neither_stops_every_machine_nor_leaves_them_unpoliced(
    tmp_path: Path, jump_seconds: int
) -> None:
    clocks = FakeClocks()
    harness, factory = steady_harness(tmp_path, clocks)
    factory.run_pass()
    clocks.advance(600)
    clocks.wall += jump_seconds  # date -s, or a bad NTP server
    factory.run_pass()
    assert not any(action in ("shutdown", "destroy") for action, _ in harness.backend.actions)
    clocks.advance(3001)  # just past 3600 s of real time since creation: the wallclock limit
    factory.run_pass()
    shutdowns = {name for action, name in harness.backend.actions if action == "shutdown"}
    assert shutdowns == set(names(4))


def test_clock_jump_watch_reports_each_jump_once() -> None:
    clocks = FakeClocks()
    steady = SteadyClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)
    said: list[float] = []
    watch = ClockJumpWatch(steady, said.append)
    clocks.advance(30)
    clocks.wall += 5  # NTP slewing: nothing to say
    watch.check()
    clocks.wall += 86400
    watch.check()
    watch.check()
    clocks.wall -= 86400
    watch.check()
    assert said == [86405.0, 5.0]


def test_steady_clock_follows_the_monotonic_clock_from_the_wall_time_it_started_at() -> None:
    clocks = FakeClocks()
    steady = SteadyClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)
    start = steady()
    assert start == clocks.wall
    clocks.monotonic += 10
    clocks.wall -= 3600
    assert steady() == start + 10
    assert steady.wall_skew() == -3610



# ---------------------------------------------------------------- item 6: nothing slow on the loop
def test_slow_user_data_fetch_runs_on_the_pool_not_the_loop(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "atlas"), executor=pool)
    template_server_answers = threading.Event()
    contextualising = threading.Event()

    def contextualise(settings: object, machinetype: object, record: object, now: int) -> None:
        contextualising.set()
        template_server_answers.wait(30)  # a user_data URL that takes its time

    harness.factory.hooks.contextualise = contextualise
    report = harness.run_pass()  # returns although the fetch has not finished
    assert report.decisions is not None and [create.ordinal for create in report.decisions.creates] == [0]
    assert contextualising.wait(30) and not template_server_answers.is_set()
    assert harness.backend.created_names() == []
    template_server_answers.set()
    assert harness.factory.wait_for_background_work(timeout_seconds=30)
    assert harness.backend.created_names() == ["f1-00.example.com"]


def test_image_download_holds_no_action_worker_and_keeps_its_slot_in_flight(tmp_path: Path) -> None:
    one_worker = ThreadPoolExecutor(max_workers=1)
    try:
        harness = Harness(tmp_path, make_settings(total_processors=2, host_processors=2),
                          make_machinetype(tmp_path, "atlas", root_kernel="https://images.invalid/vmlinuz"),
                          executor=one_worker)
        downloads: list["Future[dict[str, Path]]"] = []

        def prefetch(urls: Sequence[str], public_only: bool) -> "Future[dict[str, Path]]":
            downloads.append(Future())
            return downloads[-1]

        harness.factory.hooks.prefetch_images = prefetch
        harness.backend.add_foreign("f1-05.example.com", "00000000-0000-0000-0000-000000000005")
        report = harness.run_pass()
        assert report.decisions is not None and len(report.decisions.creates) == 2 and len(downloads) == 2
        # Both images are still downloading, yet the one action worker destroys the zombie.
        one_worker.submit(lambda: None).result(timeout=30)
        assert "f1-05.example.com" not in harness.backend.machines
        harness.clock.advance(1)
        report = harness.run_pass()
        assert [slot.state for slot in report.slots] == ["Starting", "Starting"] and report.finished == []
        kernel = tmp_path / "guest" / "vmlinuz"
        for download in downloads:
            download.set_result({"https://images.invalid/vmlinuz": kernel})
        assert harness.factory.wait_for_background_work(timeout_seconds=30)
        assert sorted(harness.backend.created_names()) == names(2)
        assert harness.backend.specs["f1-00.example.com"].root_kernel == kernel
    finally:
        one_worker.shutdown(wait=True)
