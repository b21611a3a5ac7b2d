"""Shares that survive failing payloads (issue 9 item 3): the abort rule of vacd.scheduler.

Under Vac 03's rule every payload verdict of 300 or more backs its machinetype off across the
space, so 5 % of payloads failing with `700` skewed shares by 7.7 %. Under "failure_rate"
(the default), 300-699 ("no work", Vcycle's reading) still back off at once, and 700 and more
back off only while they are at least half of the machinetype's recent outcomes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacd.test_scheduler_site import NOW, machinetype, report, run
from vacd.scheduler import FAILURE_RATE_THRESHOLD, FAILURE_RATE_WINDOW_SECONDS, MachinetypeReport, last_abort_times


def outcomes(messages: Sequence[Optional[str]], age_seconds: int = 60) -> list[MachinetypeReport]:
    """Each factory's latest finished lhcb machine, all ending age_seconds before NOW."""
    return [report(f"f{n}.example.com", "lhcb", 0.0, message=message, shutdown_time=NOW - age_seconds)
            for n, message in enumerate(messages, start=2)]


def test_one_failing_payload_in_ten_backs_nothing_off() -> None:
    reports = outcomes(["700 Payload crashed"] + ["200 Success"] * 9)
    assert last_abort_times(reports, NOW, "failure_rate") == {}
    decisions = run([machinetype("lhcb", backoff_seconds=600)], reports)
    assert [create.machinetype for create in decisions.creates] == ["lhcb"]


def test_vac03_rule_backs_off_on_the_one_failing_payload() -> None:
    reports = outcomes(["700 Payload crashed"] + ["200 Success"] * 9)
    assert last_abort_times(reports, NOW, "vac03") == {"lhcb": NOW - 60}
    decisions = run([machinetype("lhcb", backoff_seconds=600)], reports, abort_rule="vac03")
    assert decisions.creates == () and "lhcb" in decisions.outlook.backoff_until


def test_most_outcomes_failing_backs_off_from_the_latest_failure() -> None:
    reports = outcomes(["700 Payload crashed"] * 6 + ["200 Success"] * 4)
    reports.append(report("f99.example.com", "lhcb", 0.0, message="700 Payload crashed", shutdown_time=NOW - 5))
    assert last_abort_times(reports, NOW, "failure_rate") == {"lhcb": NOW - 5}
    decisions = run([machinetype("lhcb", backoff_seconds=600)], reports)
    assert decisions.creates == () and decisions.outlook.backoff_until["lhcb"] >= NOW - 5 + 600


@pytest.mark.parametrize("message", ["300 Nothing to do", "500 Wrong VO", "699 Odd"])
def test_no_work_verdicts_back_off_at_once_under_either_rule(message: str) -> None:
    reports = outcomes([message] + ["200 Success"] * 9)
    assert last_abort_times(reports, NOW, "failure_rate") == {"lhcb": NOW - 60}
    assert last_abort_times(reports, NOW, "vac03") == {"lhcb": NOW - 60}


def test_failures_older_than_the_window_do_not_count() -> None:
    old = outcomes(["700 Payload crashed"] * 5, age_seconds=FAILURE_RATE_WINDOW_SECONDS + 1)
    recent = outcomes(["200 Success"] * 3)
    assert last_abort_times(old + recent, NOW, "failure_rate") == {}


def test_a_lone_factory_whose_last_payload_failed_backs_off() -> None:
    # One outcome, one failure: the rate is 1. Vac 03 would back off too; this keeps a lone
    # factory from feeding a type whose payload crashes every time.
    assert last_abort_times(outcomes(["700 Payload crashed"]), NOW, "failure_rate") == {"lhcb": NOW - 60}


@given(st.lists(st.sampled_from(["700 Crashed", "200 Success", None]), min_size=1, max_size=40))
def test_failure_rate_backs_off_exactly_when_failures_reach_the_threshold(messages: list[Optional[str]]) -> None:
    reports = outcomes(messages)
    failures = messages.count("700 Crashed")
    backed_off = "lhcb" in last_abort_times(reports, NOW, "failure_rate")
    assert backed_off == (failures > 0 and failures >= FAILURE_RATE_THRESHOLD * len(messages))


@given(st.lists(st.sampled_from(["700 Crashed", "200 Success", "300 Nothing to do", None]), max_size=30),
       st.randoms(use_true_random=False))
def test_abort_times_do_not_depend_on_the_order_of_the_reports(messages: list[Optional[str]], shuffler) -> None:  # type: ignore[no-untyped-def]
    reports = [report(f"f{n}.example.com", "lhcb", 0.0, message=message, shutdown_time=NOW - 10 * n)
               for n, message in enumerate(messages)]
    shuffled = list(reports)
    shuffler.shuffle(shuffled)
    for rule in ("failure_rate", "vac03"):
        assert last_abort_times(reports, NOW, rule) == last_abort_times(shuffled, NOW, rule)
