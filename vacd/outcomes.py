"""What a machine's end means: shutdown message codes, the factory's own messages, fizzles.

Rules (behaviour reference §4.4, §3.5):
- A shutdown message is `NNN human text`. Any 3-digit code >= 300 is an abort (Vac 03 since
  03.00, including 700 and codes such as 900); 100 and 200 are not; a message without a
  numeric 3-digit prefix is not (acceptance 21).
- A machine that finishes without any message after running less than `fizzle_seconds`
  fizzled: it is reported as `300 Vac detects fizzle after N seconds` so the space backs
  off (acceptance 22). Vac 03 meant to do this but its code never ran (§3.5 [BUG]).
- The factory's own messages are the 700 texts below: Vac's two heartbeat messages and
  Vcycle's three others (Appendix B), so every machine the factory stops says why.

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

from typing import Optional

HEARTBEAT_NOT_CREATED = "700 Heartbeat file not created"
HEARTBEAT_NOT_UPDATED = "700 Heartbeat file not updated"
EXCEEDED_WALLCLOCK = "700 Exceeded max_wallclock_seconds"
PASSED_SHUTDOWN_TIME = "700 Passed shutdowntime"
FAILED_TO_START = "700 Failed to start"

# The lowest code that makes the space back off (§4.4).
FIRST_ABORT_CODE = 300


def shutdown_code(shutdown_message: Optional[str]) -> Optional[int]:
    """`300 Nothing to do` -> 300; None, empty or a non-numeric prefix -> None."""
    if not shutdown_message:
        return None
    prefix = shutdown_message.strip()[:3]
    if len(prefix) == 3 and (prefix.isascii() and prefix.isdigit()):
        return int(prefix)
    return None


def is_abort(shutdown_message: Optional[str]) -> bool:
    """True if the message's code is 300 or more (acceptance 21)."""
    code = shutdown_code(shutdown_message)
    return code is not None and code >= FIRST_ABORT_CODE


def fizzle_message(seconds: int) -> str:
    """The message Vac gives a machine that ended silently too soon (§3.5)."""
    return f"300 Vac detects fizzle after {seconds} seconds"


def effective_outcome(
    shutdown_message: Optional[str],
    started_time: Optional[int],
    finished_time: Optional[int],
    fizzle_seconds: int,
) -> Optional[str]:
    """The outcome to report for a finished machine.

    A message the guest (or the factory) wrote wins. Without one, a machine that started
    and finished less than `fizzle_seconds` later gets the fizzle message; one that ran
    longer, or never started, or whose finish time is unknown, has no outcome (None).
    """
    if shutdown_message and shutdown_message.strip():
        return shutdown_message.strip()
    if started_time is None or finished_time is None:
        return None
    ran_seconds = max(0, finished_time - started_time)
    if ran_seconds < fizzle_seconds:
        return fizzle_message(ran_seconds)
    return None
