"""vacd.observations: the one collaborator the daemon, the simulator and the tests wire (issue 9 item 1)."""

from __future__ import annotations

import os
from pathlib import Path

from vacd.config import Settings
from vacd.factory import FactoryHooks
from vacd.guestapi.joboutputs import store_upload
from vacd.mjf import read_features, write_features
from vacd.observations import GuestObservations
from vacd.recordformats import SHUTDOWN_MESSAGE_FILE
from vacd.records import MachineRecord, StoredMachine

CREATED = 1_700_000_000
QUOTA = 1024 * 1024


def stored_machine(directory: Path) -> StoredMachine:
    record = MachineRecord(
        name="f1-00.example.com", ordinal=0, uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427", machinetype="atlas",
        machine_model="vm-raw", processors=1, created_time=CREATED, shutdown_time=CREATED + 86_400,
        ip_address="169.254.169.0", hs06=1.0, mb=2048,
    )
    (directory / "joboutputs").mkdir(parents=True, exist_ok=True)
    return StoredMachine(record, directory, CREATED, None, None, None)


def test_heartbeat_time_is_the_last_receipt_by_the_guest_api_not_the_file_mtime(tmp_path: Path) -> None:
    stored = stored_machine(tmp_path)
    store_upload(tmp_path / "joboutputs", "heartbeat", b"alive", CREATED + 60, QUOTA)
    store_upload(tmp_path / "joboutputs", "heartbeat", b"alive", CREATED + 600, QUOTA)
    os.utime(tmp_path / "joboutputs" / "heartbeat", (CREATED + 5, CREATED + 5))
    assert GuestObservations().heartbeat_file_mtime(stored, "heartbeat") == CREATED + 600


def test_heartbeat_written_straight_into_the_directory_counts_only_as_a_regular_file(tmp_path: Path) -> None:
    stored = stored_machine(tmp_path)
    joboutputs = tmp_path / "joboutputs"
    (joboutputs / "beat").write_text("alive")
    os.utime(joboutputs / "beat", (CREATED + 300, CREATED + 300))
    (joboutputs / "linked").symlink_to(joboutputs / "beat")
    observations = GuestObservations()
    assert observations.heartbeat_file_mtime(stored, "beat") == CREATED + 300
    assert observations.heartbeat_file_mtime(stored, "linked") is None
    assert observations.heartbeat_file_mtime(stored, "never-written") is None


def test_outcome_time_is_the_first_receipt_of_the_shutdown_message(tmp_path: Path) -> None:
    stored = stored_machine(tmp_path)
    observations = GuestObservations()
    assert observations.shutdown_message_time(stored) is None
    store_upload(tmp_path / "joboutputs", SHUTDOWN_MESSAGE_FILE, b"200 Success\n", CREATED + 100, QUOTA)
    store_upload(tmp_path / "joboutputs", SHUTDOWN_MESSAGE_FILE, b"200 Success\n", CREATED + 900, QUOTA)
    assert observations.shutdown_message_time(stored) == CREATED + 100


def test_a_lowered_shutdown_time_reaches_the_guests_machine_and_job_features(tmp_path: Path) -> None:
    stored = stored_machine(tmp_path)
    settings = Settings(vac_space="vac01.example.com", factory_name="f1.example.com", total_processors=1,
                        host_processors=1, gocdb_sitename="UKI-TEST")
    write_features(tmp_path, settings, stored.record, now=CREATED)
    GuestObservations().lower_shutdown_time(stored, CREATED + 3600, CREATED + 600)
    assert read_features(tmp_path, "machinefeatures")["shutdowntime"] == str(CREATED + 3600)
    assert read_features(tmp_path, "jobfeatures")["shutdowntime_job"] == str(CREATED + 3600)


def test_install_sets_the_three_observation_hooks_and_keeps_the_others() -> None:
    def account(*_: object) -> None:
        return None

    observations = GuestObservations()
    hooks = observations.install(FactoryHooks(account=account))
    assert hooks.account is account
    assert hooks.heartbeat_file_mtime == observations.heartbeat_file_mtime
    assert hooks.shutdown_message_time == observations.shutdown_message_time
    assert hooks.lower_shutdown_time == observations.lower_shutdown_time


def test_the_daemon_wires_the_same_observations(tmp_path: Path) -> None:
    from vacd.daemon import Daemon
    from vacd.config import Config
    from vacd.paths import Paths

    settings = Settings(vac_space="vac01.example.com", factory_name="f1.example.com", total_processors=1,
                        host_processors=1, gocdb_sitename="UKI-TEST")
    daemon = Daemon(Paths(tmp_path), Config(settings, {}), "f1.example.com", 1)
    hooks = daemon._hooks()
    for name in ("heartbeat_file_mtime", "shutdown_message_time", "lower_shutdown_time"):
        bound = getattr(hooks, name)
        assert isinstance(bound.__self__, GuestObservations) and bound.__func__ is getattr(GuestObservations, name)
