"""Decide whether a running machine must be stopped, and with which shutdown message.

Pure (design.md rule 1): the caller observes the files and the clock and passes them in.
Kept from Vac 03 (§4.6): the shutdown time is enforced first, then the heartbeat rule,
which applies only once the machine is older than fizzle_seconds *and* vacd has been up
longer than fizzle_seconds (the guest could not PUT its heartbeat while vacd was down).
Changed: every stop gets a message saying why (Vac wrote none for shutdown times), taken
from Vcycle's wording (behaviour reference Appendix B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vacd.config import Machinetype
from vacd.outcomes import (
    EXCEEDED_WALLCLOCK,
    HEARTBEAT_NOT_CREATED,
    HEARTBEAT_NOT_UPDATED,
    PASSED_SHUTDOWN_TIME,
    PREEMPTED,
)


@dataclass(frozen=True)
class RunningMachine:
    """What policing needs to know about one running machine."""

    now: int
    started_time: int
    shutdown_time: int
    global_shutdown_time: Optional[int]
    vacd_start_time: int
    heartbeat_file_mtime: Optional[float]
    # Its shutdown time was lowered by pre-emption (vacd/preemption.py) in this run of vacd.
    preempted: bool = False


def stop_reason(machine: RunningMachine, machinetype: Optional[Machinetype]) -> Optional[str]:
    """The shutdown message to stop the machine with, or None to let it run."""
    if machine.now > machine.shutdown_time:
        lowered_by_site = (
            machine.global_shutdown_time is not None and machine.shutdown_time >= machine.global_shutdown_time
        )
        if lowered_by_site:
            return PASSED_SHUTDOWN_TIME
        return PREEMPTED if machine.preempted else EXCEEDED_WALLCLOCK
    if machinetype is None or not machinetype.heartbeat_file or machinetype.fizzle_seconds <= 0:
        return None
    if machine.now <= machine.started_time + machinetype.fizzle_seconds:
        return None
    if machine.now <= machine.vacd_start_time + machinetype.fizzle_seconds:
        return None
    if machine.heartbeat_file_mtime is None:
        return HEARTBEAT_NOT_CREATED
    if machinetype.heartbeat_seconds > 0 and machine.now > machine.heartbeat_file_mtime + machinetype.heartbeat_seconds:
        return HEARTBEAT_NOT_UPDATED
    return None


def effective_shutdown_time(shutdown_time: int, global_shutdown_time: Optional[int]) -> int:
    """A machine's shutdown time only ever falls to the site's shutdown_time (§4.6 step 2)."""
    if global_shutdown_time is None:
        return shutdown_time
    return min(shutdown_time, global_shutdown_time)
