"""vacd itself, as a process, creating real guests through libvirt and QEMU (issue 2).

Each test runs the real `vacd` re-rooted in tmp_path, on the shared test network, with the
tiny test guest whose user_data decides what the payload does. The test reads what vacd
left on disk (Vac's layout) and asks libvirt what runs; every domain is destroyed (by UUID)
at teardown, and vacd is stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import libvirt
import pytest

from tests.integration.conftest import TEST_FACTORY_NAME, TEST_NUM_SLOTS, TestGuest, VacNetwork

pytestmark = pytest.mark.vm

REPOSITORY = Path(__file__).resolve().parents[2]
VACD = [sys.executable, "-m", "vacd.daemon"]
SHORT_NAME = TEST_FACTORY_NAME.partition(".")[0]


def slot_name(ordinal: int) -> str:
    return f"{SHORT_NAME}-{ordinal:02d}.{TEST_FACTORY_NAME.partition('.')[2]}"


class RunningFactory:
    """A vacd process in a prefix, with what the test needs to look at it."""

    def __init__(self, prefix: Path, uri: str) -> None:
        self.prefix = prefix
        self.uri = uri
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log_path = prefix / "vacd.stderr"

    def configure(self, guest: TestGuest, *, total_processors: int, machinetypes: dict[str, dict[str, str]],
                  extra_settings: str = "") -> None:
        (self.prefix / "etc").mkdir(parents=True, exist_ok=True)
        sections = [f"""[settings]
vac_space = vacspace.example.org
factory_name = {TEST_FACTORY_NAME}
host_processors = {TEST_NUM_SLOTS}
total_processors = {total_processors}
mb_per_processor = 128
cycle_seconds = 5
shutdown_grace_seconds = 10
# These tests are about machines, not load: a busy test machine must not hold creations back.
overload_per_processor = 100
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
{extra_settings}
"""]
        for name, options in machinetypes.items():
            payload = options.pop("payload")
            files = self.prefix / "var/lib/vac/machinetypes" / name / "files"
            files.mkdir(parents=True, exist_ok=True)
            (files / "payload.sh").write_text("#!/bin/sh\n" + payload + "\n")
            lines = "\n".join(f"{key} = {value}" for key, value in options.items())
            sections.append(f"""[machinetype {name}]
target_share = 1
machine_model = vm-raw
root_kernel = {guest.kernel}
root_initrd = {guest.initrd}
kernel_command_line = {guest.kernel_command_line}
user_data = payload.sh
fizzle_seconds = 5
backoff_seconds = 5
{lines}
""")
        (self.prefix / "etc/vac.conf").write_text("\n".join(sections))

    def start(self) -> None:
        log = open(self.log_path, "ab")
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
        self.process = subprocess.Popen([*VACD, "--prefix", str(self.prefix), "--stderr"], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, env=environment, cwd=REPOSITORY)

    def kill(self, signal_number: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal_number)
            self.process.wait(timeout=60)

    def status(self) -> dict:  # type: ignore[type-arg]
        path = self.prefix / "var/lib/vac/status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def records(self) -> list[dict]:  # type: ignore[type-arg]
        machines = self.prefix / "var/lib/vac/machines"
        found = []
        for directory in sorted(machines.glob("*")):
            try:
                record = json.loads((directory / "machine.json").read_text())
            except FileNotFoundError:
                continue  # being created: the directory and the slot binding come first

            # The finish record; Vac's `finished` beside it is an empty marker, written after it.
            finished = directory / "finished.json"
            record["finished"] = json.loads(finished.read_text()) if finished.exists() else None
            record["directory"] = str(directory)
            found.append(record)
        return found

    def running_domains(self) -> dict[str, str]:
        connection = libvirt.open(self.uri)
        try:
            return {domain.name(): domain.UUIDString()
                    for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                    if domain.name().startswith(SHORT_NAME + "-")}
        finally:
            connection.close()

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"vacd exited {self.process.returncode} waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def destroy_everything(self) -> None:
        connection = libvirt.open(self.uri)
        try:
            for record in self.records():
                try:
                    connection.lookupByUUIDString(record["uuid"]).destroy()
                except libvirt.libvirtError:
                    continue
        finally:
            connection.close()


@pytest.fixture
def factory(tmp_path: Path, libvirtd: str, vac_network: VacNetwork) -> Iterator[RunningFactory]:
    running = RunningFactory(tmp_path / "prefix", libvirtd)
    running.prefix.mkdir()
    try:
        yield running
    finally:
        running.kill()
        running.destroy_everything()


def test_guest_reporting_success_is_finalised_with_its_message_and_slot_refilled(
    factory: RunningFactory, test_guest: TestGuest
) -> None:
    factory.configure(test_guest, total_processors=1, machinetypes={
        "ok": {"payload": "sleep 2; http-put http://169.254.169.253/joboutputs/shutdown_message '200 Success'"},
    })
    factory.start()

    def first_finished_and_slot_refilled() -> bool:
        records = factory.records()
        return (len(records) >= 2 and records[0]["finished"] is not None
                and slot_name(0) in factory.running_domains())

    factory.wait_for("a finished guest and its slot refilled", first_finished_and_slot_refilled, timeout=150)
    first = factory.records()[0]
    assert first["finished"]["shutdown_message"] == "200 Success"
    assert first["ordinal"] == 0
    domains = factory.running_domains()
    assert domains[slot_name(0)] != first["uuid"]


def test_guest_past_max_wallclock_seconds_is_shut_down_and_finalised(
    factory: RunningFactory, test_guest: TestGuest
) -> None:
    factory.configure(test_guest, total_processors=1, machinetypes={
        "long": {"payload": "sleep 600", "max_wallclock_seconds": "15", "min_wallclock_seconds": "15"},
    }, extra_settings="draining = no")
    factory.start()
    factory.wait_for("the first guest finalised",
                     lambda: bool(factory.records()) and factory.records()[0]["finished"] is not None, timeout=150)
    first = factory.records()[0]
    assert first["finished"]["shutdown_message"] == "700 Exceeded max_wallclock_seconds"
    assert first["uuid"] not in factory.running_domains().values()


def test_sigkilled_vacd_restarted_adopts_running_guests_without_duplicates(
    factory: RunningFactory, test_guest: TestGuest
) -> None:
    factory.configure(test_guest, total_processors=2, machinetypes={"long": {"payload": "sleep 600"}})
    factory.start()
    factory.wait_for("two running guests", lambda: len(factory.running_domains()) == 2, timeout=120)
    before = factory.running_domains()
    factory.kill(signal.SIGKILL)
    (factory.prefix / "var/lib/vac/vacd.pid").unlink(missing_ok=True)
    factory.start()
    first_time = factory.status().get("time", 0)
    factory.wait_for("two passes after the restart",
                     lambda: factory.status().get("time", 0) >= first_time + 6, timeout=60)
    assert factory.running_domains() == before
    assert len(factory.records()) == 2
    assert all(record["finished"] is None for record in factory.records())
    slots = {slot["name"]: slot["state"] for slot in factory.status()["slots"]}
    assert slots[slot_name(0)] == "Running" and slots[slot_name(1)] == "Running"


def test_zombie_domain_in_a_slot_name_is_destroyed(
    factory: RunningFactory, test_guest: TestGuest, libvirt_backend: object, guest_spec: Callable[..., object]
) -> None:
    zombie = guest_spec(3)
    libvirt_backend.create(zombie)  # type: ignore[attr-defined]
    assert slot_name(3) in factory.running_domains()
    factory.configure(test_guest, total_processors=1, machinetypes={"long": {"payload": "sleep 600"}},
                      extra_settings="draining = yes")
    factory.start()
    factory.wait_for("the zombie destroyed", lambda: slot_name(3) not in factory.running_domains(), timeout=60)
    assert factory.records() == []


def test_guests_served_by_two_guest_server_processes_fetch_their_payload_and_report_success(
    factory: RunningFactory, test_guest: TestGuest
) -> None:
    """guest_api_processes = 2: slot 0's address steers to one process, slot 1's to the other.

    Each guest fetches its payload from the metadata server and PUTs its shutdown_message to
    the MJF server, so both parts of both processes serve a real guest; vacd's stop ends them.
    """
    factory.configure(test_guest, total_processors=2, machinetypes={
        "ok": {"payload": "sleep 2; http-put http://169.254.169.253/joboutputs/shutdown_message '200 Success'"},
    }, extra_settings="guest_api_processes = 2")
    factory.start()

    def both_slots_finished_once() -> bool:
        finished = {record["ordinal"] for record in factory.records() if record["finished"] is not None}
        return finished >= {0, 1}

    factory.wait_for("a guest in each slot finished", both_slots_finished_once, timeout=240)
    for record in factory.records():
        if record["finished"] is not None:
            assert record["finished"]["shutdown_message"] == "200 Success"
    log = factory.log_text()
    assert "shard=0/2" in log and "shard=1/2" in log
    pids = [int(line.rsplit("pid=", 1)[1].split()[0]) for line in log.splitlines()
            if "guest server process started" in line]
    assert len(pids) == 2
    # `vac status` names them (status.json, written every pass).
    factory.wait_for("status.json naming the processes",
                     lambda: (factory.status().get("guest_servers") or {}).get("pids") == pids)
    assert factory.status()["guest_servers"] == {"processes": 2, "pids": pids, "restarts": 0}
    factory.kill()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
