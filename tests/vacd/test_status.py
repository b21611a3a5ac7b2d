"""status.json and Vac's `counts` from a real factory pass (acceptance 41)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.status import counts_line, publish_status, status_document


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
