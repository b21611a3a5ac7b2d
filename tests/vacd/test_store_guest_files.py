"""Guest-written files in the store: whose shutdown message backs the space off, and no link followed.

Issue 11 item 4: a code starts a space-wide backoff only if this machine's guest said it in
this machine's life (a guest API receipt, or for a container an mtime in its life).
Issue 11 item 3: nothing under joboutputs/ is reached through a symlink vacd did not make.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

from vacd.cappedread import UnreadableFile, lstat_under, read_capped_under
from vacd.guestapi.joboutputs import Sender, store_upload, usage
from vacd.outcomes import HEARTBEAT_NOT_UPDATED
from vacd.paths import Paths
from vacd.recordformats import SHUTDOWN_RECEIPT_FILE
from vacd.records import MachineRecord
from vacd.store import Store

CREATED = 1_700_000_000
STARTED = CREATED + 5
NOW = CREATED + 4000
UUID = "11111111-2222-3333-4444-555555555555"
NEIGHBOUR_UUID = "99999999-2222-3333-4444-555555555555"


def record(machine_model: str = "vm-raw") -> MachineRecord:
    return MachineRecord("f1-03.example.com", 3, UUID, "atlas", machine_model, 2, CREATED, CREATED + 86400,
                         "169.254.169.3", 2.0, 4096)


def started_machine(tmp_path: Path, machine_model: str = "vm-raw") -> tuple[Store, MachineRecord, Path]:
    store = Store(Paths(tmp_path))
    machine = record(machine_model)
    directory = store.begin_creation(machine)
    store.mark_started(machine, STARTED)
    return store, machine, directory


def guest_puts(directory: Path, text: str, at: int, uuid: str = UUID) -> None:
    """What the guest API does for a PUT from the machine's own slot address."""
    store_upload(directory / "joboutputs", "shutdown_message", text.encode() + b"\n", at, 10**6,
                 Sender(uuid, "169.254.169.3"))


def written_directly(directory: Path, text: str, mtime: int) -> None:
    path = directory / "joboutputs" / "shutdown_message"
    path.write_text(text + "\n")
    os.utime(path, (mtime, mtime))


# Issue 11 item 4: whose message it is
def test_message_put_by_the_slots_guest_in_its_life_is_trusted(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    guest_puts(directory, "300 Nothing to do", at=NOW - 10)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.message.text == "300 Nothing to do" and judged.distrust_reason is None
    receipt = json.loads((directory / SHUTDOWN_RECEIPT_FILE).read_text())
    assert receipt == {"message": "300 Nothing to do", "received_time": NOW - 10, "source_address": "169.254.169.3",
                       "uuid": UUID}


def test_leftover_file_from_before_the_start_is_kept_but_distrusted(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    written_directly(directory, "300 left over", mtime=CREATED - 3600)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.message.text == "300 left over"
    assert judged.distrust_reason is not None and "no receipt" in judged.distrust_reason


def test_file_written_into_a_vm_directory_by_anything_but_the_guest_api_is_distrusted(tmp_path: Path) -> None:
    # Pinned decision: a VM's guest can only reach joboutputs through the guest API, so a
    # file with no receipt was written by something on the host, whatever its mtime says.
    store, machine, directory = started_machine(tmp_path)
    written_directly(directory, "300 written on the host", mtime=NOW - 10)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is not None


def test_receipt_for_another_machine_does_not_vouch_for_this_one(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    guest_puts(directory, "300 Nothing to do", at=NOW - 10, uuid=NEIGHBOUR_UUID)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is not None and NEIGHBOUR_UUID in judged.distrust_reason


def test_message_replaced_after_its_receipt_is_distrusted(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    guest_puts(directory, "200 Success", at=NOW - 10)
    written_directly(directory, "300 swapped in", mtime=NOW - 5)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.message.text == "300 swapped in"
    assert judged.distrust_reason is not None and "replaced" in judged.distrust_reason


def test_receipt_from_before_the_machine_existed_is_distrusted(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    guest_puts(directory, "300 Nothing to do", at=CREATED - 1)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is not None and "before the machine was created" in judged.distrust_reason


def test_container_message_is_trusted_by_an_mtime_in_its_life_only(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path, machine_model="docker")
    written_directly(directory, "300 Nothing to do", mtime=NOW - 10)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is None
    written_directly(directory, "300 Nothing to do", mtime=STARTED - 1)
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is not None


def test_factory_written_message_is_the_factorys_verdict_not_a_guests(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    store.request_destroy(machine, NOW - 30, HEARTBEAT_NOT_UPDATED)
    assert (directory / "joboutputs" / "shutdown_message").read_text() == HEARTBEAT_NOT_UPDATED + "\n"
    assert not (directory / SHUTDOWN_RECEIPT_FILE).exists()
    judged = store.judged_shutdown_message(machine, STARTED, NOW, HEARTBEAT_NOT_UPDATED)
    assert judged is not None and judged.distrust_reason is None
    # The same text with no destroy request behind it is nobody's verdict.
    judged = store.judged_shutdown_message(machine, STARTED, NOW)
    assert judged is not None and judged.distrust_reason is not None


# Issue 11 item 3: no link followed under joboutputs/
def replace_joboutputs_by_a_link(tmp_path: Path, directory: Path) -> Path:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "shutdown_message").write_text("300 from /etc\n")
    (directory / "joboutputs").rmdir()
    (directory / "joboutputs").symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


def test_joboutputs_replaced_by_a_directory_link_is_never_read_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, machine, directory = started_machine(tmp_path)
    replace_joboutputs_by_a_link(tmp_path, directory)
    with caplog.at_level(logging.WARNING, logger="vacd.guestoutputs"):
        assert store.shutdown_message(machine) is None
        assert store.judged_shutdown_message(machine, STARTED, NOW) is None
    assert any("no usable shutdown message" in line and "joboutputs" in line for line in caplog.messages)


def test_joboutputs_link_is_not_written_through(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    elsewhere = replace_joboutputs_by_a_link(tmp_path, directory)
    (elsewhere / "shutdown_message").unlink()
    store.request_destroy(machine, NOW, HEARTBEAT_NOT_UPDATED)
    with pytest.raises(OSError):
        store_upload(directory / "joboutputs", "log", b"data", NOW, 10**6)
    assert sorted(os.listdir(elsewhere)) == []
    # The factory's reason is still recorded where no guest writes.
    stored = store.slot_binding(machine.name)
    assert stored is not None and stored.destroy_request is not None
    assert stored.destroy_request.shutdown_message == HEARTBEAT_NOT_UPDATED


def test_joboutputs_link_holds_no_heartbeat_and_no_quota_use(tmp_path: Path) -> None:
    _store, _machine, directory = started_machine(tmp_path)
    elsewhere = replace_joboutputs_by_a_link(tmp_path, directory)
    (elsewhere / "heartbeat").write_text("alive\n")
    assert lstat_under(directory, ("joboutputs", "heartbeat")) is None
    assert usage(directory / "joboutputs").total_bytes == 0


def test_symlinked_subdirectory_under_joboutputs_is_not_followed(tmp_path: Path) -> None:
    _store, _machine, directory = started_machine(tmp_path)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (directory / "joboutputs" / "sub").symlink_to(secrets, target_is_directory=True)
    with pytest.raises(UnreadableFile):
        read_capped_under(directory, ("joboutputs", "sub", "passwd"), 4096)
    assert lstat_under(directory, ("joboutputs", "sub", "passwd")) is None
    assert usage(directory / "joboutputs").sizes == {}
    # A PUT of that name replaces the link itself, never a file behind it.
    store_upload(directory / "joboutputs", "sub", b"guest data", NOW, 10**6)
    assert (directory / "joboutputs" / "sub").read_bytes() == b"guest data"
    assert (secrets / "passwd").read_text().startswith("root:")


def test_finish_record_without_the_new_fields_reads_as_trusted(tmp_path: Path) -> None:
    store, machine, directory = started_machine(tmp_path)
    (directory / "finished.json").write_text(json.dumps({"finished_time": NOW, "shutdown_message": "300 Old"}))
    stored = store.slot_binding(machine.name)
    assert stored is not None and stored.finish is not None
    assert stored.finish.verdict == "300 Old"
    distrusted = dataclasses.replace(stored.finish, distrust_reason="no receipt", verdict_instead=None)
    store.finish(machine, distrusted)
    reloaded = store.load_machine(directory)
    assert reloaded is not None and reloaded.finish == distrusted and reloaded.finish.verdict is None
