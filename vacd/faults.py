"""The factory-wide faults holding now: what stops creation or observation, and since when.

Rules:
- One fault per kind ("config", "listing", "disk", "network"). Noting a kind that already
  holds changes its message but keeps its `since`, so the admin sees how long the trouble
  has lasted, not when it was last seen.
- A cleared fault is logged once, when it clears; noting one logs nothing here (the caller
  says what stopped, in its own words).
- Only "config" and "network" block creation through the gate's reason
  (`creation_blocked_by`); the disk fault reaches the scheduler as its own input.
- No locks: the reconcile loop's thread owns this (the daemon notes the network fault
  between passes, on that thread).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """A factory-wide fault that stops creation or observation: what, and since when."""

    kind: str  # "config", "listing", "disk", "network"
    message: str
    since: int


class Faults:
    """The faults holding now, by kind."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}  # kind -> the factory-wide fault holding now

    def __contains__(self, kind: str) -> bool:
        return kind in self._faults

    def note(self, kind: str, message: str, now: int) -> None:
        """The fault of this kind holds now, with this message; it began at `now` if it is new."""
        current = self._faults.get(kind)
        self._faults[kind] = Fault(kind, message, current.since if current is not None else now)

    def clear(self, kind: str) -> None:
        """The fault of this kind holds no more (logged if it held)."""
        if self._faults.pop(kind, None) is not None:
            log.info("fault cleared kind=%s", kind)

    def as_list(self) -> list[Fault]:
        """The faults holding now, ordered by kind (as the status file and metrics show them)."""
        return [self._faults[kind] for kind in sorted(self._faults)]

    def creation_blocked_by(self) -> Optional[str]:
        """A factory-wide fault that stops creation, as the gate reason (config, network).

        The disk fault has its own scheduler input (`disk_problem`), whose words already say "disk: ".
        """
        for kind in ("config", "network"):
            fault = self._faults.get(kind)
            if fault is not None:
                first_line = fault.message.splitlines()[0] if fault.message else ""
                return f"{kind}: {first_line}"
        return None
