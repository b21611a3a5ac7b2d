"""The /dashboard.json document: the space as heard, from a status document and wire statuses."""

from __future__ import annotations

import pytest

from tests.vacd.dashboard_samples import NOW, factory, machine, machinetype, status_document
from vacd.dashboard.history import Sample
from vacd.dashboard.view import Heard, PassFacts, achieved_shares, history_sample, outcome_key, share_error, space_view
from vacquery.messages import MachineState

F1, F2, F3 = "f1.example.com", "f2.example.com", "f3.example.com"


def facts(census_time: float = NOW - 10, **status_changes: object) -> PassFacts:
    own = (
        machine(F1, 0, "lhcb", MachineState.RUNNING),
        machine(F1, 1, "atlas", MachineState.RUNNING),
        machinetype(F1, "lhcb", 10.0, 1.0),
        machinetype(F1, "atlas", 10.0, 1.0),
        factory(F1, 2, 2),
    )
    census = Heard(census_time, (machinetype(F2, "lhcb", 20.0, 2.0),
                                 machinetype(F2, "atlas", 0.0, 0.0, message="300 No more work", message_time=NOW - 50)),
                   asked=(F2, F3), silent=(F3,))
    return PassFacts(NOW, status_document(**status_changes), own, census)


def listing(listing_time: float = NOW - 5) -> Heard:
    return Heard(listing_time, (machine(F2, 0, "lhcb", MachineState.RUNNING, processors=2),
                                machine(F2, 1, None, MachineState.SHUT_DOWN, processors=0, message="300 No more work"),
                                factory(F2, 2, 2)),
                 asked=(F2, F3), silent=(F3,))


def test_shares_are_the_space_hs06_against_the_configured_targets() -> None:
    document = space_view(facts(), None, [], NOW)
    rows = {row["name"]: row for row in document["machinetypes"]}
    assert rows["lhcb"]["target_share"] == pytest.approx(0.75) and rows["atlas"]["target_share"] == pytest.approx(0.25)
    assert rows["lhcb"]["achieved_share"] == pytest.approx(0.75) and rows["atlas"]["achieved_share"] == pytest.approx(0.25)
    assert rows["lhcb"]["running_processors"] == 3.0 and rows["atlas"]["running_processors"] == 1.0
    assert document["share_error"] == pytest.approx(0.0)


def test_share_error_is_half_the_l1_distance_and_zero_before_anything_runs() -> None:
    assert share_error({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 0.0}) == pytest.approx(0.5)
    assert share_error({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    assert share_error({"a": 1.0}, {}) == 0.0
    assert achieved_shares([{"machinetype": "a", "running_hs06": "lots"}]) == {"a": 0.0}


def test_machines_are_this_factory_and_the_listing_sorted_as_vac_machines_prints_them() -> None:
    document = space_view(facts(), listing(), [], NOW)
    assert [(m["factory"], m["machine"]) for m in document["machines"]] == [
        (F1, "f1-00.example.com"), (F1, "f1-01.example.com"), (F2, "f2-00.example.com"), (F2, "f2-01.example.com")]
    assert document["machines"][2]["num_processors"] == 2


def test_factories_are_up_full_silent_and_only_our_own_draining_is_known() -> None:
    document = space_view(facts(draining=True), listing(), [], NOW)
    rows = {row["name"]: row for row in document["factories"]}
    assert rows[F1]["state"] == "up" and rows[F1]["full"] and rows[F1]["draining"] is True
    assert rows[F2]["state"] == "up" and rows[F2]["draining"] is None and rows[F2]["version"] == "Vac 4.0.0 vacd-responder"
    assert rows[F3]["state"] == "silent" and rows[F3]["running_processors"] is None


def test_a_peer_that_limited_its_answer_is_shown_as_limited_not_silent() -> None:
    heard = Heard(NOW, (), asked=(F2,), silent=(F2,), limited={F2: "unlisted"})
    document = space_view(PassFacts(NOW, status_document(census=None)), heard, [], NOW)
    assert {row["name"]: row["state"] for row in document["factories"]}[F2] == "limited"


def test_a_backoff_gives_its_end_and_the_latest_abort_heard_as_its_reason() -> None:
    document = space_view(facts(), None, [], NOW)
    assert document["backoffs"] == [{"machinetype": "atlas", "until": NOW + 600, "reason": "300 No more work",
                                     "factory": F2, "machine": "f2-00.example.com", "time": NOW - 50}]


def test_a_backoff_with_no_abort_heard_says_creations_failed_here() -> None:
    lone = PassFacts(NOW, status_document())
    [backoff] = space_view(lone, None, [], NOW)["backoffs"]
    assert backoff["reason"].startswith("creations failed on this factory") and backoff["factory"] == F1


def test_outcomes_count_the_slots_last_messages_by_code() -> None:
    document = space_view(facts(), listing(), [], NOW)
    assert [(o["code"], o["count"], o["last_message"]) for o in document["outcomes"]] == [("300", 1, "300 No more work")]
    assert outcome_key("200 Success") == "200" and outcome_key("no code here") == "none" and outcome_key(None) == "none"


def test_the_newer_of_census_and_listing_gives_the_peers_machinetypes() -> None:
    newer = Heard(NOW - 1, (machinetype(F2, "lhcb", 0.0, 0.0), machinetype(F2, "atlas", 30.0, 3.0)), asked=(F2,))
    document = space_view(facts(census_time=NOW - 100), newer, [], NOW)
    rows = {row["name"]: row for row in document["machinetypes"]}
    assert rows["atlas"]["running_processors"] == 4.0 and document["machinetypes_heard_time"] == NOW - 1
    older = Heard(NOW - 500, newer.statuses, asked=(F2,))
    assert {row["name"]: row["running_processors"] for row in space_view(facts(), older, [], NOW)["machinetypes"]} \
        == {"lhcb": 3.0, "atlas": 1.0}


def test_a_machinetype_only_a_peer_runs_is_listed_with_no_target() -> None:
    census = Heard(NOW, (machinetype(F2, "cms", 10.0, 1.0),), asked=(F2,))
    document = space_view(PassFacts(NOW, status_document(), census=census), None, [], NOW)
    cms = next(row for row in document["machinetypes"] if row["name"] == "cms")
    assert cms["configured_here"] is False and cms["target_share"] == 0.0 and cms["achieved_share"] == 1.0


def test_this_factory_carries_heartbeat_ages_gate_and_errors() -> None:
    document = space_view(facts(last_error="creation failed: disk"), None, [], NOW + 10)
    this = document["this_factory"]
    assert this["heartbeats"]["responder"] == {"time": NOW - 400, "age_seconds": 410.0}
    assert this["gate"] == "all 2 processors in use" and this["last_error"] == "creation failed: disk"
    assert [slot["name"] for slot in this["slots"]] == ["f1-00.example.com", "f1-01.example.com"]


def test_a_history_sample_holds_the_space_processors_share_error_and_completeness() -> None:
    sample = history_sample(facts(), creations=3, creation_failures=1, outcomes={"300": 2})
    assert sample.processors == {"lhcb": 3.0, "atlas": 1.0}
    assert sample.share_error == pytest.approx(0.0) and sample.census_completeness == 0.5
    assert (sample.time, sample.creations, sample.creation_failures, sample.outcomes) == (NOW, 3, 1, {"300": 2})


def test_history_samples_are_in_the_document() -> None:
    samples = [Sample(4, NOW - 60, {"lhcb": 1.0}, 0.1, 1.0)]
    assert space_view(facts(), None, samples, NOW)["history"]["samples"][0]["sequence"] == 4
