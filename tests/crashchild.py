"""A real factory process over a real prefix, to be SIGKILLed: `python -m tests.crashchild PREFIX SEED`.

Built as `vacd.daemon.Daemon.run` builds it (issue 8, "SIGKILL at 100 random instants"): the
real `Factory`, `Store`, `ThreadPoolExecutor`, `ReloadingConfig` over `PREFIX/etc/vac.conf`,
and the hooks of `Daemon._hooks()` (contextualisation, APEL accounting, joboutputs times),
so what is killed is the code that runs in production. Only the backend differs: a
`FileBackend` whose machines outlive this process, with its guests powering off in a thread.

Additions, observation only, each line appended with O_APPEND in one write (a kill cannot
split it), one process at a time, so each file is a total order of what the processes did:
- `PREFIX/crash/finalisations.log`: a line after `Store.finish` has written `finished`. A
  UUID written twice is a machine finalised twice.
- `PREFIX/crash/slot-events.log`: `begin` before `Store.begin_creation`, `finish` before
  `Store.finish`. Between two machines' `begin` lines for a slot there must be a `finish`
  of the first, or the slot held two live machines at once.
- With `--until-quiescent` the process drains (no creations), runs until every machine is
  gone and every record finished, and exits 0 (3 if that takes longer than its deadline).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from tests.crashbackend import FileBackend
from vacd.config import load_config
from vacd.daemon import Daemon
from vacd.reloadingconfig import ReloadingConfig
from vacd.factory import Factory, PassReport
from vacd.paths import Paths
from vacd.startup_cleanup import live_machine_uuids, remove_leftovers
from vacd.records import FinishRecord, MachineRecord
from vacd.store import Store

log = logging.getLogger(__name__)

HOST_FQDN = "crash-host.example.org"
HOST_CPU_COUNT = 4
BACKEND_DIRECTORY = "fake-backend"
EVIDENCE_DIRECTORY = "crash"
FINALISATIONS_LOG = "finalisations.log"
SLOT_EVENTS_LOG = "slot-events.log"
QUIESCENCE_DEADLINE_SECONDS = 120.0
EXIT_NOT_QUIESCENT = 3


def append_line(path: Path, line: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


class EvidenceLoggingStore(Store):
    """The real Store, which also logs slot events and finalisations (see the module rules)."""

    def __init__(self, paths: Paths, evidence: Path) -> None:
        super().__init__(paths)
        self.evidence = evidence

    def begin_creation(self, record: MachineRecord) -> Path:
        append_line(self.evidence / SLOT_EVENTS_LOG, f"begin {record.uuid} {record.name} {os.getpid()}\n")
        return super().begin_creation(record)

    def finish(self, record: MachineRecord, finish: FinishRecord) -> None:
        append_line(self.evidence / SLOT_EVENTS_LOG, f"finish {record.uuid} {record.name} {os.getpid()}\n")
        super().finish(record, finish)
        append_line(self.evidence / FINALISATIONS_LOG,
                    f"{record.uuid} {record.name} {finish.finished_time} {os.getpid()}\n")


def startup_cleanup(paths: Paths, store: Store) -> None:
    """What Daemon.run does before its first pass, in its order: kill -9 leftovers go (item 4)."""
    paths.ensure_state_dirs()
    remove_leftovers(paths, live_machine_uuids(store))


def is_quiescent(report: PassReport, backend: FileBackend) -> bool:
    """Every slot shut down, nothing observed running, and the pass saw the backend."""
    return (
        report.settings is not None
        and report.observe_error is None
        and all(slot.state == "Shut down" for slot in report.slots)
        and not backend.list_machines()
    )


def run(prefix: Path, seed: int, until_quiescent: bool) -> int:
    paths = Paths(prefix)
    config = load_config(paths, host_fqdn=HOST_FQDN, host_cpu_count=HOST_CPU_COUNT)
    evidence = prefix / EVIDENCE_DIRECTORY
    evidence.mkdir(exist_ok=True)
    store = EvidenceLoggingStore(paths, evidence)
    startup_cleanup(paths, store)
    if until_quiescent:
        paths.drain_file.parent.mkdir(parents=True, exist_ok=True)
        paths.drain_file.touch()
    backend = FileBackend(prefix / BACKEND_DIRECTORY, random.Random(seed))
    daemon = Daemon(paths, config, HOST_FQDN, HOST_CPU_COUNT)
    config_source = ReloadingConfig(paths, config, HOST_FQDN, HOST_CPU_COUNT)
    settings = config.settings
    executor = ThreadPoolExecutor(max_workers=max(4, settings.max_creations_per_cycle * 2), thread_name_prefix="vacd-act")
    factory = Factory(
        store,
        backend,
        config_source,
        executor,
        clock=time.time,
        # The host's real load is other tests' work: a gate on it would only make runs differ.
        load_average=lambda: 0.0,
        host_cpu_count=HOST_CPU_COUNT,
        vacd_start_time=int(time.time()),
        hooks=daemon._hooks(),
        tie_break=random.Random(seed),
        is_draining=paths.drain_file.exists,
    )
    backend.watch(factory.wake)
    stopping = threading.Event()
    guests = threading.Thread(target=backend.run_guests, args=(stopping,), name="guests", daemon=True)
    guests.start()
    deadline = time.monotonic() + QUIESCENCE_DEADLINE_SECONDS
    log.info("crash child started pid=%d seed=%d until_quiescent=%s", os.getpid(), seed, until_quiescent)
    try:
        while True:
            # Daemon._loop's order: clear the wake-up, pass, then wait for an event or the cycle.
            factory.wake_event.clear()
            report = factory.run_pass()
            if until_quiescent and is_quiescent(report, backend):
                factory.wait_for_background_work()
                if is_quiescent(factory.run_pass(), backend):
                    log.info("quiescent: every machine finished and gone")
                    return 0
            if until_quiescent and time.monotonic() > deadline:
                log.error("not quiescent after %.0f s", QUIESCENCE_DEADLINE_SECONDS)
                return EXIT_NOT_QUIESCENT
            wait_seconds: Optional[float] = settings.cycle_seconds
            if report.next_wake_seconds is not None:
                wait_seconds = min(settings.cycle_seconds, report.next_wake_seconds)
            factory.wake_event.wait(wait_seconds)
    finally:
        stopping.set()
        factory.wait_for_background_work()
        executor.shutdown(wait=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crashchild")
    parser.add_argument("prefix", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--until-quiescent", action="store_true")
    arguments = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s")
    return run(arguments.prefix, arguments.seed, arguments.until_quiescent)


if __name__ == "__main__":
    sys.exit(main())
