"""A backend whose machines outlive the process: kept in a JSON file, for SIGKILL tests.

libvirt's test:///default driver keeps its domains in process memory, so they vanish with a
killed vacd, and a restart would have nothing to adopt. This backend keeps its machines in
`<directory>/machines.json`, as libvirtd keeps domains outside vacd (issue 8, "SIGKILL at
100 random instants").

Rules:
- Implements `vacd.backends.base.Backend` exactly; every operation is idempotent by name,
  and create refuses a name that exists, as libvirt's createXML does.
- Every change is made under an exclusive `fcntl.flock` of `machines.lock` and written by
  rename of a whole new file, so a kill at any instant leaves the old state or the new.
  (No fsync: the fault injected is a process kill, not a power cut; the page cache stays.)
- create and destroy take a small real time (half before the change is committed, half
  after), so kills land inside them: before the machine exists, or after it exists but
  before the factory has heard back.
- The same file keeps a history of every machine created and how it went away, written
  in the same rename as the change, so the test can check that no slot was ever used twice
  and that every machine ever created was finalised.
- `run_guests` is the guests' side: most guests write joboutputs/shutdown_message
  ("200 Success") early in their life, as a payload that finished its job does, and each
  powers itself off at the end of a short random life. An ACPI request makes most guests
  power off soon; some ignore it, so the factory's hard destroy after the grace runs too.
  Silent guests that are policed end with a 700 code, which makes the machinetype back
  off (§4.3); that is why most guests speak: backoffs would leave the slots idle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from vacd.backends.base import MachineSpec, ObservedMachine, ObservedState
from vacd.errors import BackendError

STATE_FILE = "machines.json"
LOCK_FILE = "machines.lock"
# Not `.*.tmp`: the test counts those as vacd's own leftovers (vacd.atomicfile).
PARTIAL_FILE = "machines.json.partial"
GUEST_MESSAGE = "200 Success"


class FileBackend:
    """Machines in a JSON file that any process may open; see the module rules."""

    def __init__(
        self,
        directory: Path,
        rng: random.Random,
        *,
        action_seconds: tuple[float, float] = (0.005, 0.05),
        guest_life_seconds: tuple[float, float] = (1.1, 2.6),
        acpi_obeyed_probability: float = 0.7,
        message_probability: float = 0.9,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rng = rng
        self._rng_lock = threading.Lock()
        self.action_seconds = action_seconds
        self.guest_life_seconds = guest_life_seconds
        self.acpi_obeyed_probability = acpi_obeyed_probability
        self.message_probability = message_probability
        self.clock = clock
        self._wake: Optional[Callable[[str], None]] = None

    # Storage -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_state(self) -> Iterator[dict[str, Any]]:
        """The state, locked; written back (by rename) if the block ends without an exception."""
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.read_state()
            yield state
            partial = self.directory / PARTIAL_FILE
            partial.write_text(json.dumps(state, sort_keys=True))
            os.replace(partial, self.directory / STATE_FILE)

    def read_state(self) -> dict[str, Any]:
        """The machines and the history, as last committed (callers outside the lock get a snapshot)."""
        try:
            state: dict[str, Any] = json.loads((self.directory / STATE_FILE).read_text())
        except FileNotFoundError:
            state = {"machines": {}, "history": []}
        return state

    def _pause(self) -> None:
        with self._rng_lock:
            seconds = self.rng.uniform(*self.action_seconds) / 2
        time.sleep(seconds)

    def _random(self) -> float:
        with self._rng_lock:
            return self.rng.random()

    # Backend protocol ---------------------------------------------------------------

    def create(self, spec: MachineSpec) -> None:
        self._pause()
        with self._locked_state() as state:
            if spec.name in state["machines"]:
                raise BackendError("create", spec.name, "a machine of that name exists")
            now = self.clock()
            with self._rng_lock:
                life = self.rng.uniform(*self.guest_life_seconds)
                speaks = self.rng.random() < self.message_probability
                message_at = now + self.rng.uniform(0.1, 0.8)
            state["machines"][spec.name] = {
                "uuid": spec.uuid,
                "created": now,
                "power_off_at": now + life,
                "message_at": message_at if speaks else None,
                "machine_dir": str(spec.machine_dir),
                "acpi_seen": False,
            }
            state["history"].append({"event": "created", "name": spec.name, "uuid": spec.uuid, "time": now})
        self._pause()

    def shutdown(self, name: str) -> None:
        with self._locked_state() as state:
            machine = state["machines"].get(name)
            if machine is None or machine["acpi_seen"]:
                return
            machine["acpi_seen"] = True
            if self._random() < self.acpi_obeyed_probability:
                machine["power_off_at"] = min(machine["power_off_at"], self.clock() + 0.05 + 0.25 * self._random())

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        self._pause()
        with self._locked_state() as state:
            machine = state["machines"].get(name)
            if machine is None or (uuid is not None and machine["uuid"] != uuid):
                return
            del state["machines"][name]
            state["history"].append({"event": "destroyed", "name": name, "uuid": machine["uuid"],
                                     "time": self.clock()})
        self._pause()

    def list_machines(self) -> Sequence[ObservedMachine]:
        now = self.clock()
        with open(self.directory / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            machines = self.read_state()["machines"]
        return [
            ObservedMachine(name, machine["uuid"], ObservedState.RUNNING, round(0.9 * max(0.0, now - machine["created"]), 1))
            for name, machine in sorted(machines.items())
        ]

    def watch(self, wake: Callable[[str], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        self._wake = None

    # The guests' side ---------------------------------------------------------------

    def power_off_due_guests(self) -> list[str]:
        """Write the shutdown_message of guests whose job is done; power off those whose life is over."""
        gone = []
        with self._locked_state() as state:
            now = self.clock()
            for name, machine in sorted(state["machines"].items()):
                if machine["message_at"] is not None and machine["message_at"] <= now:
                    machine["message_at"] = None
                    joboutputs = Path(machine["machine_dir"]) / "joboutputs"
                    if joboutputs.is_dir():
                        # A guest writes its file as it likes (here: directly, not atomically).
                        (joboutputs / "shutdown_message").write_text(GUEST_MESSAGE + "\n")
                if machine["power_off_at"] > now:
                    continue
                del state["machines"][name]
                state["history"].append({"event": "powered_off", "name": name, "uuid": machine["uuid"], "time": now})
                gone.append(name)
        wake = self._wake
        for name in gone:
            if wake is not None:
                wake(name)
        return gone

    def run_guests(self, stopping: threading.Event, period_seconds: float = 0.02) -> None:
        """Power guests off as their lives end, until `stopping` is set (run in a thread)."""
        while not stopping.wait(period_seconds):
            self.power_off_due_guests()
