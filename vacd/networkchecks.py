"""When the reconcile loop checks (and mends) the guest network: not every pass.

Rules (issue 15 item 2; behaviour reference §1.3 step 8):
- A usable network is checked once in NETWORK_CHECK_SECONDS, as Vac 03 checked it once a
  60 s cycle; an unusable one every pass, and after any creation failure (the schedule's
  docstring lists each reason a check is due).
- Time is the caller's steady clock, passed in: this module reads no clock and does no I/O.
"""

from __future__ import annotations

from typing import Optional

from vacd.config import Settings

# A usable guest network is checked again after this long (Vac 03 checked it once a 60 s
# cycle, §1.3 step 8); an unusable one every pass (NetworkCheckSchedule).
NETWORK_CHECK_SECONDS = 60.0


class NetworkCheckSchedule:
    """When the loop checks (and mends) the guest network: not every pass (issue 15 item 2).

    A check opens a libvirt connection, reads and compares the network's XML, asks netlink
    for the bridge's addresses and reads /etc/hosts: with events waking the loop, that was
    done several times a second on a busy node, for a network that changes only when an
    admin or libvirtd changes it. A check is due:
    - at the first pass, and whenever what the network is made from changes (libvirt URI,
      factory name, slot count, forward_dev: a reload);
    - every pass while the last check failed (the fault holds creation until it clears);
    - after a creation failed since the last check (a network gone under vacd is the
      first thing to rule out, and creation backs off meanwhile);
    - NETWORK_CHECK_SECONDS after the last good check otherwise.
    Time is the caller's steady clock, passed in.
    """

    def __init__(self, interval_seconds: float = NETWORK_CHECK_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        # (what it was made from, when, creation failures then) of the last good check.
        self._last_good: Optional[tuple[tuple[object, ...], float, int]] = None

    @staticmethod
    def made_from(settings: Settings) -> tuple[object, ...]:
        return (settings.libvirt_uri, settings.factory_name, settings.num_machine_slots, settings.forward_dev)

    def due(self, settings: Settings, now: float, creation_failures: int) -> bool:
        if self._last_good is None:
            return True
        made_from, checked_at, failures_then = self._last_good
        return (
            made_from != self.made_from(settings)
            or creation_failures != failures_then
            or not 0 <= now - checked_at < self.interval_seconds
        )

    def checked(self, settings: Settings, now: float, creation_failures: int, usable: bool) -> None:
        self._last_good = (self.made_from(settings), now, creation_failures) if usable else None
