"""SIGKILL a real factory process at random instants, restart it on the same prefix, check nothing is lost.

Issue 8, "Must show": a real factory process (tests/crashchild.py: the real Factory, Store,
thread pool, configuration and APEL accounting, over a backend whose machines outlive the
process) is killed with SIGKILL after a random 0.2-2 s, again and again, each time restarted
on the same prefix so that it adopts what the last one left. Guests live 1.1-2.6 s and
max_wallclock_seconds is 2, so every kill window holds creations, destroys, finalisations
and accounting. After the last kill a final process drains and runs until every machine is
gone and finished. The tests then read the prefix and check the invariants, one test each.

The campaign runs once per module (about 1.5 s per kill). $VAC_CRASH_KILLS sets the number
of kills (default 30; the full-size run is 100) and $VAC_CRASH_SEED the seed (printed).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.crashbackend import STATE_FILE
from tests.crashchild import (
    BACKEND_DIRECTORY,
    EVIDENCE_DIRECTORY,
    FINALISATIONS_LOG,
    HOST_CPU_COUNT,
    HOST_FQDN,
    SLOT_EVENTS_LOG,
)
from vacd.accounting import STAGING_PREFIX, job_record, record_file_name
from vacd.config import load_config
from vacd.paths import Paths
from vacd.recordformats import FINISHED_FILE, FINISHED_RECORD_FILE, HEARTBEAT_RECORD_FILE, RECORD_FILE
from vacd.records import MachineRecord
from vacd.store import Store

pytestmark = [pytest.mark.allow_commands(sys.executable), pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
KILLS_VARIABLE = "VAC_CRASH_KILLS"
SEED_VARIABLE = "VAC_CRASH_SEED"
DEFAULT_KILLS = 30
KILL_AFTER_SECONDS = (0.2, 2.0)
FINAL_RUN_TIMEOUT_SECONDS = 180

VAC_CONF = """[settings]
vac_space = vac01.example.com
factory_name = crash.example.org
host_processors = 4
total_processors = 4
# Short cycles and grace: many passes, destroys and finalisations in every kill window.
cycle_seconds = 0.2
shutdown_grace_seconds = 1
max_creations_per_cycle = 4
# Set both so every record is also queued for ssmsend: the three-step staging path runs.
gocdb_sitename = example.com
hs06_per_processor = 10
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
# A test: URI, as the file backend stands in for libvirt: no QEMU opens the files.
libvirt_uri = test:///default
"""
# Six machinetypes, so a backoff of some (an abort code, §4.3: a silent guest policed, or a
# machine whose creation a kill cut short, "700 Failed to start") leaves the slots to others.
# fizzle_seconds = 0: a silent guest is not a fizzle (that too would be an abort).
MACHINETYPE_CONF = """
[machinetype {name}]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
max_wallclock_seconds = 2
fizzle_seconds = 0
backoff_seconds = 0
"""
MACHINETYPES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")

# What a killed child was doing: its last log line, if written shortly before the kill (figures only).
BUSY_WITHIN_SECONDS = 0.1
ACTIVITIES = (
    ("creating machine", "creating"),
    ("contextualised machine", "creating"),
    ("created machine", "creating"),
    ("stopping machine", "destroying"),
    ("grace over", "destroying"),
    ("destroyed machine", "destroying"),
    ("zombie machine", "destroying"),
    ("APEL record", "accounting"),
    ("finished machine", "finalising"),
    ("adopting machine", "adopting"),
    ("crash child started", "starting"),
)


@dataclass
class Campaign:
    """What the kills did, and the prefix they left."""

    prefix: Path
    seed: int
    kills: int
    seconds: float = 0.0
    killed_while: collections.Counter[str] = field(default_factory=collections.Counter)
    adoptions: int = 0
    zombies_destroyed: int = 0
    final_log: str = ""

    @property
    def paths(self) -> Paths:
        return Paths(self.prefix)

    def describe(self) -> str:
        return f"seed={self.seed} kills={self.kills} prefix={self.prefix} (rerun with {SEED_VARIABLE}={self.seed})"


def child_command(prefix: Path, seed: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "tests.crashchild", str(prefix), str(seed), *options]


def last_activity(log_text: str, killed_at: float) -> str:
    """The action of the last log line, if it was within BUSY_WITHIN_SECONDS of the kill, else "idle"."""
    lines = log_text.splitlines()
    if not lines:
        return "importing"
    last = lines[-1]
    try:
        logged_at = datetime.datetime.strptime(last[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return "other"
    if killed_at - logged_at > BUSY_WITHIN_SECONDS:
        return "idle"
    for phrase, activity in ACTIVITIES:
        if phrase in last:
            return activity
    return "other"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    prefix = tmp_path_factory.mktemp("crash-prefix")
    kernel = prefix / "guest" / "vmlinuz"
    kernel.parent.mkdir()
    kernel.write_bytes(b"not run: the file backend only checks that it exists")
    (prefix / "etc").mkdir()
    (prefix / "etc" / "vac.conf").write_text(
        VAC_CONF + "".join(MACHINETYPE_CONF.format(name=name, kernel=kernel) for name in MACHINETYPES)
    )
    (prefix / EVIDENCE_DIRECTORY).mkdir()
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(1 << 32))
    result = Campaign(prefix, seed, int(os.environ.get(KILLS_VARIABLE) or DEFAULT_KILLS))
    rng = random.Random(seed)
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    started = time.monotonic()
    running: Optional[subprocess.Popen[bytes]] = None
    try:
        for kill in range(result.kills + 1):
            is_final = kill == result.kills
            log_path = prefix / EVIDENCE_DIRECTORY / f"child-{kill:03d}.log"
            with open(log_path, "wb") as log_file:
                running = subprocess.Popen(
                    child_command(prefix, rng.randrange(1 << 32), *(["--until-quiescent"] if is_final else [])),
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=REPOSITORY, env=environment,
                )
            if is_final:
                returncode = running.wait(timeout=FINAL_RUN_TIMEOUT_SECONDS)
                result.final_log = log_path.read_text(errors="replace")
                assert returncode == 0, f"final run exited {returncode} ({result.describe()}):\n{result.final_log[-4000:]}"
                break
            # A real instant on a real clock: the point is that it lands anywhere in the pass.
            time.sleep(rng.uniform(*KILL_AFTER_SECONDS))
            assert running.poll() is None, (
                f"child {kill} exited {running.returncode} before its kill ({result.describe()}):\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
            killed_at = time.time()
            os.kill(running.pid, signal.SIGKILL)
            running.wait()
            result.killed_while[last_activity(log_path.read_text(errors="replace"), killed_at)] += 1
        running = None
    finally:
        if running is not None and running.poll() is None:
            os.kill(running.pid, signal.SIGKILL)
            running.wait()
    result.seconds = time.monotonic() - started
    for log_path in sorted((prefix / EVIDENCE_DIRECTORY).glob("child-*.log")):
        text = log_path.read_text(errors="replace")
        result.adoptions += text.count("adopting machine whose creation was not confirmed")
        result.zombies_destroyed += text.count("zombie machine")
    yield result


# ---------------------------------------------------------------------- reading the prefix

@dataclass(frozen=True)
class MachineOnDisk:
    directory: Path
    record: MachineRecord
    finished: Optional[dict[str, Any]]


def machines_on_disk(paths: Paths) -> list[MachineOnDisk]:
    """Every machine with a record; a directory a kill left before its machine.json is no machine."""
    found = []
    for directory in sorted(paths.machines_dir.iterdir()):
        if not (directory / RECORD_FILE).exists():
            continue
        record = MachineRecord.from_json((directory / RECORD_FILE).read_text())
        # finished.json is written before Vac's empty `finished` marker: either means finished.
        finished_record = directory / FINISHED_RECORD_FILE
        finished: Optional[dict[str, Any]] = None
        if finished_record.exists():
            finished = json.loads(finished_record.read_text())
        elif (directory / FINISHED_FILE).exists():
            finished = {}
        found.append(MachineOnDisk(directory, record, finished))
    return found


def backend_state(campaign: Campaign) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((campaign.prefix / BACKEND_DIRECTORY / STATE_FILE).read_text())
    return state


def apel_files(paths: Paths, name: str) -> tuple[int, int]:
    return (len(list(paths.apel_archive_dir.glob(f"*/{name}"))), len(list(paths.apel_outgoing_dir.glob(f"*/{name}"))))


# ---------------------------------------------------------------------- the invariants

def test_campaign_killed_the_factory_while_it_created_destroyed_finalised_and_accounted(campaign: Campaign) -> None:
    history = backend_state(campaign)["history"]
    created = sum(1 for event in history if event["event"] == "created")
    finalised = len((campaign.prefix / EVIDENCE_DIRECTORY / FINALISATIONS_LOG).read_text().splitlines())
    print(f"\ncrash campaign {campaign.describe()}: {campaign.seconds:.0f} s, {created} machines created, "
          f"{finalised} finalised, {campaign.adoptions} adoptions after a kill, "
          f"{campaign.zombies_destroyed} zombie destroys; killed while: {dict(campaign.killed_while)}")
    assert created >= campaign.kills // 3, "too few machines for the kills to land among them"
    assert finalised > 0


def test_no_slot_ever_held_two_live_machines(campaign: Campaign) -> None:
    """Per slot, a machine was finalised before the next began; the backend ran one at a time."""
    materialised = {machine.record.uuid for machine in machines_on_disk(campaign.paths)}
    live: dict[str, str] = {}  # slot -> uuid of its machine that began and has not finished
    overlaps = []
    for line in (campaign.prefix / EVIDENCE_DIRECTORY / SLOT_EVENTS_LOG).read_text().splitlines():
        event, uuid, name, _pid = line.split()
        if uuid not in materialised:
            continue  # killed between the `begin` line and the record: that machine never existed
        if event == "begin":
            if name in live and live[name] != uuid:
                overlaps.append((name, live[name], uuid))
            live[name] = uuid
        elif live.get(name) == uuid:
            del live[name]
    alive: dict[str, str] = {}
    for history_event in backend_state(campaign)["history"]:
        name, uuid = history_event["name"], history_event["uuid"]
        if history_event["event"] == "created":
            if name in alive:
                overlaps.append((name, alive[name], uuid))
            alive[name] = uuid
        elif alive.get(name) == uuid:
            del alive[name]
    assert overlaps == [], campaign.describe()


def test_no_machine_is_left_running_or_without_a_finished_record(campaign: Campaign) -> None:
    """0 leaked: nothing runs after quiescence, and every machine the backend ever ran was finalised."""
    state = backend_state(campaign)
    assert state["machines"] == {}, campaign.describe()
    finished_uuids = {machine.record.uuid for machine in machines_on_disk(campaign.paths) if machine.finished is not None}
    ran = {event["uuid"] for event in state["history"] if event["event"] == "created"}
    assert sorted(ran - finished_uuids) == [], campaign.describe()
    unfinished = [machine.directory.name for machine in machines_on_disk(campaign.paths) if machine.finished is None]
    assert unfinished == [], campaign.describe()


def test_no_machine_is_finalised_twice(campaign: Campaign) -> None:
    lines = (campaign.prefix / EVIDENCE_DIRECTORY / FINALISATIONS_LOG).read_text().splitlines()
    counts = collections.Counter(line.split()[0] for line in lines)
    assert {uuid: count for uuid, count in counts.items() if count > 1} == {}, campaign.describe()


def test_every_finished_machine_due_a_record_has_exactly_one_apel_record(campaign: Campaign) -> None:
    """One archive file and one outgoing file per machine due one, none for the others, no staging left."""
    paths = campaign.paths
    config = load_config(paths, host_fqdn=HOST_FQDN, host_cpu_count=HOST_CPU_COUNT)
    store = Store(paths)
    wrong = []
    due_count = 0
    for machine in machines_on_disk(paths):
        stored = store.load_machine(machine.directory)
        assert stored is not None and stored.finish is not None, machine.directory
        due = job_record(config.settings, config.machinetypes.get(stored.record.machinetype), stored.record,
                         stored.finish) is not None
        due_count += due
        found = apel_files(paths, record_file_name(stored.record.uuid))
        if found != ((1, 1) if due else (0, 0)):
            wrong.append((machine.directory.name, "due" if due else "not due", found))
    staging = sorted(entry.name for entry in paths.tmp_dir.glob(f"{STAGING_PREFIX}*"))
    assert (wrong, staging) == ([], []), campaign.describe()
    assert due_count > 0


def test_every_record_left_by_the_kills_is_readable(campaign: Campaign) -> None:
    """Every record parses, and Vac's markers are in Vac 03's formats (issue 10 item 5)."""
    paths = campaign.paths
    unreadable = []
    for directory in sorted(paths.machines_dir.iterdir()):
        for name in (RECORD_FILE, FINISHED_RECORD_FILE, HEARTBEAT_RECORD_FILE, "destroy_requested"):
            path = directory / name
            if path.exists():
                try:
                    json.loads(path.read_text())
                except ValueError as error:
                    unreadable.append((str(path), str(error)))
        for name, pattern in (("started", r"[0-9]+\n"), ("heartbeat", r"0\.0 0\.0\n|[0-9]+ [0-9]+\.[0-9]\n"),
                              (FINISHED_FILE, r"")):
            path = directory / name
            if path.exists() and not re.fullmatch(pattern, path.read_text()):
                unreadable.append((str(path), repr(path.read_text())))
    for binding in sorted(paths.slots_dir.iterdir()) if paths.slots_dir.is_dir() else []:
        if not re.fullmatch(r"[0-9]+ \S+ \S+\n", binding.read_text()):
            unreadable.append((str(binding), repr(binding.read_text())))
    assert unreadable == [], campaign.describe()


def test_no_temporary_file_is_left_after_the_final_start_up(campaign: Campaign) -> None:
    """A kill inside vacd.atomicfile leaves `.NAME.XXXX.tmp`; the next start-up must remove it (item 4)."""
    left = sorted(str(path.relative_to(campaign.prefix)) for path in campaign.prefix.rglob(".*.tmp"))
    assert left == [], campaign.describe()
