"""status.json and Vac's `counts` from a real factory pass (acceptance 41), and the faults it shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.factory import Fault, PassReport, SlotError
from vacd.paths import Paths
from vacd.status import counts_line, pass_completed, publish_status, status_document, write_heartbeat


def test_status_counts_live_machines_per_machinetype_and_vac_counts_line(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(hs06_per_processor=10.0),
                      make_machinetype(tmp_path, "atlas", target_share=3.0), make_machinetype(tmp_path, "lhcb"))
    harness.run_pass()  # creates the machines
    report = harness.run_pass()  # sees them running
    document = status_document(report, heartbeats={"factory": report.now}, census=None, draining=False,
                               last_error=None)
    running = {name: entry["running_machines"] for name, entry in document["machinetypes"].items()}
    assert sum(running.values()) == 4 and document["running_processors"] == 4
    assert sum(entry["running_hs06"] for entry in document["machinetypes"].values()) == 40.0
    assert [slot["state"] for slot in document["slots"]] == ["Running"] * 4
    assert counts_line(document) == "4 4 4 4 40.00\n"
    publish_status(harness.paths, document)
    assert json.loads(harness.paths.status_file.read_text())["factory"] == "f1.example.com"
    assert harness.paths.counts_file.read_text() == "4 4 4 4 40.00\n"


# ---------------------------------------------------------------- faults (issue 8 item 8)

BAD_LINE = "/etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'"


def test_status_document_is_written_without_any_settings_and_names_the_config_fault(tmp_path: Path) -> None:
    report = PassReport(1_800_000_000, None, {}, config_error=BAD_LINE,
                        faults=[Fault("config", BAD_LINE, 1_799_999_000)])
    document = status_document(report, heartbeats={"loop": report.now}, census=None, draining=False,
                               last_error=None, last_pass_completed=None)
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    publish_status(paths, document)

    written = json.loads(paths.status_file.read_text())
    assert written["factory"] is None and written["total_processors"] == 0
    assert written["faults"] == [{"kind": "config", "message": BAD_LINE, "since": 1_799_999_000}]
    assert written["config_error"] == BAD_LINE
    assert written["last_pass_completed"] is None
    assert written["slot_errors"] == []


def test_status_document_lists_slot_errors_and_the_cumulative_totals(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(), make_machinetype(tmp_path, "atlas"))
    report = harness.run_pass()
    report.slot_errors.append(SlotError(3, "f1-03.example.com", "police", "KeyError: 'uuid'", since=report.now - 90,
                                        count=3, retry_at=report.now + 120))
    document = status_document(report, heartbeats={}, census=None, draining=False, last_error=None,
                               last_pass_completed=report.now, slot_error_totals={"police": 3, "observe": 0})

    assert document["slot_errors"] == [{"ordinal": 3, "name": "f1-03.example.com", "step": "police",
                                        "error": "KeyError: 'uuid'", "since": report.now - 90, "count": 3,
                                        "retry_at": report.now + 120}]
    assert document["slot_error_totals"] == {"police": 3, "observe": 0}
    assert document["last_pass_completed"] == report.now
    assert pass_completed(report)  # slot errors are contained: the pass still did its job


def test_a_pass_under_a_bad_configuration_or_without_a_listing_has_not_completed(tmp_path: Path) -> None:
    settings = make_settings()
    assert not pass_completed(PassReport(1, None, {}, config_error=BAD_LINE))
    # After a bad reload the factory polices under the last good settings, but the config is bad.
    assert not pass_completed(PassReport(1, settings, {}, config_error=BAD_LINE, faults=[Fault("config", BAD_LINE, 1)]))
    assert not pass_completed(PassReport(1, settings, {}, observe_error="list machines: libvirtd gone"))
    assert not pass_completed(PassReport(1, settings, {}, faults=[Fault("listing", "libvirtd gone", 1)]))
    assert pass_completed(PassReport(1, settings, {}, faults=[Fault("disk", "312 MiB free", 1)]))


def test_part_heartbeats_are_replaced_whole_without_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three renames a pass, each stale after an OS crash anyway: atomic for readers, never fsync-ed (issue 15)."""
    paths = Paths(tmp_path)
    paths.heartbeat_file("loop").parent.mkdir(parents=True)
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    for now in (1_700_000_000, 1_700_000_001):
        for part in ("loop", "factory", "responder"):
            write_heartbeat(paths, part, now)
    assert fsyncs == []
    assert {part: paths.heartbeat_file(part).read_text() for part in ("loop", "factory", "responder")} == {
        part: "1700000001\n" for part in ("loop", "factory", "responder")}
    assert not [name for name in os.listdir(paths.heartbeat_file("loop").parent) if name.endswith(".tmp")]
