"""vacd's steady clock: epoch seconds that advance with the monotonic clock, not the wall clock.

Rules (issue 8 item 11; style.md anti-pattern 3):
- Every interval vacd polices (a machine's wallclock limit, heartbeat staleness, the ACPI
  grace, backoffs) is measured on this clock. It reads the wall clock once, when it is made,
  and from then on advances only as `time.monotonic()` does, so a wall-clock jump of a day
  (a bad NTP server, an admin's `date -s`, a VM host resuming) neither stops every machine at
  once (forward) nor leaves them all unpoliced for a day (backward).
- Its values are epoch seconds like the wall clock's, so they go into records and MJF as
  before. A restart of vacd takes the wall clock again (the unit starts after time-sync).
- `wall_skew()` says how far the wall clock has moved away; the daemon logs a jump once.
"""

from __future__ import annotations

import time
from typing import Callable

# A difference smaller than this is ordinary NTP slewing, not a jump worth a log line.
CLOCK_JUMP_SECONDS = 60.0


class SteadyClock:
    """Epoch seconds anchored to the wall clock at creation, advancing monotonically."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor_wall = wall()
        self._anchor_monotonic = monotonic()

    def __call__(self) -> float:
        return self._anchor_wall + (self._monotonic() - self._anchor_monotonic)

    def wall_skew(self) -> float:
        """Wall clock minus this clock: positive when the wall clock has jumped forward."""
        return self._wall() - self()


class ClockJumpWatch:
    """Logs (through `report`) each time the wall clock moves away from the steady clock, once."""

    def __init__(self, clock: SteadyClock, report: Callable[[float], None]) -> None:
        self.clock = clock
        self.report = report
        self._reported_skew = 0.0

    def check(self) -> float:
        """Compare the clocks; call `report(skew)` when the skew has moved by a jump since last said."""
        skew = self.clock.wall_skew()
        if abs(skew - self._reported_skew) >= CLOCK_JUMP_SECONDS:
            self._reported_skew = skew
            self.report(skew)
        return skew
