"""Finalising: only this machine's guest, in this machine's life, can back the space off (issue 11 item 4).

The factory runs against the in-memory backend; the guest's PUT goes through
`vacd.guestapi.joboutputs.store_upload` with the sender the guest API identified, as in
production, and anything else is written straight into the directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.guestapi.joboutputs import Sender, store_upload
from vacd.outcomes import HEARTBEAT_NOT_CREATED
from vacd.records import StoredMachine

SLOT = "f1-00.example.com"


def one_slot(tmp_path: Path, **machinetype_options: object) -> tuple[Harness, StoredMachine]:
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1),
                      make_machinetype(tmp_path, "lhcb", backoff_seconds=3600, **machinetype_options))
    harness.run_pass()
    stored = harness.store.slot_binding(SLOT)
    assert stored is not None and stored.has_started
    return harness, stored


def guest_puts(harness: Harness, stored: StoredMachine, text: str) -> None:
    store_upload(stored.directory / "joboutputs", "shutdown_message", text.encode() + b"\n", int(harness.clock()),
                 10**6, Sender(stored.record.uuid, stored.record.ip_address))


def end_after(harness: Harness, seconds: int) -> None:
    """Run `seconds` more (a pass then writes the heartbeat the fizzle rule measures to), then power off."""
    harness.clock.advance(seconds)
    harness.run_pass()
    harness.backend.power_off(SLOT)
    harness.run_pass()


def test_message_put_by_the_slots_guest_backs_the_space_off(tmp_path: Path) -> None:
    harness, stored = one_slot(tmp_path)
    harness.clock.advance(120)
    guest_puts(harness, stored, "300 Nothing to do")
    end_after(harness, 10)
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.shutdown_message == "300 Nothing to do" and finished.finish.verdict == "300 Nothing to do"
    harness.clock.advance(60)
    harness.run_pass()
    assert harness.backend.created_names() == [SLOT], "backed off: no new machine"


def test_leftover_message_from_before_the_start_is_kept_but_backs_no_one_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness, stored = one_slot(tmp_path)
    leftover = stored.directory / "joboutputs" / "shutdown_message"
    leftover.write_text("300 left over\n")
    before_start = (stored.started_time or 0) - 600
    os.utime(leftover, (before_start, before_start))
    with caplog.at_level(logging.WARNING, logger="vacd.factory"):
        end_after(harness, 120)
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.shutdown_message == "300 left over", "kept for the admin, APEL and status"
    assert finished.finish.verdict is None and finished.finish.distrust_reason is not None
    assert any("not used for the space's backoff" in line for line in caplog.messages)
    [report] = harness.factory._last_local_reports
    assert report.shutdown_message is None
    harness.clock.advance(60)
    harness.run_pass()
    assert harness.backend.created_names() == [SLOT, SLOT], "no backoff: the slot is refilled"


def test_message_written_on_the_host_without_a_receipt_counts_as_no_verdict(tmp_path: Path) -> None:
    harness, stored = one_slot(tmp_path)
    harness.clock.advance(120)
    (stored.directory / "joboutputs" / "shutdown_message").write_text("300 from the host\n")
    end_after(harness, 10)
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.shutdown_message == "300 from the host" and finished.finish.verdict is None


def test_distrusted_message_cannot_hide_a_fizzle(tmp_path: Path) -> None:
    harness, stored = one_slot(tmp_path)
    (stored.directory / "joboutputs" / "shutdown_message").write_text("200 Success\n")
    end_after(harness, 10)
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.shutdown_message == "200 Success"
    assert finished.finish.verdict == "300 Vac detects fizzle after 10 seconds"


def test_factorys_own_heartbeat_verdict_is_used_as_before(tmp_path: Path) -> None:
    harness, stored = one_slot(tmp_path, heartbeat_file="heartbeat", fizzle_seconds=600)
    harness.clock.advance(601)
    harness.run_pass()
    assert (stored.directory / "joboutputs" / "shutdown_message").read_text() == HEARTBEAT_NOT_CREATED + "\n"
    end_after(harness, 5)
    finished = harness.store.load_machine(stored.directory)
    assert finished is not None and finished.finish is not None
    assert finished.finish.distrust_reason is None and finished.finish.verdict == HEARTBEAT_NOT_CREATED
