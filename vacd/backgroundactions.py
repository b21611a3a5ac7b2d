"""Creations and destroys on the thread pool, at most one per machine name, failures backed off.

Rules (design.md rules 3 and 4, issue 8 item 5):
- One action per machine at a time. A name with a creation or a destroy in flight is
  neither free nor judged by the factory's pass (it asks `action_for`), so a zombie's
  destroy finishes before its slot can be created into.
- A creation writes its record before the backend is asked for anything, under a machine
  directory never used before (issue 8 item 10): a kill at any instant leaves a record the
  next pass reconciles.
- A failed creation backs its machinetype off locally, 30 s doubling to an hour (Vac 03
  retried every cycle), asks for its record to be finalised as 700 Failed to start, and is
  written to the factory's error file until a creation succeeds. A creation cut short by
  libvirtd dying (BackendOutcomeUnknown) is not a failure: the next listing decides.
- A failed destroy is not retried here: the pass that follows its retry time (1 s doubling
  to a minute) asks again, and `destroy_retry_times` tells the loop when to wake for it.
- A finished action wakes the loop, so its slot is looked at without waiting for the
  periodic pass; a failed destroy does not (nothing changed).
- Pool threads touch this object's state only under its lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid as uuid_module
from concurrent.futures import Executor, Future, wait
from pathlib import Path
from typing import Callable, Optional

from vacd.atomicfile import write_atomic
from vacd.backends.base import Backend
from vacd.backoff import doubling_delay
from vacd.config import Machinetype, Settings
from vacd.creationphases import observe, timed
from vacd.errors import BackendOutcomeUnknown
from vacd.factoryhooks import FactoryHooks
from vacd.imagecache import remote_image_urls
from vacd.imagecheck import ImageVerifier
from vacd.machinespec import machine_spec
from vacd.outcomes import FAILED_TO_START
from vacd.policing import effective_shutdown_time
from vacd.records import MachineRecord
from vacd.scheduler import Create
from vacd.slots import SlotIdentity, slot_identity
from vacd.store import MAX_DIRECTORY_NAME_TRIES, MachineDirectoryExists, Store

log = logging.getLogger(__name__)

# Creation failures back off per machinetype: 30 s doubling to an hour (Vac retried every cycle).
CREATION_FAILURE_FIRST_BACKOFF_SECONDS = 30
CREATION_FAILURE_MAX_BACKOFF_SECONDS = 3600
# A failed destroy is retried for its slot after 1 s, doubling to a minute: a libvirtd that
# refuses destroys is asked again soon, but never many times a second (the loop is not woken).
DESTROY_RETRY_FIRST_SECONDS = 1
DESTROY_RETRY_MAX_SECONDS = 60


class BackgroundActions:
    """The factory's creations and destroys, run on its pool and tracked by machine name."""

    def __init__(
        self,
        store: Store,
        backend: Backend,
        executor: Executor,
        *,
        clock: Callable[[], float],
        wake_event: threading.Event,
        error_totals: dict[str, int],
    ) -> None:
        self.store = store
        self.backend = backend
        self.executor = executor
        self.clock = clock
        # The loop's event: set when an action ends, so the next pass comes at once.
        self.wake_event = wake_event
        # The factory's count of contained errors by step (vac_slot_errors_total{step}): failed
        # creations and destroys are counted here, under the lock, by the pool threads.
        self.error_totals = error_totals
        # One per factory, so an image's digests are kept between creations (issue 11 item 1).
        self.image_verifier = ImageVerifier(store.paths.certificates_dir)
        # Guards everything pool threads touch: _in_flight, _futures, _creation_failures,
        # _destroy_failures, last_error and the error totals.
        self._lock = threading.Lock()
        # Machine name -> the action running for it on the pool ("create" or "destroy").
        self._in_flight: dict[str, str] = {}
        self._futures: set[Future[None]] = set()
        self._creation_failures: dict[str, tuple[int, int]] = {}  # machinetype -> (failures, until)
        # Machine name -> (destroys failed in a row, no new attempt before this clock time).
        self._destroy_failures: dict[str, tuple[int, float]] = {}
        self.last_error: Optional[str] = None

    # ------------------------------------------------------------------ what is in flight
    def action_for(self, name: str) -> Optional[str]:
        """The action ("create" or "destroy") running for this machine now, or None."""
        with self._lock:
            return self._in_flight.get(name)

    def in_flight(self) -> dict[str, str]:
        """Machine name -> the action running for it on the pool, as of now."""
        with self._lock:
            return dict(self._in_flight)

    def creation_failure_until(self) -> dict[str, int]:
        """Machinetype -> the time its local creation backoff ends (the scheduler's input)."""
        with self._lock:
            return {name: until for name, (_, until) in self._creation_failures.items()}

    def destroy_retry_times(self, now: int) -> list[int]:
        """When failed destroys fall due again: the loop wakes for them, not before."""
        with self._lock:
            return [int(math.ceil(at)) for _, at in self._destroy_failures.values() if at > now]

    def wait_for_background_work(self, timeout_seconds: Optional[float] = None) -> bool:
        """Block until every creation and destroy submitted has finished; False on timeout."""
        while True:
            with self._lock:
                pending = set(self._futures)
                idle = not pending and not self._in_flight
            if idle:
                return True
            if pending:
                _, not_done = wait(pending, timeout=timeout_seconds)
                if not_done:
                    return False
            else:
                # In flight but not yet submitted (between the mark and the submit): moments.
                self.wake_event.wait(0.01)

    # ------------------------------------------------------------------ creating
    def start_creation(
        self, settings: Settings, machinetype: Machinetype, create: Create, now: int, hooks: FactoryHooks
    ) -> Optional[MachineRecord]:
        """Write the record and hand the creation to the pool; the record, or None if it failed at once."""
        identity = slot_identity(settings.factory_name, create.ordinal)
        hs06_per_processor = settings.hs06_per_processor or 1.0
        record = MachineRecord(
            name=identity.machine_name,
            ordinal=create.ordinal,
            uuid=str(uuid_module.uuid4()),
            machinetype=machinetype.name,
            machine_model=machinetype.machine_model,
            processors=create.processors,
            created_time=now,
            shutdown_time=effective_shutdown_time(create.shutdown_time, settings.shutdown_time),
            ip_address=identity.ip_address,
            hs06=hs06_per_processor * create.processors,
            mb=settings.mb_per_processor * create.processors,
            # Fixed now, as Vac fixed machinefeatures/hs06: a later hs06_per_processor must
            # not make this machine's stand-in 1.0 go to APEL (vacd.accounting).
            hs06_known=settings.hs06_per_processor is not None,
        )
        with self._lock:
            running = self._in_flight.get(record.name)
            if running is None:
                self._in_flight[record.name] = "create"
        if running is not None:
            # The scheduler never sees such a slot as free; this guards the invariant (item 5).
            log.error("not creating name=%s: a %s is still in flight for it", record.name, running)
            return None
        try:
            # A machine directory is never reused (issue 8 item 10): a slot re-created within
            # the second of its last creation takes the next second in Vac's name (§1.4).
            for tries_left in reversed(range(MAX_DIRECTORY_NAME_TRIES)):
                try:
                    self.store.begin_creation(record)
                    break
                except MachineDirectoryExists:
                    if tries_left == 0:
                        raise
                    record = dataclasses.replace(record, created_time=record.created_time + 1)
        except Exception as error:  # boundary (step "create"): one machine's failure stays its own
            self._creation_failed(record, now, error)
            return None
        log.info(
            "creating machine name=%s slot=%d machinetype=%s processors=%d shutdown_time=%d%s",
            record.name,
            record.ordinal,
            record.machinetype,
            record.processors,
            record.shutdown_time,
            " probe=yes" if create.is_probe else "",
        )
        urls = remote_image_urls(machinetype)
        if urls and hooks.prefetch_images is not None:
            # The record stays in flight while its images download, so its slot is not reused.
            images = hooks.prefetch_images(urls, machinetype.vacuum_pipe is not None)
            images.add_done_callback(
                lambda done: self._submit(self._create, record, settings, machinetype, identity, hooks, done,
                                          time.monotonic())
            )
        else:
            self._submit(self._create, record, settings, machinetype, identity, hooks, None, time.monotonic())
        return record

    def _submit(self, function: Callable[..., None], *arguments: object) -> None:
        """Run `function` on the pool, tracked so wait_for_background_work waits for all of it."""
        future: Future[None] = self.executor.submit(function, *arguments)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _forget_future(self, future: "Future[None]") -> None:
        with self._lock:
            self._futures.discard(future)

    def _create(
        self,
        record: MachineRecord,
        settings: Settings,
        machinetype: Machinetype,
        identity: SlotIdentity,
        hooks: FactoryHooks,
        images: "Optional[Future[dict[str, Path]]]",
        submitted_at: float,
    ) -> None:
        """Contextualise (a user_data URL may be slow), build the spec and create the machine, off the loop."""
        started = self.clock()
        # Phases are timed on the monotonic clock (vacd.creationphases); the backend times its own.
        observe_phase = hooks.creation_phase
        observe(observe_phase, "queue", time.monotonic() - submitted_at)
        ok = False
        try:
            if hooks.contextualise is not None:
                with timed(observe_phase, "contextualise"):
                    hooks.contextualise(settings, machinetype, record, record.created_time)
            fetch_image = images.result().__getitem__ if images is not None else hooks.fetch_image
            with timed(observe_phase, "machine_spec"):
                spec = machine_spec(settings, machinetype, record, identity, self.store.machine_dir(record),
                                    fetch_image, hooks.qemu_access, self.image_verifier)
            self.backend.create(spec)
            with timed(observe_phase, "record"):
                self.store.mark_started(record, int(self.clock()))
            with self._lock:
                self._creation_failures.pop(record.machinetype, None)
            self._clear_error()
            ok = True
            log.info("created machine name=%s uuid=%s seconds=%.1f", record.name, record.uuid, self.clock() - started)
        except BackendOutcomeUnknown as error:
            # Not a failure yet: libvirtd died mid-call and the machine may be running. The
            # record stays unstarted; the next listing adopts it if its UUID runs, and
            # finalises it as 700 Failed to start if not (a libvirtd restart kills nothing).
            log.warning("creation cut short name=%s machinetype=%s error=%s: the next listing decides",
                        record.name, record.machinetype, error)
        except Exception as error:  # boundary: one machine's failure must not stop the loop
            self._creation_failed(record, int(self.clock()), error)
        finally:
            for hook in hooks.on_created:
                try:
                    hook(record, self.clock() - started, ok)
                except Exception:
                    log.exception("creation hook failed name=%s", record.name)
            with self._lock:
                self._in_flight.pop(record.name, None)
            self.wake_event.set()

    def _creation_failed(self, record: MachineRecord, now: int, error: BaseException) -> None:
        """Back the machinetype off locally, record why, and leave the slot to be finalised."""
        with self._lock:
            failures, _ = self._creation_failures.get(record.machinetype, (0, 0))
            delay = doubling_delay(CREATION_FAILURE_FIRST_BACKOFF_SECONDS, CREATION_FAILURE_MAX_BACKOFF_SECONDS, failures)
            self._creation_failures[record.machinetype] = (failures + 1, now + delay)
            self.last_error = f"{record.name} ({record.machinetype}): {error}"
            last_error = self.last_error
            self.error_totals["create"] = self.error_totals.get("create", 0) + 1
        log.error(
            "creation failed name=%s machinetype=%s error=%s retry_in=%ds", record.name, record.machinetype, error, delay
        )
        try:
            self.store.request_destroy(record, now, FAILED_TO_START)
            self.store.paths.factory_error_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.store.paths.factory_error_file, last_error + "\n")
        except OSError as write_error:
            log.error("cannot record creation failure name=%s error=%s", record.name, write_error)
        with self._lock:
            self._in_flight.pop(record.name, None)

    def _clear_error(self) -> None:
        with self._lock:
            self.last_error = None
        try:
            self.store.paths.factory_error_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("cannot remove %s error=%s", self.store.paths.factory_error_file, error)

    # ------------------------------------------------------------------ destroying
    def start_destroy(self, name: str, uuid: Optional[str]) -> None:
        """Destroy the machine on the pool, unless an action runs for it or its retry is not yet due."""
        with self._lock:
            if name in self._in_flight:
                return
            failures = self._destroy_failures.get(name)
            if failures is not None and self.clock() < failures[1]:
                return  # the pass that follows the retry time asks again (destroy_retry_times)
            self._in_flight[name] = "destroy"
        self._submit(self._destroy, name, uuid)

    def _destroy(self, name: str, uuid: Optional[str]) -> None:
        try:
            self.backend.destroy(name, uuid)
            log.info("destroyed machine name=%s uuid=%s", name, uuid)
        except Exception as error:  # boundary: retried for this slot after its backoff
            with self._lock:
                self.error_totals["destroy"] = self.error_totals.get("destroy", 0) + 1
                failures, _ = self._destroy_failures.get(name, (0, 0.0))
                delay = doubling_delay(DESTROY_RETRY_FIRST_SECONDS, DESTROY_RETRY_MAX_SECONDS, failures)
                self._destroy_failures[name] = (failures + 1, self.clock() + delay)
                self._in_flight.pop(name, None)
            log.error("destroy failed name=%s error=%s failures_in_a_row=%d retry_in=%ds",
                      name, error, failures + 1, delay)
            # No wake: nothing changed, and a woken pass would only find the retry not yet due.
            return
        with self._lock:
            self._destroy_failures.pop(name, None)
            self._in_flight.pop(name, None)
        self.wake_event.set()
