"""A guest's $JOBOUTPUTS uploads: quota, atomic write, and when each file was received.

Rules (behaviour reference §6.3, §6.7, §11; design anti-pattern 3):
- An upload replaces MD/joboutputs/NAME atomically (vacd.atomicfile.write_atomic); the
  name was checked by vacd.guestapi.uploadnames.upload_name, and only that directory is written.
- A machine may keep at most `quota_bytes` in the directory (the sum of its regular
  files, the one being replaced not counted) and at most MAX_FILES files; Vac had no limit,
  so one guest could fill /var/lib/vac.
- The times a name was first and last received go to the sidecar `.received.json`, so
  the factory never reads a ctime: `shutdown_message`'s first receipt is its outcome time,
  the heartbeat file's last receipt is its liveness. vacd's own files there (the sidecar
  and the `.*.tmp` temp files of atomic writes, `is_vacd_file_name`) are not counted in
  the quota and a guest cannot PUT them; every other file, dot files included, is the
  guest's and counted.
- These functions block (fsync); the server runs them on a thread pool, one at a time
  per machine.
- Everything in the directory is read as guest data (issue 8 item 2): a container writes
  there directly, `.received.json` included. Reads are capped, never follow a link, never
  block (vacd.cappedread), and bad content means "nothing received", never an exception.
- The directory is opened with O_NOFOLLOW | O_DIRECTORY relative to MD, and every read,
  write and listing goes through that descriptor (vacd.guestoutputs.open_guest_directory): a
  `joboutputs` replaced by a symlink is refused, never followed (issue 11 item 3).
- A shutdown_message received from the guest of the machine's own slot also gets a
  receipt in MD (vacd.records.ShutdownReceipt: UUID, source address, time, message), the
  only proof the factory accepts that the guest said it (issue 11 item 4). `.received.json`
  cannot be that proof: it is in joboutputs, which a container writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vacd.atomicfile import write_atomic_at
from vacd.cappedread import UnreadableFile, read_capped
from vacd.errors import VacError
from vacd.guestapi.uploadnames import RECEIVED_FILE as RECEIVED_FILE  # re-exported: the receipts are this module's
from vacd.guestapi.uploadnames import is_vacd_file_name
from vacd.outcomes import MAX_SHUTDOWN_MESSAGE_BYTES, parse_shutdown_message
from vacd.guestoutputs import open_guest_directory, write_shutdown_receipt
from vacd.recordformats import SHUTDOWN_MESSAGE_FILE
from vacd.records import ShutdownReceipt

log = logging.getLogger(__name__)

# Far more than any payload writes (a message, a heartbeat and a few logs).
MAX_FILES = 1000
# A 255-byte name is at most 762 bytes as JSON (127 two-byte characters, each `\uXXXX`),
# so MAX_FILES entries of one and two times are under 800 KB; twice that, for margin.
MAX_RECEIPTS_BYTES = 2 * 1024 * 1024


class QuotaExceeded(VacError):
    """An upload would take the machine's joboutputs past its quota."""


@dataclass(frozen=True)
class ReceivedTimes:
    """When a joboutputs file was first and last received from the guest."""

    first: int
    last: int


@dataclass(frozen=True)
class Sender:
    """The machine an upload came from, as the guest API identified it (for the receipt)."""

    uuid: str
    source_address: str


@dataclass(frozen=True)
class Usage:
    total_bytes: int
    file_count: int
    sizes: dict[str, int]


def usage(joboutputs_dir: Path) -> Usage:
    """Bytes and files the guest holds in its joboutputs directory (vacd's own files excluded).

    A joboutputs that is a symlink (or not a directory) counts as empty here; every write
    refuses it (`store_upload`).
    """
    try:
        directory = open_guest_directory(joboutputs_dir)
    except UnreadableFile:
        return Usage(0, 0, {})
    if directory is None:
        return Usage(0, 0, {})
    try:
        return _usage_at(directory)
    finally:
        os.close(directory)


def _usage_at(directory: int) -> Usage:
    sizes: dict[str, int] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_vacd_file_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return Usage(sum(sizes.values()), len(sizes), sizes)


def quota_problem(joboutputs_dir: Path, name: str, length: int, quota_bytes: int) -> Optional[str]:
    """Why writing `length` bytes to NAME would break the quota, or None if it would not."""
    return usage_problem(usage(joboutputs_dir), name, length, quota_bytes)


def bytes_after(current: Usage, name: str, length: int) -> int:
    """The guest's bytes in joboutputs once NAME holds `length` bytes."""
    return current.total_bytes - current.sizes.get(name, 0) + length


def usage_problem(current: Usage, name: str, length: int, quota_bytes: int) -> Optional[str]:
    """Why writing `length` bytes to NAME, given `current` usage, would break the quota; or None."""
    replaced = current.sizes.get(name)
    after = bytes_after(current, name, length)
    if after > quota_bytes:
        return f"joboutputs would hold {after} bytes, quota {quota_bytes}"
    if replaced is None and current.file_count + 1 > MAX_FILES:
        return f"joboutputs would hold more than {MAX_FILES} files"
    return None


def store_upload(
    joboutputs_dir: Path, name: str, content: bytes, now: int, quota_bytes: int, sender: Optional[Sender] = None
) -> int:
    """Write NAME atomically and record when it was received (and, for shutdown_message, from whom).

    `joboutputs_dir` is MD/joboutputs; it is reached from MD with no link followed.

    Returns:
        The guest's bytes in joboutputs after the write (for the disk-wide total).

    Raises:
        QuotaExceeded: the write would break the quota; nothing is written.
        OSError: the write failed, or joboutputs is a symlink or not a directory; the old
            file, if any, is unchanged.
    """
    try:
        directory = open_guest_directory(joboutputs_dir, create=True)
    except UnreadableFile as error:
        raise OSError(f"{error.path}: {error.reason}") from error
    if directory is None:
        raise FileNotFoundError(f"{joboutputs_dir.parent}: no machine directory")
    try:
        current = _usage_at(directory)
        problem = usage_problem(current, name, len(content), quota_bytes)
        if problem is not None:
            raise QuotaExceeded(problem)
        held_after = bytes_after(current, name, len(content))
        write_atomic_at(directory, name, content)
        times = _received_times_at(directory, joboutputs_dir)
        previous = times.get(name)
        times[name] = ReceivedTimes(first=previous.first if previous else now, last=now)
        write_atomic_at(
            directory,
            RECEIVED_FILE,
            (json.dumps({key: [value.first, value.last] for key, value in sorted(times.items())}) + "\n").encode(),
        )
    finally:
        os.close(directory)
    if name == SHUTDOWN_MESSAGE_FILE and sender is not None:
        message = parse_shutdown_message(content[:MAX_SHUTDOWN_MESSAGE_BYTES])
        write_shutdown_receipt(
            joboutputs_dir.parent,
            ShutdownReceipt(
                uuid=sender.uuid,
                source_address=sender.source_address,
                received_time=now,
                message=message.text if message is not None else None,
            ),
        )
    return held_after


def received_times(joboutputs_dir: Path) -> dict[str, ReceivedTimes]:
    """Name -> when the guest first and last sent it; {} if nothing was received."""
    try:
        directory = open_guest_directory(joboutputs_dir)
    except UnreadableFile as error:
        log.warning("unusable joboutputs directory path=%s reason=%s", error.path, error.reason)
        return {}
    if directory is None:
        return {}
    try:
        return _received_times_at(directory, joboutputs_dir)
    finally:
        os.close(directory)


def _received_times_at(directory: int, joboutputs_dir: Path) -> dict[str, ReceivedTimes]:
    path = joboutputs_dir / RECEIVED_FILE
    try:
        raw = read_capped(RECEIVED_FILE, MAX_RECEIPTS_BYTES, dir_fd=directory)
    except UnreadableFile as error:
        log.warning("unreadable joboutputs receipt file path=%s reason=%s", path, error.reason)
        return {}
    if raw is None:
        return {}
    try:
        fields = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested deeper than Python's stack
        log.warning("unreadable joboutputs receipt file path=%s", path)
        return {}
    times: dict[str, ReceivedTimes] = {}
    if isinstance(fields, dict):
        for key, value in fields.items():
            if (
                isinstance(key, str)
                and isinstance(value, list)
                and len(value) == 2
                and all(isinstance(item, int) for item in value)
            ):
                times[key] = ReceivedTimes(first=value[0], last=value[1])
    return times


def shutdown_message_time(joboutputs_dir: Path) -> Optional[int]:
    """When the guest first sent its shutdown_message (§6.7 ctime replaced), or None."""
    times = received_times(joboutputs_dir).get(SHUTDOWN_MESSAGE_FILE)
    return times.first if times is not None else None
