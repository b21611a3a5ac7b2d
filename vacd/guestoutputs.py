"""A machine's guest-written files (MD/joboutputs/) as the store reads and writes them, and its shutdown message judged.

Rules (issue 8 item 2; issue 11 items 3 and 4):
- Guest-written files (everything in `joboutputs/`) are bytes until validated: read with a
  cap, never through a link, never blocking (vacd.cappedread); a shutdown message is
  parsed only by vacd.outcomes.parse_shutdown_message. Nothing a guest writes raises out
  of the store (issue 8 item 2).
- `joboutputs/` itself is reached through a descriptor opened with O_NOFOLLOW |
  O_DIRECTORY relative to MD, and its files relative to that (vacd.cappedread,
  vacd.atomicfile.write_atomic_at): a `joboutputs` replaced by a symlink, or a symlinked
  directory inside it, is never followed, for a read or a write (issue 11 item 3).
- A shutdown message drives the whole space's backoff, so the abort rule reads it only if
  it is this machine's guest's, said in this machine's life (issue 11 item 4,
  `judge_shutdown_message`): the guest API's receipt in MD (`SHUTDOWN_RECEIPT_FILE`,
  outside joboutputs, so no guest can write it) names this machine's UUID, a time since
  its creation, and the message the file holds now; or, for a machine whose guest writes
  joboutputs directly (a container, not a VM), the file's mtime lies in the machine's
  life. Anything else (a file there before the start, one written by anyone but the guest
  API into a VM's directory, one replaced since its receipt) is kept as the text for the
  admin, APEL and status, and counts as no verdict (`FinishRecord.verdict`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from vacd.atomicfile import write_atomic, write_atomic_at
from vacd.cappedread import UnreadableFile, open_directory, read_capped_with_status_under
from vacd.config import VM_MACHINE_MODELS
from vacd.outcomes import MAX_SHUTDOWN_MESSAGE_BYTES, ShutdownMessage, parse_shutdown_message
from vacd.recordformats import JOBOUTPUTS_DIR, SHUTDOWN_MESSAGE_FILE, SHUTDOWN_RECEIPT_FILE
from vacd.records import JudgedShutdownMessage, MachineRecord, ShutdownReceipt

log = logging.getLogger(__name__)

# A container's file may be written after the pass read its `now` and before it listed
# the machine as gone; a pass takes far less than this.
MTIME_SLACK_SECONDS = 60


def read_shutdown_file(record: MachineRecord, directory: Path) -> Optional[tuple[ShutdownMessage, float]]:
    """The parsed message in `directory` (MD) and the file's mtime; None if there is none, or it is unusable."""
    try:
        found = read_capped_with_status_under(
            directory, (JOBOUTPUTS_DIR, SHUTDOWN_MESSAGE_FILE), MAX_SHUTDOWN_MESSAGE_BYTES
        )
    except UnreadableFile as error:
        # A symlinked joboutputs or message is the guest's (or a hostile layout's): an
        # admin should know why the machine has no outcome (issue 11 item 3).
        log.warning("no usable shutdown message name=%s path=%s reason=%s", record.name, error.path, error.reason)
        return None
    if found is None:
        return None
    message = parse_shutdown_message(found[0])
    return (message, found[1].st_mtime) if message is not None else None


def judge_shutdown_message(
    record: MachineRecord,
    found: tuple[ShutdownMessage, float],
    receipt_of: Callable[[], Optional[ShutdownReceipt]],
    started_time: Optional[int],
    now: int,
    factory_message: Optional[str] = None,
) -> JudgedShutdownMessage:
    """Whether the abort rule may read the message `found` in joboutputs/shutdown_message (with its mtime).

    Trusted (module docstring, issue 11 item 4): the guest API's receipt for this UUID,
    received since the machine's creation, holding the same message; for a machine
    whose guest writes joboutputs itself (not a VM), an mtime between its start and
    `now` (plus MTIME_SLACK_SECONDS); or the factory's own reason for stopping it (`factory_message`), which is
    the factory's verdict, not the guest's. Everything else is distrusted, with why.
    `receipt_of` reads the receipt, asked only when the factory's own reason is not the message.
    """
    message, mtime = found
    if factory_message is not None and message.text == factory_message.strip():
        return JudgedShutdownMessage(message, None)
    receipt = receipt_of()
    # No upper bound on a receipt: the guest API serves no finished machine, so none
    # postdates the machine's end; `now` was read before this pass listed the machines.
    if receipt is not None and receipt.uuid == record.uuid and receipt.message == message.text:
        if record.created_time <= receipt.received_time:
            return JudgedShutdownMessage(message, None)
    if record.machine_model not in VM_MACHINE_MODELS:
        if started_time is not None and started_time <= mtime <= now + MTIME_SLACK_SECONDS:
            return JudgedShutdownMessage(message, None)
        return JudgedShutdownMessage(
            message, f"written at {int(mtime)}, outside the machine's life ({started_time} to {now})"
        )
    if receipt is None:
        reason = "not received from the machine's guest by the guest API (no receipt)"
    elif receipt.uuid != record.uuid:
        reason = f"the receipt is for another machine (uuid {receipt.uuid})"
    elif receipt.message != message.text:
        reason = "the file was replaced after the guest API received the guest's message"
    else:
        reason = f"received at {receipt.received_time}, before the machine was created at {record.created_time}"
    return JudgedShutdownMessage(message, reason)


def write_shutdown_receipt(machine_dir: Path, receipt: ShutdownReceipt) -> None:
    """Record, in MD (where no guest writes), that the guest API received this machine's message."""
    write_atomic(machine_dir / SHUTDOWN_RECEIPT_FILE, json.dumps(asdict(receipt), sort_keys=True) + "\n")


def open_guest_directory(path: Path, create: bool = False) -> Optional[int]:
    """A descriptor of `path` (MD/joboutputs) with no link followed from MD on; None if absent.

    MD (`path.parent`) and `path` are both opened with O_NOFOLLOW | O_DIRECTORY
    (vacd.cappedread.open_directory). With `create`, a missing `path` is made first,
    relative to MD's descriptor.

    Raises:
        UnreadableFile: MD or `path` is a symlink or not a directory.
    """
    if create:
        parent = open_directory(path.parent)
        if parent is None:
            return None
        try:
            os.mkdir(path.name, 0o755, dir_fd=parent)
        except FileExistsError:
            pass
        finally:
            os.close(parent)
    return open_directory(path.parent, (path.name,))


def write_joboutputs_file(machine_dir: Path, name: str, content: bytes) -> None:
    """Replace MD/joboutputs/NAME atomically, with no link followed on the way."""
    directory = open_guest_directory(machine_dir / JOBOUTPUTS_DIR, create=True)
    if directory is None:
        raise FileNotFoundError(f"{machine_dir}: no machine directory")
    try:
        write_atomic_at(directory, name, content)
    finally:
        os.close(directory)
