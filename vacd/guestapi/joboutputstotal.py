"""The bytes every machine holds in its $JOBOUTPUTS, kept as a running total for a disk-wide cap.

Rules (issue 11 item 3):
- `joboutputs_total_bytes` caps the guests' files in all machine directories together,
  beside the per-machine `joboutputs_quota_bytes`: 64 guests each within their quota can
  otherwise fill /var/lib/vac. Finished machines' directories count, since their files
  are on the disk until the directory is removed.
- A PUT is checked against the total without walking the machine directories: the
  total is a sum per machine directory, updated from the usage the upload already
  measured (vacd.guestapi.joboutputs.store_upload returns it). A full rescan
  (`scan`, blocking: run it on a thread) runs at start and every RESCAN_SECONDS, to see
  directories removed by the factory and files a container wrote directly.
- Uploads accepted but not yet written count too (`pending_bytes`), so concurrent PUTs
  cannot together pass the cap.
- A shutdown_message of at most MAX_SHUTDOWN_MESSAGE_BYTES is never refused by this cap
  (only by the machine's own quota): a full disk-wide budget must not lose an outcome,
  and one small file per machine cannot fill a disk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from vacd.guestapi.joboutputs import usage

log = logging.getLogger(__name__)

RESCAN_SECONDS = 60.0


def scan(machines_dir: Path, keep: Optional[Callable[[Path], bool]] = None) -> dict[Path, int]:
    """Each machine directory's joboutputs bytes (blocking: it reads every machine directory).

    With `keep`, only the directories it keeps (one serving process's slots, vacd.guestapi.steering.Shard).
    """
    totals: dict[Path, int] = {}
    try:
        entries = sorted(machines_dir.iterdir())
    except OSError as error:
        log.warning("cannot list machine directories for the joboutputs total path=%s error=%s", machines_dir, error)
        return totals
    for directory in entries:
        if directory.is_symlink() or not directory.is_dir():
            continue
        if keep is not None and not keep(directory):
            continue
        held = usage(directory / "joboutputs").total_bytes
        if held:
            totals[directory] = held
    return totals


class JoboutputsTotal:
    """The running total of guests' joboutputs bytes across machine directories."""

    def __init__(self) -> None:
        self.by_machine: dict[Path, int] = {}
        self.total = 0

    def replace_all(self, totals: dict[Path, int]) -> None:
        """Take a fresh `scan` (uploads written meanwhile are seen again at the next scan)."""
        self.by_machine = dict(totals)
        self.total = sum(totals.values())

    def set_machine(self, machine_dir: Path, held_bytes: int) -> None:
        self.total += held_bytes - self.by_machine.get(machine_dir, 0)
        if held_bytes:
            self.by_machine[machine_dir] = held_bytes
        else:
            self.by_machine.pop(machine_dir, None)

    def refusal(self, machine_dir: Path, held_after: int, pending_bytes: int, cap_bytes: int) -> str:
        """Why the machine holding `held_after` bytes would break the cap, or "" if it would not.

        `pending_bytes` are other uploads accepted and not yet written.
        """
        after = self.total - self.by_machine.get(machine_dir, 0) + held_after + pending_bytes
        if after > cap_bytes:
            return f"joboutputs of all machines would hold {after} bytes, joboutputs_total_bytes {cap_bytes}"
        return ""
