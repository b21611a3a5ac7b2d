"""The collaborators a factory calls at the moments they care about, and their signatures.

Rules:
- Every hook is optional: a factory with none still reconciles, creates and destroys (the
  tests and the simulator wire only the ones they exercise; vacd/daemonhooks.py wires vacd's).
- A hook that must succeed says so (`account`: a machine is finished only after its APEL
  record is written, issue 8 item 10); every other hook is best effort, and its failure is
  logged by the factory and goes no further.
- Hooks run on the thread of the moment: the reconcile loop's for policing, finalising, the
  census and starting a creation's image downloads (`prefetch_images`); a pool thread's for a
  creation's contextualisation, image fetching, QEMU access check and `on_created`.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Sequence

from vacd.config import Machinetype, Settings
from vacd.creationphases import PhaseObserver
from vacd.records import FinishRecord, MachineRecord, StoredMachine
from vacd.scheduler import MachinetypeReport


class Contextualiser(Protocol):
    def __call__(self, settings: Settings, machinetype: Machinetype, record: MachineRecord, now: int) -> None:
        """Write user_data, machine/job features into the new machine's directory."""


class PeerReports(Protocol):
    def __call__(self, settings: Settings, machinetypes: Mapping[str, Machinetype], now: int) -> Sequence[MachinetypeReport]:
        """The other factories' machinetype reports, gathered within a deadline."""


@dataclass
class FactoryHooks:
    """Optional collaborators called at the moments they care about."""

    contextualise: Optional[Contextualiser] = None
    peer_reports: Optional[PeerReports] = None
    # Writes the machine's APEL record; must succeed before the machine is marked finished
    # (exactly once, issue 8 item 10), so it must be idempotent (vacd.accounting is).
    account: Optional[Callable[[Settings, Optional[Machinetype], MachineRecord, FinishRecord], None]] = None
    # Best effort (monitoring): a failure is logged and the machine is finished anyway.
    on_finished: list[Callable[[Settings, Optional[Machinetype], MachineRecord, FinishRecord], None]] = field(
        default_factory=list
    )
    on_created: list[Callable[[MachineRecord, float, bool], None]] = field(default_factory=list)
    # Each timed phase of a creation (vacd.creationphases), as it ends: vac_creation_phase_seconds.
    creation_phase: Optional[PhaseObserver] = None
    lower_shutdown_time: Optional[Callable[[StoredMachine, int, int], None]] = None
    heartbeat_file_mtime: Optional[Callable[[StoredMachine, str], Optional[float]]] = None
    shutdown_message_time: Optional[Callable[[StoredMachine], Optional[int]]] = None
    fetch_image: Optional[Callable[[str], Path]] = None
    # Downloads a creation's http(s) images on the image cache's own pool (item 6): the action
    # pool's workers stay free for destroys while a slow image server drips.
    # (URLs, public_only): public_only for a vacuum pipe's machinetype (vacd.fetch).
    prefetch_images: Optional[Callable[[Sequence[str], bool], "Future[dict[str, Path]]"]] = None
    # Raises VacError if QEMU could not open the file (vacd.qemuaccess, issue 8 item 12).
    qemu_access: Optional[Callable[[Path], None]] = None
