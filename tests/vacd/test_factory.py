"""The reconcile loop against an in-memory backend: each test lists what the factory did."""

from __future__ import annotations

import dataclasses
import random
from concurrent.futures import Executor
from pathlib import Path
from typing import Optional

import pytest

from tests.fakes import FakeBackend, InlineExecutor, ManualClock
from vacd.config import Config, Machinetype, Settings
from vacd.backends.base import MachineSpec, ObservedState
from vacd.errors import BackendOutcomeUnknown, ConfigErrors, ConfigProblem
from vacd.factory import PAUSED_GRACE_SECONDS, Factory, FactoryHooks
from vacd.paths import Paths
from vacd.outcomes import EXCEEDED_WALLCLOCK, FAILED_TO_START, HEARTBEAT_NOT_CREATED
from vacd.scheduler import MachinetypeReport
from vacd.guestapi.joboutputs import Sender, store_upload
from vacd.records import StoredMachine
from vacd.store import Store


class StaticConfig:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.broken: Optional[ConfigErrors] = None

    def current(self) -> Config:
        if self.broken is not None:
            raise self.broken
        return self.config


def make_machinetype(tmp_path: Path, name: str, **options: object) -> Machinetype:
    kernel = tmp_path / "guest" / "vmlinuz"
    kernel.parent.mkdir(exist_ok=True)
    kernel.write_bytes(b"kernel")
    fields = dict(
        name=name,
        machinegroup=name,
        machinetype_path=tmp_path / "machinetypes" / name,
        target_share=1.0,
        machine_model="vm-raw",
        root_kernel=str(kernel),
        max_wallclock_seconds=3600,
        min_wallclock_seconds=3600,
        fizzle_seconds=60,
    )
    fields.update(options)
    return Machinetype(**fields)  # type: ignore[arg-type]


def make_settings(**options: object) -> Settings:
    fields = dict(
        vac_space="vac01.example.com",
        factory_name="f1.example.com",
        total_processors=4,
        host_processors=4,
        gocdb_sitename="example.com",
        max_creations_per_cycle=4,
        shutdown_grace_seconds=30,
    )
    fields.update(options)
    return Settings(**fields)  # type: ignore[arg-type]


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        settings: Settings,
        *machinetypes: Machinetype,
        backend: Optional[FakeBackend] = None,
        executor: Optional[Executor] = None,
    ) -> None:
        self.paths = Paths(tmp_path / "root")
        self.paths.ensure_state_dirs()
        self.store = Store(self.paths)
        self.backend = backend or FakeBackend()
        self.executor: Executor = executor or InlineExecutor()
        self.clock = ManualClock()
        self.config = StaticConfig(Config(settings, {mt.name: mt for mt in machinetypes}))
        self.heartbeat_mtimes: dict[str, float] = {}
        self.peer_reports: list[MachinetypeReport] = []
        self.factory = self.new_factory()

    def new_factory(self) -> Factory:
        hooks = FactoryHooks(
            peer_reports=lambda settings, machinetypes, now: self.peer_reports,
            heartbeat_file_mtime=lambda stored, name: self.heartbeat_mtimes.get(stored.record.name),
        )
        return Factory(
            self.store,
            self.backend,
            self.config,
            self.executor,
            clock=self.clock,
            load_average=lambda: 0.0,
            host_cpu_count=4,
            vacd_start_time=int(self.clock()),
            hooks=hooks,
            tie_break=random.Random(0),
        )

    def run_pass(self):  # type: ignore[no-untyped-def]
        return self.factory.run_pass()

    def guest_says(self, stored: StoredMachine, text: str) -> None:
        """The machine's guest PUTs its shutdown_message, as the guest API stores it (with its receipt)."""
        store_upload(stored.directory / "joboutputs", "shutdown_message", text.encode() + b"\n", int(self.clock()),
                     10**6, Sender(stored.record.uuid, stored.record.ip_address))


def test_idle_factory_fills_every_slot_in_one_pass(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    report = harness.run_pass()
    assert harness.backend.created_names() == [f"f1-0{n}.example.com" for n in range(4)]
    assert [create.ordinal for create in report.decisions.creates] == [0, 1, 2, 3]
    for n in range(4):
        stored = harness.store.slot_binding(f"f1-0{n}.example.com")
        assert stored is not None and stored.has_started


def test_creations_are_capped_by_max_creations_per_cycle_seconds_not_per_pass(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(max_creations_per_cycle=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    assert harness.backend.created_names() == ["f1-00.example.com"]
    harness.clock.advance(1)
    report = harness.run_pass()  # woken early (an event): the cycle's one creation is spent
    assert harness.backend.created_names() == ["f1-00.example.com"]
    assert report.decisions is not None and report.decisions.outlook.gate is not None
    assert report.decisions.outlook.gate.startswith("max_creations_per_cycle (1) reached")
    assert report.next_wake_seconds == 29
    harness.clock.advance(29)
    harness.run_pass()
    assert harness.backend.created_names() == ["f1-00.example.com", "f1-01.example.com"]


def test_guest_power_off_is_finalised_with_its_message_and_slot_refilled(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "lhcb"))
    harness.run_pass()
    first = harness.store.slot_binding("f1-00.example.com")
    assert first is not None
    harness.guest_says(first, "200 Success")
    harness.clock.advance(120)
    harness.backend.power_off("f1-00.example.com")
    harness.run_pass()
    finished = harness.store.load_machine(first.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.shutdown_message == "200 Success"
    second = harness.store.slot_binding("f1-00.example.com")
    assert second is not None and second.record.uuid != first.record.uuid
    assert harness.backend.created_names() == ["f1-00.example.com", "f1-00.example.com"]


def test_short_silent_finish_is_reported_as_a_fizzle_and_backs_off(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "cms", fizzle_seconds=600, backoff_seconds=300)
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), machinetype)
    harness.run_pass()
    harness.clock.advance(30)
    harness.backend.power_off("f1-00.example.com")
    report = harness.run_pass()
    (record, finish) = report.finished[0]
    assert finish.shutdown_message == "300 Vac detects fizzle after 0 seconds"
    assert report.decisions.creates == ()
    assert "cms" in report.decisions.outlook.backoff_until


def test_machine_past_wallclock_gets_acpi_then_hard_destroy_after_grace(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.clock.advance(3601)
    harness.run_pass()
    assert ("shutdown", "f1-00.example.com") in harness.backend.actions
    assert ("destroy", "f1-00.example.com") not in harness.backend.actions
    harness.clock.advance(31)
    harness.run_pass()
    assert ("destroy", "f1-00.example.com") in harness.backend.actions
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == EXCEEDED_WALLCLOCK


def test_guest_message_is_never_overwritten_by_the_factory(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None
    (stored.directory / "joboutputs" / "shutdown_message").write_text("300 No more work\n")
    harness.clock.advance(3601)
    harness.run_pass()
    assert harness.store.read_shutdown_message(stored.record) == "300 No more work"


def test_heartbeat_file_never_written_kills_with_700(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "lhcb", heartbeat_file="heartbeat", fizzle_seconds=600)
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), machinetype)
    harness.run_pass()
    harness.clock.advance(599)
    harness.run_pass()
    assert ("shutdown", "f1-00.example.com") not in harness.backend.actions
    harness.clock.advance(2)
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None
    assert harness.store.read_shutdown_message(stored.record) == HEARTBEAT_NOT_CREATED


def test_restart_adopts_running_machines_without_duplicates(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    uuids = {name: machine.uuid for name, machine in harness.backend.machines.items()}
    harness.factory = harness.new_factory()
    harness.clock.advance(10)
    harness.run_pass()
    assert harness.backend.created_names().count("f1-00.example.com") == 1
    assert {name: machine.uuid for name, machine in harness.backend.machines.items()} == uuids
    assert not any(action == "destroy" for action, _ in harness.backend.actions)


def test_machine_created_but_not_marked_started_is_adopted_after_crash(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None
    (stored.directory / "started").unlink()  # as if killed between create and the `started` write
    harness.factory = harness.new_factory()
    harness.run_pass()
    adopted = harness.store.slot_binding("f1-00.example.com")
    assert adopted is not None and adopted.has_started and not adopted.has_finished
    assert harness.backend.created_names() == ["f1-00.example.com"]


def test_record_without_machine_after_crash_is_finalised_as_failed_start(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None
    (stored.directory / "started").unlink()
    harness.backend.machines.clear()  # as if killed after the record was written, before create
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == FAILED_TO_START


def test_zombie_domain_in_a_slot_name_is_destroyed(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.config.config = dataclasses.replace(
        harness.config.config, settings=make_settings(total_processors=1, host_processors=1, draining=True)
    )
    harness.backend.add_foreign("f1-00.example.com", "00000000-0000-0000-0000-000000000000")
    harness.run_pass()
    assert ("destroy", "f1-00.example.com") in harness.backend.actions
    assert "f1-00.example.com" not in harness.backend.machines


def test_domain_with_a_different_uuid_than_the_record_is_a_zombie(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.backend.machines.clear()
    harness.backend.add_foreign("f1-00.example.com", "00000000-0000-0000-0000-000000000000")
    harness.run_pass()
    assert harness.backend.actions[-1] == ("destroy", "f1-00.example.com")


def test_machine_seen_paused_just_after_creation_is_still_starting(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.backend.pause("f1-00.example.com")  # as QEMU is until libvirt resumes its vCPUs
    report = harness.run_pass()
    assert report.slots[0].state == "Starting"
    assert ("destroy", "f1-00.example.com") not in harness.backend.actions


def test_paused_machine_is_destroyed_and_finalised(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    harness.backend.pause("f1-00.example.com")
    harness.clock.advance(31)
    harness.run_pass()
    assert ("destroy", "f1-00.example.com") in harness.backend.actions
    report = harness.run_pass()
    assert report.finished and report.finished[0][0].name == "f1-00.example.com"


def test_bad_configuration_at_first_pass_touches_no_machine_and_creates_nothing(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.config.broken = ConfigErrors([ConfigProblem("/etc/vac.conf", 3, "settings", "vac_space", "missing")])
    report = harness.run_pass()
    assert report.config_error is not None and "/etc/vac.conf:3" in report.config_error
    assert [fault.kind for fault in report.faults] == ["config"]
    assert harness.backend.actions == []


def test_failed_listing_makes_no_destroy_or_create(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.backend.fail_listing = True
    report = harness.run_pass()
    assert report.observe_error is not None
    assert harness.backend.actions == []


def test_creation_failure_backs_off_the_machinetype(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.backend.fail_creates_of.add("vmlinuz")
    harness.run_pass()
    assert harness.paths.factory_error_file.exists()
    report = harness.run_pass()  # finalises the failed slot, then backs off
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert report.decisions.creates == ()
    assert "atlas" in report.decisions.outlook.backoff_until
    harness.backend.fail_creates_of.clear()
    harness.clock.advance(31)
    harness.run_pass()
    assert harness.backend.machines
    assert not harness.paths.factory_error_file.exists()


def test_peer_abort_backs_off_locally(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas", backoff_seconds=600))
    now = int(harness.clock())
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, "300 No work", now - 100)]
    report = harness.run_pass()
    assert report.decisions.creates == ()


def test_site_shutdown_time_lowers_running_machines(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    now = int(harness.clock())
    harness.config.config = dataclasses.replace(
        harness.config.config, settings=make_settings(total_processors=1, host_processors=1, shutdown_time=now + 100)
    )
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None and stored.record.shutdown_time == now + 100


@pytest.mark.parametrize("ordinal", [0, 3])
def test_slot_record_names_follow_vac_layout(tmp_path: Path, ordinal: int) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    harness.run_pass()
    name = f"f1-0{ordinal}.example.com"
    created, machinetype, model = (harness.paths.slots_dir / name).read_text().split()
    assert machinetype == "atlas" and model == "vm-raw"
    assert (harness.paths.machines_dir / f"{created}_atlas_{name}" / "machine.json").exists()


def test_finished_machine_directory_is_deleted_after_machines_dir_days(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "atlas", machines_dir_days=1.0)
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1, draining=False), machinetype)
    harness.run_pass()
    first = harness.store.slot_binding("f1-00.example.com")
    assert first is not None
    (first.directory / "joboutputs" / "shutdown_message").write_text("200 Success\n")
    harness.clock.advance(120)
    harness.run_pass()  # heartbeat
    harness.backend.power_off("f1-00.example.com")
    harness.run_pass()  # finalised, slot refilled
    harness.clock.advance(86400 + 3600)
    harness.factory._next_housekeeping = 0
    harness.run_pass()
    assert not first.directory.exists()
    current = harness.store.slot_binding("f1-00.example.com")
    assert current is not None and current.directory.exists()


def test_no_census_is_run_while_every_processor_is_busy(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"))
    asked: list[int] = []
    harness.factory.hooks.peer_reports = lambda settings, machinetypes, now: asked.append(now) or []
    harness.run_pass()
    assert len(asked) == 1
    harness.run_pass()
    assert len(asked) == 1  # acceptance 28: capacity full, no query sent


def test_backoff_start_and_end_are_logged_once_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas", backoff_seconds=600))
    now = int(harness.clock())
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, "300 No work", now - 100)]
    with caplog.at_level("INFO", logger="vacd.factory"):
        harness.run_pass()
        harness.run_pass()
        harness.clock.advance(10_000)
        harness.run_pass()
    lines = [record.getMessage() for record in caplog.records if "backoff" in record.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("backoff machinetype=atlas until=")
    assert lines[1] == "backoff ended machinetype=atlas"


class CutShortBackend(FakeBackend):
    """libvirtd dies inside createXML: the domain may or may not be running afterwards."""

    def __init__(self, *, domain_survives: bool) -> None:
        super().__init__()
        self.domain_survives = domain_survives

    def create(self, spec: MachineSpec) -> None:
        if self.domain_survives:
            super().create(spec)
        raise BackendOutcomeUnknown("create", spec.name, "End of file while reading data: Input/output error")


@pytest.mark.parametrize("domain_survives", [True, False])
def test_a_creation_cut_short_by_libvirtd_dying_is_judged_by_the_next_listing(
    tmp_path: Path, domain_survives: bool
) -> None:
    backend = CutShortBackend(domain_survives=domain_survives)
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "atlas"), backend=backend)
    harness.run_pass()
    assert not harness.paths.factory_error_file.exists()  # not a creation failure (yet)
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None and not stored.has_started and not stored.has_finished
    report = harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None
    if domain_survives:
        assert stored.has_started and not stored.has_finished, "a running domain under the record's UUID is adopted"
        assert ("destroy", "f1-00.example.com") not in backend.actions
        assert report.finished == []
    else:
        assert report.finished[0][1].shutdown_message == FAILED_TO_START
        assert "atlas" not in report.decisions.outlook.backoff_until  # no local failure backoff for a lost call


def cut_short_creation_listed_paused(tmp_path: Path) -> tuple[Harness, CutShortBackend]:
    """libvirtd died inside createXML and, restarted, lists the domain as it saved it: paused, starting up."""
    backend = CutShortBackend(domain_survives=True)
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "atlas"), backend=backend)
    harness.run_pass()
    backend.pause("f1-00.example.com")
    return harness, backend


def test_a_cut_short_creation_listed_paused_is_not_adopted_and_its_death_is_a_failed_start_not_a_fizzle(
    tmp_path: Path,
) -> None:
    harness, backend = cut_short_creation_listed_paused(tmp_path)
    harness.clock.advance(1)
    harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None and not stored.has_started, "a domain libvirtd may yet kill is not adopted"
    backend.power_off("f1-00.example.com")  # libvirtd's reconnect kills a domain that was not fully started
    harness.clock.advance(1)
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert "atlas" not in report.decisions.outlook.backoff_until


def test_a_cut_short_creation_that_resumes_is_adopted(tmp_path: Path) -> None:
    harness, backend = cut_short_creation_listed_paused(tmp_path)
    harness.clock.advance(1)
    harness.run_pass()
    machine = backend.machines["f1-00.example.com"]
    backend.machines[machine.name] = dataclasses.replace(machine, state=ObservedState.RUNNING)
    harness.clock.advance(1)
    report = harness.run_pass()
    stored = harness.store.slot_binding("f1-00.example.com")
    assert stored is not None and stored.has_started and not stored.has_finished
    assert report.finished == [] and ("destroy", "f1-00.example.com") not in backend.actions


def test_a_cut_short_creation_still_paused_after_the_grace_is_destroyed_as_a_failed_start(tmp_path: Path) -> None:
    harness, backend = cut_short_creation_listed_paused(tmp_path)
    harness.clock.advance(PAUSED_GRACE_SECONDS + 1)
    harness.run_pass()
    assert ("destroy", "f1-00.example.com") in backend.actions
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert "atlas" not in report.decisions.outlook.backoff_until
