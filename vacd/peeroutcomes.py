"""Remember the last outcome each peer reported per machinetype, so one lost census cannot end a backoff.

An abort anywhere in the space stops a machinetype on every factory for backoff_seconds
(§4.3). Vac 03 knew of a peer's abort only while its latest census heard that peer's
`machinetype_status`: a census that missed the peer (at 50 % loss, Vac missed a status 18 %
of the time), or a pass that ran no census because the factory was full, forgot the abort,
and the next free slot could create the machinetype at once. Three factories on loopback at
50 % loss showed it: a starting factory heard the abort, filled its slots, and created the
aborted machinetype as soon as a slot freed and its census missed the aborting peer.

`PeerOutcomes` keeps, per (peer factory, machinetype), the (shutdown_time, shutdown_message,
shutdown_machine) of the status last heard from that peer, for as long as it can still
matter: backoff_seconds + fizzle_seconds + the probe spread after its shutdown_time, or the
failure-rate window under `abort_rule = failure_rate`. `complete()` takes what this pass
heard as it is (a peer's word is its latest, even if it names an earlier time or no
outcome) and adds, for each remembered pair not heard this pass, a status with the
remembered outcome and no running processors, which is what the scheduler assumed of a
missing status anyway: only the outcome survives the loss, not stale share figures. So a
pass that hears every peer decides exactly as before.
Peers removed from `factories` and machinetypes removed from the configuration are forgotten.
The state is in memory only: a restarted factory learns the space again from its first census.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from vacd.config import Machinetype, Settings
from vacd.scheduler import DEFAULT_PROBE_SPREAD_SECONDS, FAILURE_RATE_WINDOW_SECONDS, MachinetypeReport


@dataclass(frozen=True)
class _Outcome:
    shutdown_time: int
    shutdown_message: "str | None"
    shutdown_machine: "str | None"


def _key(report: MachinetypeReport) -> tuple[str, str]:
    return report.factory.lower(), report.machinetype


def relevance_seconds(machinetype: Machinetype, abort_rule: str) -> int:
    """How long after its shutdown_time an outcome can still back the machinetype off."""
    backoff = machinetype.backoff_seconds + machinetype.fizzle_seconds + DEFAULT_PROBE_SPREAD_SECONDS
    if abort_rule == "failure_rate":
        return max(backoff, FAILURE_RATE_WINDOW_SECONDS)
    return backoff


class PeerOutcomes:
    """The outcome last heard from each peer for each machinetype (see the module docstring)."""

    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str], _Outcome] = {}

    def __len__(self) -> int:
        return len(self._outcomes)

    def complete(
        self,
        heard: Sequence[MachinetypeReport],
        settings: Settings,
        machinetypes: Mapping[str, Machinetype],
        now: int,
    ) -> list[MachinetypeReport]:
        """Learn from this pass's peer reports, forget what no longer matters, and fill the gaps."""
        heard_keys = set()
        for report in heard:
            heard_keys.add(_key(report))
            if report.shutdown_time is None:
                self._outcomes.pop(_key(report), None)
            else:
                self._outcomes[_key(report)] = _Outcome(
                    report.shutdown_time, report.shutdown_message, report.shutdown_machine
                )
        self._forget(settings, machinetypes, now)

        completed = list(heard)
        names = {factory.name.lower(): factory.name for factory in settings.factories}
        for (factory, machinetype), known in sorted(self._outcomes.items()):
            if (factory, machinetype) not in heard_keys:
                completed.append(MachinetypeReport(
                    factory=names.get(factory, factory),
                    machinetype=machinetype,
                    running_hs06=0.0,
                    num_before_fizzle=0,
                    shutdown_message=known.shutdown_message,
                    shutdown_time=known.shutdown_time,
                    shutdown_machine=known.shutdown_machine,
                ))
        return completed

    def _forget(self, settings: Settings, machinetypes: Mapping[str, Machinetype], now: int) -> None:
        peers = {factory.name.lower() for factory in settings.factories} - {settings.factory_name.lower()}
        for key, known in list(self._outcomes.items()):
            factory, name = key
            machinetype = machinetypes.get(name)
            if (factory not in peers or machinetype is None
                    or now - known.shutdown_time > relevance_seconds(machinetype, settings.abort_rule)):
                del self._outcomes[key]
