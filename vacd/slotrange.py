"""Which slots a pass reconciles: the configured range, and the slots beyond it still bound.

Rules (issue 8 item 7):
- The range is the configuration's: slots 0 … num_machine_slots-1 under today's
  factory_name. A change of the count is logged once, when a pass first sees it.
- A slot beyond the range (host_processors lowered, factory_name changed) whose binding in
  slots/ still names a live machine is reconciled like any other: policed, finalised and
  accounted until its machine is gone. Then it is released (unbound), once, and never
  created into again. A finished record whose machine no longer runs is not brought back.
- A Vac 03 machine bound under one of this factory's names beyond the range counts too, so
  its take-over (vacd/vac03state.py) sees it.
- A machine named as this factory names its slots, beyond the range and bound to nothing,
  is a zombie (no live record) and is destroyed, unless an action already runs for it.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

from vacd.backends.base import ObservedMachine
from vacd.backgroundactions import BackgroundActions
from vacd.config import Settings
from vacd.errors import VacError
from vacd.passreport import PassReport, SlotStatus
from vacd.records import MachineRecord
from vacd.slots import VNC_BASE_PORT, SlotIdentity, mac_address_for, ordinal_of_machine_name, slot_identity
from vacd.store import Store
from vacd.vac03state import is_vac03_directory

log = logging.getLogger(__name__)


class SlotRange:
    """The slots in and beyond the configured range, for one factory's store."""

    def __init__(self, store: Store, actions: BackgroundActions) -> None:
        self.store = store
        self.actions = actions
        self._configured_slots: Optional[int] = None

    def in_range(self, settings: Settings) -> list[SlotIdentity]:
        """The configured slots, 0 … num_machine_slots-1, under today's factory_name."""
        return [slot_identity(settings.factory_name, ordinal) for ordinal in range(settings.num_machine_slots)]

    def note(self, settings: Settings) -> None:
        """Log a change of the slot count, once, at the first pass that sees it."""
        if self._configured_slots is not None and self._configured_slots != settings.num_machine_slots:
            log.warning(
                "slot count changed from %d to %d; machines in slots beyond the range are policed, "
                "finalised and accounted until they are gone",
                self._configured_slots,
                settings.num_machine_slots,
            )
        self._configured_slots = settings.num_machine_slots

    def beyond_range(
        self, settings: Settings, in_range: Sequence[SlotIdentity], observed: Mapping[str, ObservedMachine]
    ) -> list[SlotIdentity]:
        """Slots bound to a live machine that the configured range (`in_range`) does not cover (item 7).

        They come from a lowered host_processors or a changed factory_name: the slots/
        directory still binds them, so they are managed until their machine is gone.
        """
        in_range_names = {identity.machine_name for identity in in_range}
        identities = []
        for machine_name in self.store.bound_machine_names():
            if machine_name in in_range_names:
                continue
            try:
                stored = self.store.slot_binding(machine_name)
            except (VacError, OSError) as error:
                log.warning("unreadable slot binding beyond the range name=%s error=%s", machine_name, error)
                continue
            if stored is None:
                # A Vac 03 machine under a name of this factory's, beyond today's range.
                identity = self._vac03_identity(settings, machine_name)
                if identity is not None:
                    identities.append(identity)
                continue
            if stored.has_finished and machine_name not in observed:
                continue
            identities.append(_identity_of_record(stored.record))
        return identities

    def _vac03_identity(self, settings: Settings, machine_name: str) -> Optional[SlotIdentity]:
        directory = self.store.bound_directory(machine_name)
        ordinal = ordinal_of_machine_name(settings.factory_name, machine_name)
        if directory is None or ordinal is None or not is_vac03_directory(directory):
            return None
        return slot_identity(settings.factory_name, ordinal)

    def release(self, status: SlotStatus) -> None:
        """A beyond-range slot whose machine is finalised and gone: unbind it, once."""
        assert status.machine is not None
        if self.actions.action_for(status.machine.record.name) is not None:
            return
        log.info("slot beyond the configured range released name=%s", status.identity.machine_name)
        self.store.free_slot(status.machine.record)

    def destroy_unbound_zombies(
        self, settings: Settings, observed: Mapping[str, ObservedMachine], report: PassReport
    ) -> None:
        """A domain named as this factory names slots, outside the range and bound to nothing."""
        known = {slot.identity.machine_name for slot in report.slots}
        for name, machine in observed.items():
            if name in known or ordinal_of_machine_name(settings.factory_name, name) is None:
                continue
            if self.actions.action_for(name) is not None:
                continue
            log.warning("zombie machine beyond the slot range name=%s uuid=%s: no live record, destroying",
                        name, machine.uuid)
            self.actions.start_destroy(name, machine.uuid)


def _identity_of_record(record: MachineRecord) -> SlotIdentity:
    """The identity a machine was created with (its slot may be beyond today's range or name)."""
    return SlotIdentity(
        ordinal=record.ordinal,
        machine_name=record.name,
        ip_address=record.ip_address,
        mac_address=mac_address_for(record.ip_address),
        vnc_port=VNC_BASE_PORT + record.ordinal,
    )
