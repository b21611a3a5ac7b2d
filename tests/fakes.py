"""Test doubles that behave like the real parts, in memory, and record what was asked of them."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import Callable, Optional, Sequence

from vacd.backends.base import MachineSpec, ObservedMachine, ObservedState
from vacd.errors import BackendError


class FakeBackend:
    """An in-memory backend: machines exist between create and destroy or power-off."""

    def __init__(self) -> None:
        self.machines: dict[str, ObservedMachine] = {}
        self.specs: dict[str, MachineSpec] = {}
        self.actions: list[tuple[str, str]] = []
        self.fail_creates_of: set[str] = set()
        self.fail_listing = False
        self._wake: Optional[Callable[[str], None]] = None
        self._lock = threading.Lock()

    def create(self, spec: MachineSpec) -> None:
        with self._lock:
            self.actions.append(("create", spec.name))
            if spec.name in self.machines:
                raise BackendError("create", spec.name, "already exists")
            if any(part in str(spec.root_image or spec.root_kernel) for part in self.fail_creates_of):
                raise BackendError("create", spec.name, "injected failure")
            self.machines[spec.name] = ObservedMachine(spec.name, spec.uuid, ObservedState.RUNNING, 0.0)
            self.specs[spec.name] = spec

    def shutdown(self, name: str) -> None:
        with self._lock:
            self.actions.append(("shutdown", name))

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        with self._lock:
            self.actions.append(("destroy", name))
            machine = self.machines.get(name)
            if machine is not None and (uuid is None or machine.uuid == uuid):
                del self.machines[name]

    def list_machines(self) -> Sequence[ObservedMachine]:
        with self._lock:
            if self.fail_listing:
                raise BackendError("list", "*", "injected failure")
            return list(self.machines.values())

    def watch(self, wake: Callable[[str], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        return None

    # What guests and admins do, for tests
    def power_off(self, name: str) -> None:
        with self._lock:
            del self.machines[name]
        if self._wake is not None:
            self._wake(name)

    def pause(self, name: str) -> None:
        with self._lock:
            machine = self.machines[name]
            self.machines[name] = ObservedMachine(machine.name, machine.uuid, ObservedState.PAUSED, machine.cpu_seconds)

    def add_foreign(self, name: str, uuid: str) -> None:
        with self._lock:
            self.machines[name] = ObservedMachine(name, uuid, ObservedState.RUNNING, 0.0)

    def created_names(self) -> list[str]:
        return [name for action, name in self.actions if action == "create"]


class SlowBackend(FakeBackend):
    """A FakeBackend whose creates and destroys take real time, as libvirt's do (about 2 s).

    Each call waits on its gate (`hold_destroys`, `hold_creates`) until the test opens it, so a
    test decides exactly where the pool's work stands while the loop runs a pass.
    """

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.creates_may_finish = threading.Event()
        self.destroys_may_finish = threading.Event()
        self.creates_may_finish.set()
        self.destroys_may_finish.set()
        self.in_progress: list[tuple[str, str]] = []

    def hold_creates(self) -> None:
        self.creates_may_finish.clear()

    def hold_destroys(self) -> None:
        self.destroys_may_finish.clear()

    def create(self, spec: MachineSpec) -> None:
        self._take_time("create", spec.name, self.creates_may_finish)
        super().create(spec)

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        self._take_time("destroy", name, self.destroys_may_finish)
        super().destroy(name, uuid)

    def _take_time(self, action: str, name: str, gate: threading.Event) -> None:
        with self._lock:
            self.in_progress.append((action, name))
        # Bounded, so a test that forgets to open a gate fails instead of hanging CI.
        if not gate.wait(30.0):
            raise BackendError(action, name, "test gate never opened")
        if self.seconds:
            threading.Event().wait(self.seconds)
        with self._lock:
            self.in_progress.remove((action, name))


class InlineExecutor(Executor):
    """Runs submitted work at once, in the caller's thread, so a factory pass is deterministic."""

    def submit(self, function: Callable[..., object], /, *args: object, **kwargs: object) -> "Future[object]":  # type: ignore[override]
        future: Future[object] = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as error:  # pragma: no cover - re-raised through the future
            future.set_exception(error)
        return future


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
