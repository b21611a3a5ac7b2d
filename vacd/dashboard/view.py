"""The dashboard's document: the space as this factory hears it, and this factory's detail.

Pure (issue 14): `space_view` takes what the factory already knows (its status.json
document, its own statuses, its last census, the dashboard's last listing of the space's
machines and factories, the history ring's samples) and the time, and returns the JSON
document that `/dashboard.json` serves and `render.py` draws. No I/O, no clock.

Rules:
- Statuses from peers are untrusted text: they are copied as data, never interpreted as
  markup here (render.py escapes them) and numbers are read with `_number`, so a peer's
  `"running_hs06": "lots"` counts as nothing rather than raising.
- `machines` is exactly what `vac machines --json` prints for the factories heard (wire-form
  statuses, sorted by factory then machine), so scripts and the page's test can compare.
- Shares are HS06 shares, as the scheduler weighs them (§4.2); target shares are this
  factory's configured target_share normalised over its machinetypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from vacd.dashboard.history import SAMPLE_INTERVAL_SECONDS, Sample
from vacd.outcomes import FIRST_ABORT_CODE, is_factory_ending, shutdown_code
from vacquery.tables import as_number

DOCUMENT_VERSION = 1


@dataclass(frozen=True)
class Heard:
    """Wire-form statuses some census heard at `time`, and from whom nothing came."""

    time: float
    statuses: tuple[Mapping[str, Any], ...]
    asked: tuple[str, ...] = ()
    silent: tuple[str, ...] = ()
    limited: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PassFacts:
    """What one pass of this factory published, as the dashboard keeps it.

    `own_statuses` are this factory's machine, machinetype and factory statuses in wire
    form (what its responder answers); `census` is the factory's last machinetypes census of
    its peers (None with no peers, or before the first one).
    """

    time: int
    status: Mapping[str, Any]
    own_statuses: tuple[Mapping[str, Any], ...] = ()
    census: Optional[Heard] = None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _of_kind(statuses: Sequence[Mapping[str, Any]], message_type: str) -> list[Mapping[str, Any]]:
    return [status for status in statuses if status.get("message_type") == message_type]


def space_machinetype_statuses(facts: PassFacts, listing: Optional[Heard] = None) -> list[Mapping[str, Any]]:
    """This factory's machinetype statuses and the peers' from the newer of its census and the listing.

    A full or draining factory runs no census, so its last one can be old; the dashboard's
    listing asks for machinetypes too, and whichever heard the peers last is shown.
    """
    own = _of_kind(facts.own_statuses, "machinetype_status")
    sources = [source for source in (facts.census, listing)
               if source is not None and _of_kind(source.statuses, "machinetype_status")]
    if not sources:
        return own
    newest = max(sources, key=lambda source: source.time)
    return own + _of_kind(newest.statuses, "machinetype_status")


def peers_heard_time(facts: PassFacts, listing: Optional[Heard]) -> Optional[float]:
    """When the machinetype figures of the peers were heard (None: no peer heard yet)."""
    times = [source.time for source in (facts.census, listing)
             if source is not None and _of_kind(source.statuses, "machinetype_status")]
    return max(times) if times else None


def target_shares(status: Mapping[str, Any]) -> dict[str, float]:
    """Configured target_share normalised to fractions (0 for all if none is positive)."""
    configured = {
        str(name): max(0.0, as_number(values.get("target_share")) or 0.0)
        for name, values in (status.get("machinetypes") or {}).items()
        if isinstance(values, Mapping)
    }
    total = sum(configured.values())
    return {name: (share / total if total else 0.0) for name, share in configured.items()}


def achieved_shares(machinetype_statuses: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each machinetype's fraction of the running HS06 heard across the space."""
    hs06 = _sum_by_machinetype(machinetype_statuses, "running_hs06")
    total = sum(hs06.values())
    return {name: (value / total if total else 0.0) for name, value in hs06.items()}


def share_error(targets: Mapping[str, float], achieved: Mapping[str, float]) -> float:
    """Half the L1 distance between target and achieved shares: 0 on target, 1 all elsewhere.

    Before anything runs anywhere there is no share to miss: 0.
    """
    if not any(achieved.values()):
        return 0.0
    names = set(targets) | set(achieved)
    return 0.5 * sum(abs(targets.get(name, 0.0) - achieved.get(name, 0.0)) for name in names)


def running_processors(machinetype_statuses: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return _sum_by_machinetype(machinetype_statuses, "running_processors")


def _sum_by_machinetype(machinetype_statuses: Sequence[Mapping[str, Any]], field_name: str) -> dict[str, float]:
    """`field_name` summed per machinetype over the statuses heard; a missing or negative figure counts 0."""
    sums: dict[str, float] = {}
    for status in machinetype_statuses:
        name = _text(status.get("machinetype"))
        if name is not None:
            sums[name] = sums.get(name, 0.0) + max(0.0, as_number(status.get(field_name)) or 0.0)
    return sums


def census_completeness(facts: PassFacts) -> float:
    census = facts.status.get("census")
    if not isinstance(census, Mapping):
        return 1.0
    heard, expected = as_number(census.get("heard")) or 0.0, as_number(census.get("expected")) or 0.0
    return heard / expected if expected else 1.0


def history_sample(facts: PassFacts, creations: int, creation_failures: int, outcomes: Mapping[str, int],
                   listing: Optional[Heard] = None) -> Sample:
    """The ring's sample for this pass (sequence 0: the ring numbers it when it stores it)."""
    statuses = space_machinetype_statuses(facts, listing)
    return Sample(
        sequence=0,
        time=facts.time,
        processors=running_processors(statuses),
        share_error=share_error(target_shares(facts.status), achieved_shares(statuses)),
        census_completeness=census_completeness(facts),
        creations=creations,
        creation_failures=creation_failures,
        outcomes=dict(outcomes),
    )


def outcome_key(message: Optional[str]) -> str:
    """How outcomes are counted: the 3-digit code as text, or "none" for a message without one."""
    code = shutdown_code(message)
    return "none" if code is None else f"{code:03d}"


def _factories(facts: PassFacts, listing: Optional[Heard]) -> list[dict[str, Any]]:
    status = facts.status
    own_name = _text(status.get("factory")) or ""
    rows: dict[str, dict[str, Any]] = {}
    own_factory = _of_kind(facts.own_statuses, "factory_status")
    heard = list(own_factory) + (_of_kind(listing.statuses, "factory_status") if listing is not None else [])
    for factory_status in heard:
        name = _text(factory_status.get("factory")) or "-"
        running, capacity = as_number(factory_status.get("running_processors")), as_number(factory_status.get("max_processors"))
        rows[name] = {
            "name": name,
            "state": "up",
            "full": bool(running is not None and capacity is not None and capacity > 0 and running >= capacity),
            # VacQuery 01.03 carries no draining flag: only this factory's own is known.
            "draining": bool(status.get("draining")) if name == own_name else None,
            "version": _text(factory_status.get("daemon_version")),
            "running_processors": running,
            "max_processors": capacity,
            "running_machines": as_number(factory_status.get("running_machines")),
            "load_average": as_number(factory_status.get("load_average")),
            "heard_time": facts.time if name == own_name else (listing.time if listing is not None else None),
        }
    silent: set[str] = set()
    for source in (listing, facts.census):
        if source is not None:
            silent |= set(source.silent)
    asked = set(listing.asked) if listing is not None else set()
    if facts.census is not None:
        asked |= set(facts.census.asked)
    for name in sorted(asked | silent):
        if name in rows:
            continue
        limited = listing.limited.get(name) if listing is not None else None
        rows[name] = {
            "name": name, "state": "limited" if limited else "silent", "full": None, "draining": None,
            "version": None, "running_processors": None, "max_processors": None, "running_machines": None,
            "load_average": None, "heard_time": None,
        }
    return [rows[name] for name in sorted(rows)]


def _machinetypes(facts: PassFacts, statuses: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    targets = target_shares(facts.status)
    achieved = achieved_shares(statuses)
    processors = running_processors(statuses)
    machines: dict[str, float] = {}
    for status in statuses:
        name = _text(status.get("machinetype"))
        if name is not None:
            machines[name] = machines.get(name, 0.0) + max(0.0, as_number(status.get("running_machines")) or 0.0)
    local = facts.status.get("machinetypes") or {}
    rows = []
    for name in sorted(set(targets) | set(achieved)):
        entry = local.get(name)
        values: Mapping[str, Any] = entry if isinstance(entry, Mapping) else {}
        until = as_number(values.get("backoff_until"))
        rows.append({
            "name": name,
            "configured_here": name in targets,
            "target_share": targets.get(name, 0.0),
            "achieved_share": achieved.get(name, 0.0),
            "running_processors": processors.get(name, 0.0),
            "running_machines": machines.get(name, 0.0),
            "backoff_until": until if until is not None and until > facts.time else None,
        })
    return rows


def _backoffs(facts: PassFacts, statuses: Sequence[Mapping[str, Any]], machinetypes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each machinetype backed off here, its end, and the latest abort heard that explains it."""
    rows = []
    for row in machinetypes:
        if row["backoff_until"] is None:
            continue
        latest: Optional[Mapping[str, Any]] = None
        for status in statuses:
            if status.get("machinetype") != row["name"]:
                continue
            message = _text(status.get("shutdown_message"))
            code = shutdown_code(message)
            # The factory's own endings (wallclock limit, failed start) back nothing off.
            if code is None or code < FIRST_ABORT_CODE or is_factory_ending(message):
                continue
            if latest is None or (as_number(status.get("shutdown_time")) or 0) > (as_number(latest.get("shutdown_time")) or 0):
                latest = status
        rows.append({
            "machinetype": row["name"],
            "until": row["backoff_until"],
            "reason": _text(latest.get("shutdown_message")) if latest is not None else
            "creations failed on this factory (no abort heard in the space)",
            "factory": _text(latest.get("factory")) if latest is not None else _text(facts.status.get("factory")),
            "machine": _text(latest.get("shutdown_machine")) if latest is not None else None,
            "time": as_number(latest.get("shutdown_time")) if latest is not None else None,
        })
    return rows


def _outcomes(machines: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last outcome of every slot in the space that shows one, counted by code."""
    by_code: dict[str, dict[str, Any]] = {}
    for machine in machines:
        message = _text(machine.get("shutdown_message"))
        if not message:
            continue
        key = outcome_key(message)
        entry = by_code.setdefault(key, {"code": key, "count": 0, "machinetypes": set(), "last_message": None,
                                         "last_time": None})
        entry["count"] += 1
        machinetype = _text(machine.get("machinetype"))
        if machinetype:
            entry["machinetypes"].add(machinetype)
        when = as_number(machine.get("shutdown_time"))
        if entry["last_time"] is None or (when is not None and when >= entry["last_time"]):
            entry["last_time"], entry["last_message"] = when, message
    return [dict(entry, machinetypes=sorted(entry["machinetypes"])) for _, entry in sorted(by_code.items())]


def _this_factory(facts: PassFacts, now: float) -> dict[str, Any]:
    status = facts.status
    heartbeats = {}
    for component, beat in sorted((status.get("heartbeats") or {}).items()):
        beat_time = as_number(beat)
        heartbeats[str(component)] = {"time": beat_time, "age_seconds": max(0.0, now - beat_time) if beat_time else None}
    slots = [
        {key: slot.get(key) for key in ("ordinal", "name", "state", "machinetype", "processors", "created_time",
                                        "started_time", "shutdown_time", "cpu_seconds", "shutdown_message", "note")}
        for slot in status.get("slots") or () if isinstance(slot, Mapping)
    ]
    return {
        "name": status.get("factory"),
        "pass_time": status.get("time"),
        "last_pass_completed": status.get("last_pass_completed"),
        "draining": bool(status.get("draining")),
        "gate": status.get("gate"),
        "running_processors": status.get("running_processors"),
        "total_processors": status.get("total_processors"),
        "slots": slots,
        "heartbeats": heartbeats,
        "faults": list(status.get("faults") or ()),
        "slot_errors": list(status.get("slot_errors") or ()),
        "last_error": status.get("last_error"),
        "config_error": status.get("config_error"),
        "census": status.get("census"),
    }


def space_view(facts: PassFacts, listing: Optional[Heard], history: Sequence[Sample], now: float) -> dict[str, Any]:
    """The /dashboard.json document (docs/dashboard.md gives its schema)."""
    machinetype_statuses = space_machinetype_statuses(facts, listing)
    machines = _of_kind(facts.own_statuses, "machine_status")
    if listing is not None:
        machines += _of_kind(listing.statuses, "machine_status")
    machines.sort(key=lambda status: (str(status.get("factory")), str(status.get("machine"))))
    machinetypes = _machinetypes(facts, machinetype_statuses)
    return {
        "document_version": DOCUMENT_VERSION,
        "time": now,
        "space": facts.status.get("space"),
        "factory": facts.status.get("factory"),
        "pass_time": facts.time,
        "census_time": facts.census.time if facts.census is not None else None,
        "listing_time": listing.time if listing is not None else None,
        "machinetypes_heard_time": peers_heard_time(facts, listing),
        "factories": _factories(facts, listing),
        "machinetypes": machinetypes,
        "share_error": share_error(target_shares(facts.status), achieved_shares(machinetype_statuses)),
        "backoffs": _backoffs(facts, machinetype_statuses, machinetypes),
        "outcomes": _outcomes(machines),
        "machines": machines,
        "this_factory": _this_factory(facts, now),
        "history": {
            "interval_seconds": SAMPLE_INTERVAL_SECONDS,
            "samples": [sample.to_json() for sample in history],
        },
    }
