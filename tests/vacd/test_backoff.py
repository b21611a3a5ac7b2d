"""Capped doubling delays (vacd/backoff.py): the one rule every retry in vacd waits by."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vacd.backoff import doubling_delay


def test_the_wait_doubles_from_first_and_stays_at_the_maximum() -> None:
    assert [doubling_delay(30, 3600, failures) for failures in range(9)] == [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert [doubling_delay(1.0, 60.0, failures) for failures in range(8)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


@given(st.floats(min_value=0.001, max_value=1e4), st.floats(min_value=0.001, max_value=1e6),
       st.integers(min_value=0, max_value=10**9))
def test_any_number_of_failures_waits_at_most_the_maximum_and_never_overflows(
        first: float, maximum: float, failures: int) -> None:
    delay = doubling_delay(first, maximum, failures)
    assert delay <= maximum
    assert delay == min(maximum, first * 2.0 ** min(failures, 30))


@given(st.integers(min_value=1, max_value=1000), st.integers(min_value=1, max_value=10**6),
       st.integers(min_value=0, max_value=5000))
def test_a_further_failure_never_shortens_the_wait(first: int, maximum: int, failures: int) -> None:
    assert doubling_delay(first, maximum, failures + 1) >= doubling_delay(first, maximum, failures)
    assert isinstance(doubling_delay(first, maximum, failures), int)
