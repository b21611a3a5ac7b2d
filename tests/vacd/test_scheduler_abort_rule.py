"""Shares that survive failing payloads (issue 9 item 3): the abort rule of vacd.scheduler.

Under Vac 03's rule every payload verdict of 300 or more backs its machinetype off across the
space, so 5 % of payloads failing with `700` skewed shares by 7.7 %. Under "failure_rate"
(the default), 300-699 ("no work", Vcycle's reading) still back off at once, and 700 and more
back off only while they are at least half of the machinetype's recent votes: each factory's
latest outcome, or its machine running past fizzle_seconds where it has no recent outcome.
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


def running_past_fizzle(factory_number: int, message: Optional[str] = None,
                        age_seconds: int = 60) -> MachinetypeReport:
    """A factory running an lhcb machine past fizzle_seconds, with `message` as its latest outcome."""
    return report(f"g{factory_number}.example.com", "lhcb", 10.0, message=message,
                  shutdown_time=None if message is None else NOW - age_seconds,
                  num_before_fizzle=0, running_machines=1)


def test_factories_running_the_type_past_fizzle_outvote_its_first_failures() -> None:
    # A type's first hour: working payloads run for hours, so the only outcomes are the few
    # that failed early; the factories whose machines found work vote for it.
    reports = outcomes(["700 Payload crashed"] * 2) + [running_past_fizzle(n) for n in range(3)]
    assert last_abort_times(reports, NOW, "failure_rate") == {}
    assert last_abort_times(reports, NOW, "vac03") == {"lhcb": NOW - 60}


def test_a_factory_whose_latest_outcome_failed_votes_failure_although_it_runs_the_type() -> None:
    # A type whose every payload fails after fizzle_seconds still backs off: each factory's
    # latest outcome is its vote, and a running machine only votes where there is none.
    reports = [running_past_fizzle(n, message="700 Payload crashed") for n in range(4)]
    assert last_abort_times(reports, NOW, "failure_rate") == {"lhcb": NOW - 60}


def test_a_machine_past_fizzle_does_not_vote_beside_an_outcome_older_than_the_window() -> None:
    # An outcome older than the window is no vote; the running machine is the factory's vote.
    reports = outcomes(["700 Payload crashed"]) + [
        running_past_fizzle(1, message="700 Payload crashed", age_seconds=FAILURE_RATE_WINDOW_SECONDS + 1)
    ]
    assert last_abort_times(reports, NOW, "failure_rate") == {"lhcb": NOW - 60}
    reports += [running_past_fizzle(2)]
    assert last_abort_times(reports, NOW, "failure_rate") == {}


@given(st.lists(st.tuples(st.sampled_from(["700 Crashed", "200 Success", None, "no outcome"]), st.booleans()),
                min_size=1, max_size=40))
def test_each_factory_votes_once_with_its_latest_outcome_or_else_its_machine_past_fizzle(
    factories: list[tuple[Optional[str], bool]],
) -> None:
    reports = []
    for n, (message, runs_past_fizzle) in enumerate(factories):
        reports.append(report(f"f{n}.example.com", "lhcb", 10.0 if runs_past_fizzle else 0.0,
                              message=None if message == "no outcome" else message,
                              shutdown_time=None if message == "no outcome" else NOW - 60,
                              running_machines=1 if runs_past_fizzle else 0))
    failures = sum(1 for message, _ in factories if message == "700 Crashed")
    votes = sum(1 for message, runs in factories if message != "no outcome" or runs)
    backed_off = "lhcb" in last_abort_times(reports, NOW, "failure_rate")
    assert backed_off == (failures > 0 and failures >= FAILURE_RATE_THRESHOLD * votes)


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
