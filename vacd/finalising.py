"""Finalise a machine that has ended: judge its outcome, account it, tell monitoring, mark it finished.

Rules (issue 8 item 10, issue 11 item 4, behaviour reference §1.5 and §3.5):
- Exactly once, not at most once: the APEL record is written before the machine is marked
  finished. If accounting fails, nothing is marked and AccountingDeferred is raised, so the
  next pass finalises the machine again (the account hook is idempotent).
- Monitoring (`on_finished`) is best effort: its failure is logged and the machine is
  finished anyway.
- The outcome is the guest's shutdown_message if it left one, else the factory's reason; a
  silent early end is a fizzle (acceptance 22; Vac 03's version never ran, §3.5). A
  message not shown to be this machine's guest's keeps its text for the admin,
  APEL and status, but the space's abort rule reads the verdict as if the guest had said
  nothing (`verdict_instead`), so a leftover can neither back the space off nor hide a fizzle.
- The outcome's time is when it was said: the guest's receipt time, the factory's decision,
  or now.
"""

from __future__ import annotations

import logging
from typing import Optional

from vacd.config import Machinetype, Settings
from vacd.errors import AccountingDeferred
from vacd.factoryhooks import FactoryHooks
from vacd.outcomes import effective_outcome
from vacd.records import FinishRecord, StoredMachine
from vacd.store import Store

log = logging.getLogger(__name__)


def finalise(
    store: Store,
    hooks: FactoryHooks,
    settings: Settings,
    machinetype: Optional[Machinetype],
    stored: StoredMachine,
    now: int,
    factory_message: Optional[str],
) -> FinishRecord:
    """Account the machine, tell monitoring, then mark it finished.

    Raises:
        AccountingDeferred: its APEL record could not be written. Nothing is marked, so
            the next pass finalises it again (issue 8 item 10: exactly once, not at most).
    """
    record = stored.record
    if factory_message is not None:
        store.request_destroy(record, now, factory_message)
    last_heartbeat = stored.heartbeat.time if stored.heartbeat else stored.started_time
    cpu_seconds = stored.heartbeat.cpu_seconds if stored.heartbeat else 0.0
    # The factory's reason is also in destroy_requested, for when the guest left
    # something unusable where its message goes and the reason could not be written there.
    factory_said = stored.destroy_request.shutdown_message if stored.destroy_request is not None else None
    judged = store.judged_shutdown_message(record, stored.started_time, now, factory_said or factory_message)
    said = judged.message.text if judged is not None else factory_said
    fizzle_seconds = machinetype.fizzle_seconds if machinetype is not None else 0
    # A silent early end is a fizzle (acceptance 22; Vac 03's version never ran, §3.5).
    message = effective_outcome(said or factory_message, stored.started_time, last_heartbeat or now, fizzle_seconds)
    distrust_reason = judged.distrust_reason if judged is not None else None
    verdict_instead = None
    if distrust_reason is not None:
        # Not shown to be this machine's guest's (issue 11 item 4): the text stays for
        # the admin, APEL and status; the space's abort rule reads the outcome as if the
        # guest had said nothing, so a leftover cannot back the space off nor hide a fizzle.
        verdict_instead = effective_outcome(
            factory_said or factory_message, stored.started_time, last_heartbeat or now, fizzle_seconds
        )
        log.warning(
            "shutdown message not used for the space's backoff name=%s uuid=%s message=%r reason=%s verdict=%r",
            record.name, record.uuid, message, distrust_reason, verdict_instead,
        )
    finish = FinishRecord(
        finished_time=now,
        shutdown_message=message,
        shutdown_message_time=_message_time(hooks, stored, message, now),
        started_time=stored.started_time,
        last_heartbeat_time=last_heartbeat,
        cpu_seconds=cpu_seconds,
        distrust_reason=distrust_reason,
        verdict_instead=verdict_instead,
    )
    if hooks.account is not None:
        try:
            hooks.account(settings, machinetype, record, finish)
        except Exception as error:  # any failure: the record is owed, so the machine is not finished
            log.error("accounting failed name=%s uuid=%s error=%s retry=next pass", record.name, record.uuid, error)
            raise AccountingDeferred(record.name, str(error)) from error
    for hook in hooks.on_finished:
        try:
            hook(settings, machinetype, record, finish)
        except Exception:  # boundary: monitoring must not stop finalisation
            log.exception("finish hook failed name=%s", record.name)
    store.finish(record, finish)
    log.info(
        "finished machine name=%s machinetype=%s message=%r",
        record.name,
        record.machinetype,
        message,
    )
    return finish


def _message_time(hooks: FactoryHooks, stored: StoredMachine, message: Optional[str], now: int) -> Optional[int]:
    """When the outcome was said: the guest's receipt time, the factory's decision, or now."""
    if message is None:
        return None
    if hooks.shutdown_message_time is not None:
        received = hooks.shutdown_message_time(stored)
        if received is not None:
            return received
    if stored.destroy_request is not None and stored.destroy_request.shutdown_message == message:
        return stored.destroy_request.requested_time
    return now
