"""Capped doubling delays: how long to leave a thing that keeps failing before trying again.

Rules:
- After the first failure the wait is `first`; each further failure in a row doubles it, up
  to `maximum`, where it stays.
- The doubling is bounded, so a thing that fails for weeks (a vacuum pipe whose server is
  gone fails twice an hour, thousands of times) still waits `maximum`: a float times 2 to
  the power of a thousand failures is an OverflowError, not a long wait.
"""

from __future__ import annotations

from typing import TypeVar

# Beyond this many doublings every caller's wait is long past its maximum (2**30 ≈ 10**9).
MAX_DOUBLINGS = 30

Seconds = TypeVar("Seconds", int, float)


def doubling_delay(first: Seconds, maximum: Seconds, doublings: int) -> Seconds:
    """`first` doubled `doublings` (>= 0) times, 0 for the first failure, but never more than `maximum`."""
    return min(maximum, first * (1 << min(doublings, MAX_DOUBLINGS)))
