"""The disk-wide joboutputs total: a scan of real directories and the running updates."""

from __future__ import annotations

from pathlib import Path

from vacd.guestapi.joboutputstotal import JoboutputsTotal, scan


def test_scan_counts_guest_files_of_every_machine_directory_and_skips_links(tmp_path: Path) -> None:
    machines = tmp_path / "machines"
    for name, size in (("a", 10), ("b", 0), ("c", 25)):
        (machines / name / "joboutputs").mkdir(parents=True)
        if size:
            (machines / name / "joboutputs" / "log").write_bytes(b"x" * size)
    (machines / "c" / "joboutputs" / ".received.json").write_text("{}")  # vacd's own file
    (machines / "d").mkdir()  # no joboutputs yet
    (machines / "link").symlink_to(machines / "a")
    assert scan(machines) == {machines / "a": 10, machines / "c": 25}
    assert scan(tmp_path / "missing") == {}


def test_running_total_follows_updates_and_counts_pending_uploads() -> None:
    total = JoboutputsTotal()
    total.replace_all({Path("/m/a"): 10, Path("/m/c"): 25})
    assert total.total == 35
    total.set_machine(Path("/m/a"), 50)
    total.set_machine(Path("/m/c"), 0)
    assert (total.total, total.by_machine) == (50, {Path("/m/a"): 50})
    assert total.refusal(Path("/m/b"), 40, pending_bytes=10, cap_bytes=100) == ""
    assert "would hold 101 bytes" in total.refusal(Path("/m/b"), 41, pending_bytes=10, cap_bytes=100)
    # A machine's own bytes are replaced, not added.
    assert total.refusal(Path("/m/a"), 100, pending_bytes=0, cap_bytes=100) == ""
