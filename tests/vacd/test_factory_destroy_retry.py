"""A destroy that fails is retried for its slot with backoff, never in a hot loop.

The loop is driven as vacd's daemon drives it (a pass whenever the wake event is set, else
when the pass's own next wake time comes), over a virtual minute on a manual clock.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from tests.fakes import FakeBackend
from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.errors import BackendError

ZOMBIE = "f1-00.example.com"
# A hot loop would run this many passes within one virtual second; the cap keeps the test finite.
PASSES_PER_SECOND_CAP = 50


class RefusingDestroys(FakeBackend):
    """libvirtd refusing every destroy (a domain stuck in a job, a broken connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_destroys = True

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        if self.refuse_destroys:
            with self._lock:
                self.actions.append(("destroy", name))
            raise BackendError("destroy", name, "injected failure")
        super().destroy(name, uuid)


def drive(harness: Harness, seconds: int) -> int:
    """Run the loop for `seconds` of virtual time as the daemon does; the number of passes."""
    passes = 0
    next_pass_at = harness.clock()
    end = harness.clock() + seconds
    while harness.clock() < end:
        passes_this_second = 0
        while harness.clock() >= next_pass_at or harness.factory.wake_event.is_set():
            harness.factory.wake_event.clear()
            report = harness.run_pass()
            passes += 1
            passes_this_second += 1
            next_pass_at = harness.clock() + (report.next_wake_seconds or 30)
            if passes_this_second >= PASSES_PER_SECOND_CAP:
                break
        harness.clock.advance(1)
    return passes


def destroy_attempts(backend: FakeBackend) -> int:
    return sum(1 for action, name in backend.actions if action == "destroy" and name == ZOMBIE)


def draining_harness(tmp_path: Path, backend: FakeBackend) -> Harness:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), make_machinetype(tmp_path, "atlas"),
                      backend=backend)
    harness.config.config = dataclasses.replace(
        harness.config.config, settings=make_settings(total_processors=1, host_processors=1, draining=True)
    )
    return harness


def test_failed_destroy_is_retried_with_doubling_backoff_not_every_pass(tmp_path: Path) -> None:
    backend = RefusingDestroys()
    harness = draining_harness(tmp_path, backend)
    backend.add_foreign(ZOMBIE, "00000000-0000-0000-0000-000000000000")

    passes = drive(harness, 60)

    # Attempts at 0, 1, 3, 7, 15, 31 s (backoff 1, 2, 4, 8, 16 s), then 63 s: six in the minute.
    assert destroy_attempts(backend) == 6
    # A pass per retry and the 30 s cycle's passes, not PASSES_PER_SECOND_CAP a second.
    assert passes <= 10
    assert harness.factory.slot_error_totals["destroy"] == 6


def test_destroy_that_succeeds_after_failing_frees_the_slot_and_clears_its_backoff(tmp_path: Path) -> None:
    backend = RefusingDestroys()
    harness = draining_harness(tmp_path, backend)
    backend.add_foreign(ZOMBIE, "00000000-0000-0000-0000-000000000000")
    drive(harness, 10)
    assert destroy_attempts(backend) == 4  # 0, 1, 3 and 7 s

    backend.refuse_destroys = False
    drive(harness, 10)

    assert ZOMBIE not in backend.machines
    assert destroy_attempts(backend) == 5
    # A later zombie in the same slot is destroyed at once, not after the old backoff.
    backend.add_foreign(ZOMBIE, "11111111-1111-1111-1111-111111111111")
    harness.run_pass()
    assert ZOMBIE not in backend.machines
