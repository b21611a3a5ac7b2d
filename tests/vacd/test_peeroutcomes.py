"""A peer's abort, once heard, backs the machinetype off for its whole backoff, census or not."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.config import FactoryAddress, Machinetype
from vacd.peeroutcomes import PeerOutcomes, relevance_seconds
from vacd.scheduler import MachinetypeReport, last_abort_times

NOW = 1_800_000_000
PEERS = (FactoryAddress("f1.example.com"), FactoryAddress("F2.example.com"), FactoryAddress("f3.example.com"))


def machinetype(name: str = "atlas", backoff_seconds: int = 600) -> Machinetype:
    return Machinetype(name=name, machinegroup=name, machinetype_path=Path("/nonexistent") / name,
                       target_share=1.0, backoff_seconds=backoff_seconds, fizzle_seconds=60)


def abort(factory: str = "F2.example.com", at: int = NOW - 100, running_hs06: float = 0.0) -> MachinetypeReport:
    return MachinetypeReport(factory, "atlas", running_hs06, 0, "300 No more work", at, "f2-00.example.com")


SETTINGS = make_settings(factories=PEERS)
MACHINETYPES = {"atlas": machinetype()}


def test_a_census_that_misses_the_peer_keeps_its_abort() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    completed = outcomes.complete([], SETTINGS, MACHINETYPES, NOW + 1)
    assert completed == [abort()]
    assert last_abort_times(completed, NOW + 1) == {"atlas": NOW - 100}


def test_a_remembered_outcome_brings_no_running_processors() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort(running_hs06=8.0)], SETTINGS, MACHINETYPES, NOW)
    [filled] = outcomes.complete([], SETTINGS, MACHINETYPES, NOW + 1)
    assert filled.running_hs06 == 0.0 and filled.num_before_fizzle == 0


def test_a_status_heard_is_taken_as_the_peer_says_it() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    earlier_success = MachinetypeReport("f2.example.com", "atlas", 4.0, 1, "200 Success", NOW - 500)
    assert outcomes.complete([earlier_success], SETTINGS, MACHINETYPES, NOW + 1) == [earlier_success]
    assert outcomes.complete([], SETTINGS, MACHINETYPES, NOW + 2)[0].shutdown_message == "200 Success"


def test_a_status_heard_with_no_outcome_forgets_the_remembered_one() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    no_outcome = MachinetypeReport("f2.example.com", "atlas", 4.0, 1)
    assert outcomes.complete([no_outcome], SETTINGS, MACHINETYPES, NOW + 1) == [no_outcome]
    assert outcomes.complete([], SETTINGS, MACHINETYPES, NOW + 2) == []


def test_a_newer_success_from_the_same_peer_replaces_its_abort() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    success = MachinetypeReport("F2.example.com", "atlas", 1.0, 0, "200 Success", NOW - 10)
    outcomes.complete([success], SETTINGS, MACHINETYPES, NOW)
    [filled] = outcomes.complete([], SETTINGS, MACHINETYPES, NOW + 1)
    assert filled.shutdown_message == "200 Success"
    assert last_abort_times([filled], NOW + 1) == {}


def test_an_outcome_is_forgotten_once_it_can_no_longer_back_off() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort(at=NOW)], SETTINGS, MACHINETYPES, NOW)
    horizon = relevance_seconds(MACHINETYPES["atlas"], SETTINGS.abort_rule)
    assert len(outcomes.complete([], SETTINGS, MACHINETYPES, NOW + horizon)) == 1
    assert outcomes.complete([], SETTINGS, MACHINETYPES, NOW + horizon + 1) == []
    assert len(outcomes) == 0


def test_the_failure_rate_rule_remembers_for_its_whole_window() -> None:
    assert relevance_seconds(machinetype(backoff_seconds=600), "failure_rate") == 3600
    assert relevance_seconds(machinetype(backoff_seconds=600), "vac03") == 600 + 60 + 60
    assert relevance_seconds(machinetype(backoff_seconds=7200), "failure_rate") == 7200 + 60 + 60


def test_peers_and_machinetypes_removed_from_the_configuration_are_forgotten() -> None:
    outcomes = PeerOutcomes()
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    assert outcomes.complete([], make_settings(factories=PEERS[:1]), MACHINETYPES, NOW) == []
    outcomes.complete([abort()], SETTINGS, MACHINETYPES, NOW)
    assert outcomes.complete([], SETTINGS, {"lhcb": machinetype("lhcb")}, NOW) == []


reports = st.builds(
    MachinetypeReport,
    factory=st.sampled_from(["F2.example.com", "f2.example.com", "f3.example.com"]),  # f1 is this factory
    machinetype=st.just("atlas"),
    running_hs06=st.floats(0, 64),
    num_before_fizzle=st.integers(0, 4),
    shutdown_message=st.sampled_from([None, "200 Success", "300 No more work", "500 Broken", "700 Failed"]),
    shutdown_time=st.one_of(st.none(), st.integers(NOW - 900, NOW)),
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(passes=st.lists(st.lists(reports, max_size=6, unique_by=lambda r: r.factory.lower()), min_size=1, max_size=6))
def test_the_aborts_seen_are_each_peers_last_word_whatever_was_lost(passes: list[list[MachinetypeReport]]) -> None:
    """Whatever each pass happened to hear, the aborts seen are those of each peer's last word."""
    outcomes = PeerOutcomes()
    latest_heard: dict[tuple[str, str], MachinetypeReport] = {}
    for heard in passes:
        completed = outcomes.complete(heard, SETTINGS, MACHINETYPES, NOW)
        for report in heard:
            latest_heard[(report.factory.lower(), report.machinetype)] = report
        assert completed[:len(heard)] == heard  # what was heard is used as heard
        assert last_abort_times(completed, NOW, "vac03") == last_abort_times(list(latest_heard.values()), NOW, "vac03")
        with_outcome = {key for key, report in latest_heard.items() if report.shutdown_time is not None}
        assert {(r.factory.lower(), r.machinetype) for r in completed} >= with_outcome


def test_a_full_factory_keeps_a_peer_abort_it_heard_before_filling(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(factories=PEERS, total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "atlas", backoff_seconds=600), make_machinetype(tmp_path, "lhcb"))
    now = int(harness.clock())
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, "300 No work", now - 100)]
    first = harness.run_pass()
    assert [create.machinetype for create in first.decisions.creates] == ["lhcb"]
    harness.peer_reports = []
    full = harness.run_pass()  # no census is run while full: the backoff is still shown
    assert "atlas" in full.decisions.outlook.backoff_until


def test_a_peer_abort_holds_when_the_next_census_misses_that_peer(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(factories=PEERS), make_machinetype(tmp_path, "atlas", backoff_seconds=600))
    now = int(harness.clock())
    harness.peer_reports = [MachinetypeReport("f2.example.com", "atlas", 0.0, 0, "300 No work", now - 100)]
    assert harness.run_pass().decisions.creates == ()
    harness.peer_reports = []  # every datagram from f2 lost this time
    harness.clock.advance(30)
    assert harness.run_pass().decisions.creates == ()
    assert harness.backend.created_names() == []
    harness.clock.advance(600)
    assert harness.run_pass().decisions.creates != ()
