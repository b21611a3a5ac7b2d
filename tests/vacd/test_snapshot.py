"""What a factory publishes to its peers, from a real factory pass (§3.4-§3.6)."""

from __future__ import annotations

from pathlib import Path

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.snapshot import HostFacts, build_snapshot
from vacquery.messages import MachineState

HOST = HostFacts(0.5, "6.1.0", "Debian 12", 1_600_000_000, 1000, 100, 2000, 200, 0, 1024, 512, 4096)


def test_snapshot_has_a_status_per_slot_and_machinetype_and_the_factory_totals(tmp_path: Path) -> None:
    harness = Harness(tmp_path, make_settings(total_processors=3), make_machinetype(tmp_path, "atlas"),
                      make_machinetype(tmp_path, "lhcb", target_share=0.0))
    harness.run_pass()  # creates the machines
    report = harness.run_pass()  # sees them running
    snapshot = build_snapshot(report, HOST, {"factory": report.now})
    assert [status.state for status in snapshot.machines] == [MachineState.RUNNING] * 3 + [MachineState.SHUT_DOWN]
    assert snapshot.machines[3].processors == 0 and snapshot.machines[3].uuid is None
    by_name = {status.machinetype: status for status in snapshot.machinetypes}
    assert by_name["atlas"].running_machines == 3 and by_name["atlas"].running_processors == 3.0
    assert by_name["lhcb"].running_machines == 0
    assert snapshot.factory.running_processors == 3 and snapshot.factory.max_processors == 3
    assert snapshot.factory.factory_heartbeat_time == report.now
