"""What the factory learns from a machine's guest-written files, and what it tells the guest back.

One collaborator for the daemon, the site simulator and the tests (issue 9 item 1: "the
observation hooks that Daemon._hooks wires as closures become one explicit, tested
collaborator"). It reads only the machine directory of a `StoredMachine`, so whoever runs
the factory, with a real guest API or a simulated one writing through
`vacd.guestapi.joboutputs.store_upload`, gets the same answers:

- the heartbeat file's time is its last receipt by the guest API (`.received.json`), or,
  for containers that write into the bind mount, the mtime of a regular file (§4.4);
- the outcome's time is the first receipt of joboutputs/shutdown_message (§6.7: Vac used
  the file's ctime, which a restore or a copy changes);
- a lowered shutdown time is written into the machine's MJF files (acceptance 25).
"""

from __future__ import annotations

import dataclasses
import stat
from typing import Optional

from vacd.cappedread import lstat_under
from vacd.factory import FactoryHooks
from vacd.guestapi.joboutputs import received_times, shutdown_message_time
from vacd.mjf import lower_shutdown_time
from vacd.records import StoredMachine

JOBOUTPUTS = "joboutputs"


class GuestObservations:
    """The factory's observation hooks over a machine directory; stateless, safe from any thread."""

    def heartbeat_file_mtime(self, stored: StoredMachine, name: str) -> Optional[float]:
        """When the guest last sent its heartbeat file, or None if it never did."""
        joboutputs = stored.directory / JOBOUTPUTS
        received = received_times(joboutputs).get(name)
        if received is not None:
            return float(received.last)
        # Containers write the file directly into the bind mount. Only a regular file is a
        # heartbeat: a symlink's or a FIFO's time is not the guest saying it is alive.
        # No link is followed on the way either: a joboutputs replaced by a symlink has no
        # heartbeat in it (issue 11 item 3).
        status = lstat_under(stored.directory, (JOBOUTPUTS, name))
        return status.st_mtime if status is not None and stat.S_ISREG(status.st_mode) else None

    def shutdown_message_time(self, stored: StoredMachine) -> Optional[int]:
        """When the guest first sent joboutputs/shutdown_message, or None."""
        return shutdown_message_time(stored.directory / JOBOUTPUTS)

    def lower_shutdown_time(self, stored: StoredMachine, shutdown_time: int, now: int) -> None:
        """Tell the guest its new, earlier end through machinefeatures and jobfeatures."""
        lower_shutdown_time(stored.directory, shutdown_time, now)

    def install(self, hooks: FactoryHooks) -> FactoryHooks:
        """`hooks` with these three observation hooks set (the others unchanged)."""
        return dataclasses.replace(
            hooks,
            heartbeat_file_mtime=self.heartbeat_file_mtime,
            shutdown_message_time=self.shutdown_message_time,
            lower_shutdown_time=self.lower_shutdown_time,
        )
