"""The per-slot error boundary's memory: which slots are in error, since when, and until when.

Rules (issue 9 item 1; the kubelet's per-pod backoff, style.md §3):
- A slot whose step raised is left alone for 10 s, doubling per consecutive failure up to
  15 minutes, so a slot that fails the same way pass after pass is not retried hot. The
  other slots go on.
- `since` is when the slot began failing this way: it carries over while the step and the
  error stay the same, and starts again when either changes.
- A failure is logged with its traceback the first time; a repeat of the same failure, and
  the errors logged where they arose (AccountingDeferred, StoreError), get one line each,
  at the backoff's pace.
- Every contained error is counted by step (`totals`, vac_slot_errors_total{step}),
  cumulatively from vacd's start; a slot that recovers is not uncounted.
"""

from __future__ import annotations

import logging
from typing import Optional

from vacd.backoff import doubling_delay
from vacd.errors import AccountingDeferred, StoreError
from vacd.passreport import SLOT_STEPS, SlotError
from vacd.slots import SlotIdentity

log = logging.getLogger(__name__)

# A slot whose step raised is left alone for this long, doubling per repeat up to the cap, so a
# slot that fails the same way pass after pass is not retried hot (the kubelet's per-pod backoff).
SLOT_ERROR_FIRST_BACKOFF_SECONDS = 10
SLOT_ERROR_MAX_BACKOFF_SECONDS = 900


class StepProgress:
    """Which step of a slot's reconcile is running, so a contained error names it."""

    def __init__(self) -> None:
        self.step = "observe"


class SlotErrors:
    """The slots in error now, and the count of contained errors by step since vacd started."""

    def __init__(self) -> None:
        # Cumulative count of contained per-slot errors by step (vac_slot_errors_total{step}).
        self.totals: dict[str, int] = {step: 0 for step in SLOT_STEPS}
        self._current: dict[str, SlotError] = {}  # machine name -> its current error

    def current(self, machine_name: str) -> Optional[SlotError]:
        """The slot's error, if its last attempt failed (it may be due for a retry already)."""
        return self._current.get(machine_name)

    def as_list(self) -> list[SlotError]:
        """The slots in error now, for the pass's report."""
        return list(self._current.values())

    def retry_times(self) -> list[int]:
        """When the slots in error are tried again: the loop wakes for them."""
        return [error.retry_at for error in self._current.values()]

    def record(self, identity: SlotIdentity, step: str, error: Exception, now: int) -> SlotError:
        """Note a contained failure of `step` for this slot: back it off, count it and log it."""
        previous = self._current.get(identity.machine_name)
        count = previous.count + 1 if previous is not None else 1
        delay = doubling_delay(SLOT_ERROR_FIRST_BACKOFF_SECONDS, SLOT_ERROR_MAX_BACKOFF_SECONDS, count - 1)
        text = f"{type(error).__name__}: {error}"
        same = previous is not None and previous.step == step and previous.error == text
        slot_error = SlotError(
            ordinal=identity.ordinal,
            machine_name=identity.machine_name,
            step=step,
            error=text,
            since=previous.since if same and previous is not None else now,
            count=count,
            retry_at=now + delay,
        )
        self._current[identity.machine_name] = slot_error
        self.totals[step] = self.totals.get(step, 0) + 1
        if same or isinstance(error, (AccountingDeferred, StoreError)):
            # Logged in full once (these two were logged where they arose); a repeat is one
            # line, and it comes at the backoff's pace.
            log.error("slot error again name=%s step=%s count=%d error=%s retry_in=%ds",
                      identity.machine_name, step, count, text, delay)
        else:
            log.exception("slot error name=%s slot=%d step=%s retry_in=%ds; other slots go on",
                          identity.machine_name, identity.ordinal, step, delay)
        return slot_error

    def recovered(self, machine_name: str) -> None:
        """The slot's step succeeded after failing: it is in error no more."""
        current = self._current.pop(machine_name, None)
        if current is not None:
            log.info("slot recovered name=%s after %d failed attempts (last step=%s)",
                     machine_name, current.count, current.step)
