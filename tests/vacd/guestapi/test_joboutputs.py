"""$JOBOUTPUTS storage: quota, file count, atomic replacement and receipt times."""

from __future__ import annotations

from pathlib import Path

import pytest

from vacd.guestapi import joboutputs
from vacd.guestapi.joboutputs import (
    RECEIVED_FILE,
    QuotaExceeded,
    ReceivedTimes,
    quota_problem,
    received_times,
    shutdown_message_time,
    store_upload,
    usage,
)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    directory = tmp_path / "joboutputs"
    directory.mkdir()
    return directory


def test_upload_is_written_and_its_receipt_recorded(outputs: Path) -> None:
    store_upload(outputs, "shutdown_message", b"300 No work", now=100, quota_bytes=1000)
    assert (outputs / "shutdown_message").read_bytes() == b"300 No work"
    assert received_times(outputs) == {"shutdown_message": ReceivedTimes(first=100, last=100)}
    assert shutdown_message_time(outputs) == 100


def test_replacement_keeps_the_first_receipt_time(outputs: Path) -> None:
    store_upload(outputs, "heartbeat", b"1", now=100, quota_bytes=1000)
    store_upload(outputs, "heartbeat", b"2", now=160, quota_bytes=1000)
    assert received_times(outputs)["heartbeat"] == ReceivedTimes(first=100, last=160)
    assert shutdown_message_time(outputs) is None


def test_quota_counts_all_files_but_the_replaced_one_and_not_ours(outputs: Path) -> None:
    store_upload(outputs, "a", b"x" * 40, now=1, quota_bytes=100)
    store_upload(outputs, "b", b"x" * 40, now=1, quota_bytes=100)
    assert usage(outputs).total_bytes == 80  # .received.json is not the guest's
    assert quota_problem(outputs, "c", 21, 100) is not None
    assert quota_problem(outputs, "c", 20, 100) is None
    assert quota_problem(outputs, "a", 60, 100) is None
    with pytest.raises(QuotaExceeded):
        store_upload(outputs, "c", b"x" * 21, now=2, quota_bytes=100)
    assert not (outputs / "c").exists()
    assert "c" not in received_times(outputs)


def test_file_count_is_limited(outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller limit keeps the test fast; the rule is the same at MAX_FILES.
    monkeypatch.setattr(joboutputs, "MAX_FILES", 2)
    store_upload(outputs, "a", b"", now=1, quota_bytes=100)
    store_upload(outputs, "b", b"", now=1, quota_bytes=100)
    with pytest.raises(QuotaExceeded):
        store_upload(outputs, "c", b"", now=1, quota_bytes=100)
    store_upload(outputs, "a", b"again", now=2, quota_bytes=100)


def test_damaged_receipt_file_reads_as_no_receipts(outputs: Path) -> None:
    (outputs / RECEIVED_FILE).write_text("{broken")
    assert received_times(outputs) == {}
    (outputs / RECEIVED_FILE).write_text('{"a": [1, 2], "b": "x", "c": [1], "d": [1, "2"]}')
    assert received_times(outputs) == {"a": ReceivedTimes(1, 2)}


def test_missing_directory_has_no_usage(tmp_path: Path) -> None:
    assert usage(tmp_path / "missing").total_bytes == 0
    assert received_times(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{}", b"[" * 100_000, b" " * joboutputs.MAX_RECEIPTS_BYTES + b'{"a": [1, 2]}'],
    ids=["binary", "nested-deeper-than-the-stack", "over-the-cap"],
)
def test_hostile_receipt_file_reads_as_no_receipts(outputs: Path, content: bytes) -> None:
    # A container writes into joboutputs/ directly: this file is guest data too (issue 8 item 2).
    (outputs / RECEIVED_FILE).write_bytes(content)
    assert received_times(outputs) == {}
    assert shutdown_message_time(outputs) is None


def test_receipt_file_that_is_a_fifo_does_not_block(outputs: Path) -> None:
    import os

    os.mkfifo(outputs / RECEIVED_FILE)
    assert received_times(outputs) == {}
