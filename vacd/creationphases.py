"""The phases of one machine creation, timed, for vac_creation_phase_seconds{phase} (issue 15 item 1).

Rules:
- A creation is timed in the order it happens; each phase is observed once, when it ends,
  on the thread that ran it. The factory times what it does (waiting for a pool worker,
  contextualisation, the machine spec, writing the started record); the libvirt backend
  times what it does (the disk: room check, logical volume or sparse file; the qcow2
  overlay made by qemu-img; the domain XML; the slot's tap and its pin in vacd's filter table,
  vacd.backends.slottaps; createXML, which includes QEMU's start and, where slot taps
  are not used, libvirt's network filter binding; and the STARTED lifecycle event's lag
  after createXML returned).
- An observer is any `Callable[[str, float], None]`; it must be cheap and must not raise
  (a failing observer is logged by `timed` and the creation goes on).
- Only the names in PHASES are used, so the metric's series stay bounded.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

PhaseObserver = Callable[[str, float], None]

PHASES = (
    "queue",  # the decision to a pool worker taking the creation up
    "contextualise",  # the machine directory: user_data, MJF, the guest's files
    "machine_spec",  # images located, confined, verified and checked readable by QEMU
    "disk",  # room check, logical volume or sparse scratch/root file
    "overlay",  # qemu-img create of the qcow2 overlay on the root image
    "xml",  # the domain XML (and, once, the emulator path)
    "slot_tap",  # the slot's tap ensured, its pin read in the filter table (written, if not in force)
    "createXML",  # libvirt: network port and filter binding, QEMU started and resumed
    "started_event",  # createXML returned -> libvirt's STARTED lifecycle event (0 if it came first)
    "record",  # the started record written
)


@contextmanager
def timed(observer: Optional[PhaseObserver], phase: str, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Observe how long the body took as `phase`, whether it succeeded or raised."""
    started = clock()
    try:
        yield
    finally:
        observe(observer, phase, clock() - started)


def observe(observer: Optional[PhaseObserver], phase: str, seconds: float) -> None:
    """Hand one phase's time to the observer; never raises."""
    if observer is None:
        return
    try:
        observer(phase, max(0.0, seconds))
    except Exception:  # boundary: monitoring must not fail a creation
        log.exception("creation phase observer failed phase=%s", phase)
