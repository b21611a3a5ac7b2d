"""Summarise a factory pass for admins: status.json, Vac's `counts` file and heartbeats.

The status document is what `vac status`, `check-vacd` and the metrics read (its schema is
in docs/status-json.md). `counts` keeps Vac 03's format for existing Nagios checks
(§1.3 step 12, acceptance 41). Formatting is pure; `publish_status` is the only writer.

Faults are shown, not hidden (issue 8 item 8): the document is written after every pass,
with a bad configuration too (then `settings` may be None), and carries the factory-wide
faults and per-slot errors with their since-times. A pass "completed" only when it ran
under a usable configuration and could list the machines (`pass_completed`); only then is
the `factory` heartbeat stamped, so a factory that idles on a bad reload goes stale.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from vacd.atomicfile import write_atomic_if_changed
from vacd.factory import Fault, PassReport, RunningTotals, SlotError
from vacd.paths import Paths


def status_document(
    report: PassReport,
    *,
    heartbeats: Mapping[str, int],
    census: Optional[Mapping[str, Any]],
    draining: bool,
    last_error: Optional[str],
    last_pass_completed: Optional[int] = None,
    slot_error_totals: Optional[Mapping[str, int]] = None,
    records_quarantined_total: int = 0,
    guest_servers: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The status.json content for one pass (`report.settings` may be None: no good config yet).

    `guest_servers` is the guest server processes' count, PIDs and restarts, or None while the
    guest servers run on vacd's own thread (vacd.guestapi.workers).
    """
    settings = report.settings
    running = report.running_by_machinetype()
    per_machinetype: dict[str, dict[str, Any]] = {}
    for name, machinetype in report.machinetypes.items():
        totals = running.get(name, RunningTotals())
        per_machinetype[name] = {
            "target_share": machinetype.target_share,
            "running_processors": totals.processors,
            "running_machines": totals.machines,
            "running_hs06": totals.hs06,
            "backoff_until": None,
            "last_outcome": None,
        }
    slots = []
    for slot in report.slots:
        stored = slot.machine
        live = slot.state != "Shut down" and stored is not None
        record = stored.record if stored is not None else None
        slots.append(
            {
                "ordinal": slot.identity.ordinal,
                "name": slot.identity.machine_name,
                "state": slot.state,
                "machinetype": record.machinetype if record else None,
                "processors": record.processors if live and record else 0,
                "uuid": record.uuid if record else None,
                "created_time": record.created_time if record else None,
                "started_time": stored.started_time if stored else None,
                "shutdown_time": record.shutdown_time if record else None,
                "cpu_seconds": slot.cpu_seconds,
                "shutdown_message": slot.shutdown_message,
                "note": slot.note,
            }
        )
    for local in report.local_reports:
        entry = per_machinetype.get(local.machinetype)
        if entry is not None and local.shutdown_message is not None:
            entry["last_outcome"] = {
                "machine": local.shutdown_machine,
                "message": local.shutdown_message,
                "time": local.shutdown_time,
            }
    if report.decisions is not None:
        for name, until in report.decisions.outlook.backoff_until.items():
            if name in per_machinetype:
                per_machinetype[name]["backoff_until"] = until
    gate = report.decisions.outlook.gate if report.decisions is not None else None
    return {
        "factory": settings.factory_name if settings else None,
        "space": settings.vac_space if settings else None,
        "time": report.now,
        "draining": draining or bool(settings and settings.draining),
        "gate": gate,
        "config_error": report.config_error,
        "observe_error": report.observe_error,
        "slots": slots,
        "machinetypes": per_machinetype,
        "heartbeats": dict(heartbeats),
        "census": dict(census) if census is not None else None,
        "total_processors": settings.total_processors if settings else 0,
        "running_processors": sum(totals.processors for totals in running.values()),
        "last_error": last_error,
        "faults": [fault_entry(fault) for fault in report.faults],
        "slot_errors": [slot_error_entry(error) for error in report.slot_errors],
        "slot_error_totals": dict(slot_error_totals or {}),
        "records_quarantined_total": records_quarantined_total,
        "last_pass_completed": last_pass_completed,
        "guest_servers": dict(guest_servers) if guest_servers is not None else None,
    }


def pass_completed(report: PassReport) -> bool:
    """Whether this pass did its whole job: a usable configuration and a listing of the machines.

    Only such a pass stamps the `factory` heartbeat (issue 8 item 8: it was stamped before the
    config-error return, so Nagios stayed green while the factory idled). Slot errors and a disk
    gate do not make a pass incomplete: the other slots were policed and the loop is sound.
    """
    if report.settings is None or report.config_error is not None or report.observe_error is not None:
        return False
    return not any(fault.kind in INCOMPLETE_PASS_FAULTS for fault in report.faults)


# Faults under which a pass does not police every machine (a bad reload stops creation only,
# but it is the admin's to fix at once; without a listing nothing is policed at all).
INCOMPLETE_PASS_FAULTS = frozenset({"config", "listing"})


def fault_entry(fault: Fault) -> dict[str, Any]:
    return {"kind": fault.kind, "message": fault.message, "since": fault.since}


def slot_error_entry(error: SlotError) -> dict[str, Any]:
    return {
        "ordinal": error.ordinal,
        "name": error.machine_name,
        "step": error.step,
        "error": error.error,
        "since": error.since,
        "count": error.count,
        "retry_at": error.retry_at,
    }


def counts_line(document: Mapping[str, Any]) -> str:
    """Vac's `counts`: running machines, slots, running processors, total processors, HS06."""
    running = [slot for slot in document["slots"] if slot["state"] != "Shut down"]
    hs06 = sum(entry["running_hs06"] for entry in document["machinetypes"].values())
    return "%d %d %d %d %.2f\n" % (
        len(running),
        len(document["slots"]),
        document["running_processors"],
        document["total_processors"],
        hs06,
    )


def publish_status(paths: Paths, document: Mapping[str, Any]) -> None:
    """Write status.json and `counts`, each skipped when it would be written unchanged (issue 15)."""
    write_atomic_if_changed(paths.status_file, json.dumps(document, indent=1, sort_keys=True) + "\n")
    if document.get("slots"):
        write_atomic_if_changed(paths.counts_file, counts_line(document))


def write_heartbeat(paths: Paths, part: str, now: int) -> None:
    """`<part>-heartbeat` holds the time itself, so no ctime is read (Vac anti-pattern 3).

    A heartbeat stamped again within the same second, or a part's unchanged last time, is
    not rewritten (write_atomic_if_changed). Replaced atomically but without fsync (issue
    15 item 2: three fsync-ed renames a pass for times that are stale after an OS crash
    anyway): a kill -9 leaves the old time or the new; an OS crash may leave an older time
    or an empty file, which `vac status` and check-vacd read as no heartbeat until the
    restarted vacd's first pass stamps it again.
    """
    write_atomic_if_changed(paths.heartbeat_file(part), f"{now}\n", durable=False)
