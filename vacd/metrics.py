"""Prometheus metrics of one factory, and the small HTTP server for /metrics and /healthz.

Rules (issue 5; Vac 03 had no metrics endpoint, §11):
- Every metric is named `vac_...`, is registered on the registry passed in (no global
  registry, so tests and several factories in one process do not collide), and is fed by
  the factory through the methods of `FactoryMetrics`; nothing here reads vacd's files.
- `observe_status` takes the status.json dict the factory publishes each pass, so the
  metrics and `vac status` always show the same numbers. Per-machinetype series of a
  machinetype that has left the configuration are removed, not left frozen.
- Heartbeat ages are computed at scrape time from the injected clock: a stuck factory stops
  calling `observe_status`, and its ages must keep growing, which is the point of them.
- Label values come from our own code (states, kinds, outcomes, path classes), never
  from a peer or a guest, so the number of series stays bounded.
- `promtool check metrics` clean (issue 12 item 7): only counters end in `_total`
  (`vac_processors_capacity` was `vac_processors_total`, a gauge), the process, platform
  and GC collectors are registered by `register_process_collectors`, `vac_factory_info`
  carries vacd's version, and each VacQuery query is received once: the responder's
  tally is translated by `observe_responder_counters` (a capped answer is no second one).
- Faults are metrics too (issue 8 item 8): `vac_fault{kind}` and its since-time for every
  fault kind, `vac_config_error`, and `vac_slot_errors_total{step}` fed from the factory's
  cumulative totals in status.json (`slot_error_totals`), so a counter never goes back.
- The HTTP server runs on its own daemon thread, answers GET/HEAD of `/metrics` and
  `/healthz` (200 when `healthy()` is true, 503 otherwise or if it raises, with the reasons
  in the body), 404 otherwise, and stops with `stop()`. The factory's check is unhealthy
  while the configuration is bad or no pass has completed within the age limit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info
from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
else:
    try:
        from prometheus_client.registry import Collector
    except ImportError:
        # prometheus_client 0.13.1 (EPEL 9's python3-prometheus_client, issue 12 item 1) has
        # no Collector base class (0.14 added it); its registry takes any object that has
        # collect(), so a plain object base is all the older version needs.
        Collector = object

from vacd import VERSION
from vacd.creationphases import PHASES
from vacd.factory import SLOT_STEPS
from vacd.outcomes import shutdown_code

log = logging.getLogger(__name__)

# The slot states of status.json (Vac's words plus "Stopping", "Error" and "Held": a Vac 03
# machine left running because it could not be adopted), always exported, 0 if none.
SLOT_STATES = ("Shut down", "Starting", "Running", "Paused", "Stopping", "Error", "Held")
HEARTBEAT_COMPONENTS = ("factory", "responder", "metadata", "mjf")
# A VM creation may download an image (Vac 03's fetch timeout was 120 s, Appendix C).
CREATION_BUCKETS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# One phase of a creation (vacd.creationphases): a millisecond for the XML, a second or more for
# createXML under TCG, minutes when the pool's workers are all busy.
CREATION_PHASE_BUCKETS_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# A destroy is an ACPI request then, after shutdown_grace_seconds (30 s default), a hard one.
# A pass over an unchanged node should cost milliseconds; one over the 30 s budget is logged too.
PASS_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DESTRUCTION_BUCKETS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The factory-wide fault kinds (vacd.faults.Fault), always exported so an alert can test for 1.
FAULT_KINDS = ("config", "listing", "disk", "network")
# The responder's tally (vacquery.responder_transport.ResponderProtocol.counters) holds one outcome per
# datagram received, plus two marks that are not datagrams received: a capped answer was
# also tallied "answered", and a socket error is the kernel reporting a failed send.
RESPONDER_ANSWERED = "answered"
RESPONDER_CAPPED = "replies_capped"
RESPONDER_SOCKET_ERROR = "socket_error"


@dataclass(frozen=True)
class Page:
    """An extra page served beside /metrics (the dashboard's): its body and headers."""

    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


# A page's callable returns None while it has nothing to show yet (503 "not ready").
PageSource = Callable[[], Optional[Page]]


@dataclass(frozen=True)
class Health:
    """The /healthz verdict: healthy, or the reasons it is not (the body of the 503)."""

    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.problems


class FactoryMetrics:
    """The `vac_*` metrics of one factory, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._machinetypes: frozenset[str] = frozenset()
        self._heartbeats: Mapping[str, float] = {}
        self._status_time: Optional[float] = None
        self._config_problem: Optional[str] = None
        self._fault_kinds: set[str] = set(FAULT_KINDS)
        self._slot_error_totals_seen: dict[str, int] = {}

        def gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, documentation, list(labels), registry=registry)

        self.info = Info("vac_factory", "Factory name, space and vacd version", registry=registry)
        self.status_time = gauge("vac_status_timestamp_seconds", "Unix time of the last published factory pass")
        self.slots = gauge("vac_slots", "Slots by state", ["state"])
        self.draining = gauge("vac_draining", "1 while the factory is draining (no creations)")
        # Not vac_processors_total: "_total" is the suffix of counters (issue 12 item 7).
        self.processor_capacity = gauge("vac_processors_capacity", "Processors this factory may give to machines")
        self.running_processors = gauge("vac_processors_running", "Processors of running machines")
        self.factory_error = gauge("vac_factory_error", "1 while the factory reports an error (factory-error)")
        self.config_error = gauge("vac_config_error", "1 while the configuration is bad (creation stopped)")
        self.fault = gauge("vac_fault", "1 while the factory-wide fault of this kind is present", ["kind"])
        self.fault_since = gauge(
            "vac_fault_since_seconds", "Unix time since which the fault of this kind is present, 0 if none", ["kind"]
        )
        self.slot_errors = Counter(
            "vac_slot_errors", "Contained per-slot errors, by step of the pass", ["step"], registry=registry
        )
        self.records_quarantined = Counter(
            "vac_records_quarantined", "Unreadable records renamed aside as *.corrupt-<time>", registry=registry
        )
        self._records_quarantined_seen = 0

        per_machinetype = ["machinetype"]
        self.machines = gauge("vac_machinetype_machines", "Running machines by machinetype", per_machinetype)
        self.processors = gauge("vac_machinetype_processors", "Processors of running machines by machinetype", per_machinetype)
        self.hs06 = gauge("vac_machinetype_hs06", "HS06 of running machines by machinetype", per_machinetype)
        self.configured_share = gauge(
            "vac_machinetype_configured_share", "target_share as configured (any scale)", per_machinetype
        )
        self.target_share = gauge(
            "vac_machinetype_target_share", "target_share as a fraction of all machinetypes' shares", per_machinetype
        )
        self.achieved_share = gauge(
            "vac_machinetype_achieved_share", "Fraction of this factory's running HS06 used by the machinetype", per_machinetype
        )
        self.backoff_until = gauge(
            "vac_machinetype_backoff_until_timestamp_seconds", "End of the back-off in force, 0 if none", per_machinetype
        )
        self.backoff = gauge("vac_machinetype_backoff", "1 while the machinetype is backed off", per_machinetype)
        self.last_outcome_time = gauge(
            "vac_machinetype_last_outcome_timestamp_seconds", "Time of the last finished machine's outcome", per_machinetype
        )
        self.last_outcome_code = gauge(
            "vac_machinetype_last_outcome_code", "3-digit code of the last shutdown message, 0 if it had none", per_machinetype
        )
        self._per_machinetype = (
            self.machines,
            self.processors,
            self.hs06,
            self.configured_share,
            self.target_share,
            self.achieved_share,
            self.backoff_until,
            self.backoff,
            self.last_outcome_time,
            self.last_outcome_code,
        )

        self.census_heard = gauge("vac_census_heard_factories", "Factories that answered the last census")
        self.census_expected = gauge("vac_census_expected_factories", "Factories asked in the last census")
        self.census_completeness = gauge("vac_census_completeness_ratio", "heard / expected of the last census")
        self.census_duration = gauge("vac_census_duration_seconds", "How long the last census took")

        self.datagrams_received = Counter(
            "vac_datagrams_received", "VacQuery datagrams received, by kind", ["kind"], registry=registry
        )
        self.datagrams_dropped = Counter(
            "vac_datagrams_dropped", "VacQuery datagrams dropped, by kind and reason", ["kind", "reason"], registry=registry
        )
        self.replies_capped = Counter(
            "vac_vacquery_replies_capped",
            "VacQuery queries answered with fewer replies than asked for (amplification or byte budget)",
            registry=registry,
        )
        self.socket_errors = Counter(
            "vac_vacquery_socket_errors", "Errors the VacQuery responder's socket reported (e.g. a failed send)", registry=registry
        )
        self._responder_totals_seen: dict[str, int] = {}
        self.guest_requests = Counter(
            "vac_guest_requests", "Guest HTTP requests, by path class and status", ["path_class", "status"], registry=registry
        )
        self.guest_server_restarts = Counter(
            "vac_guest_server_restarts", "Guest server processes (guest_api_processes) that ended and were started again",
            registry=registry,
        )
        self.creations = Counter(
            "vac_creations", "Machine creations finished, by outcome", ["machinetype", "outcome"], registry=registry
        )
        self.creation_seconds = Histogram(
            "vac_creation_duration_seconds",
            "Time from the creation decision to a running machine (or failure)",
            ["machinetype"],
            buckets=CREATION_BUCKETS_SECONDS,
            registry=registry,
        )
        self.creation_phase_seconds = Histogram(
            "vac_creation_phase_seconds",
            "Time of each phase of a machine creation (vacd.creationphases), successful or not",
            ["phase"],
            buckets=CREATION_PHASE_BUCKETS_SECONDS,
            registry=registry,
        )
        for phase in PHASES:
            self.creation_phase_seconds.labels(phase)
        # The code is the 3-digit prefix or "none" (vacd.dashboard.view.outcome_key): at most
        # 901 values whatever guests write, so the series stay bounded.
        self.outcomes = Counter(
            "vac_outcomes", "Machines finished, by the 3-digit code of their shutdown message", ["code"], registry=registry
        )
        self.destructions = Counter("vac_destructions", "Machine destructions finished, by outcome", ["outcome"], registry=registry)
        self.destruction_seconds = Histogram(
            "vac_destruction_duration_seconds",
            "Time to destroy a machine",
            buckets=DESTRUCTION_BUCKETS_SECONDS,
            registry=registry,
        )
        # The pass cost in production (issue 15 item 2): a node whose passes grow dearer shows it here.
        self.passes = Counter(
            "vac_passes", "Reconcile passes run, by whether they completed (listing and config good)", ["outcome"],
            registry=registry,
        )
        self.pass_cpu_seconds = Counter(
            "vac_pass_cpu_seconds", "CPU time of the reconcile loop's thread spent in passes and their publication",
            registry=registry,
        )
        self.pass_seconds = Histogram(
            "vac_pass_duration_seconds", "Wall time of one reconcile pass and its publication",
            buckets=PASS_BUCKETS_SECONDS, registry=registry,
        )
        registry.register(_HeartbeatCollector(self))
        for outcome in ("complete", "incomplete"):
            self.passes.labels(outcome)
        for state in SLOT_STATES:
            self.slots.labels(state).set(0)
        for kind in FAULT_KINDS:
            self.fault.labels(kind).set(0)
            self.fault_since.labels(kind).set(0)
        for step in SLOT_STEPS:
            self.slot_errors.labels(step)
        # Exported at 0 before the first query, so rate() and alerts see the series from the start.
        self.datagrams_received.labels("query")
        # Before any census nobody was asked and nobody is missing: heard / expected is 0 / 0,
        # which _observe_census reports as complete; a 0 here would read as "nobody answered".
        self.census_completeness.set(1.0)

    # ------------------------------------------------------------------ per pass
    def observe_status(self, status: Mapping[str, Any]) -> None:
        """Set the gauges from one status.json dict (the factory's published pass)."""
        status_time = _number(status.get("time"))
        self.info.info(
            {"factory": str(status.get("factory") or ""), "space": str(status.get("space") or ""), "version": VERSION}
        )
        self.status_time.set(status_time)
        self.draining.set(1 if status.get("draining") else 0)
        self.processor_capacity.set(_number(status.get("total_processors")))
        self.running_processors.set(_number(status.get("running_processors")))
        self.factory_error.set(1 if status.get("last_error") else 0)

        counts = dict.fromkeys(SLOT_STATES, 0)
        for slot in status.get("slots") or ():
            state = slot.get("state") if isinstance(slot, Mapping) else None
            if state in counts:
                counts[state] += 1
        for state, count in counts.items():
            self.slots.labels(state).set(count)

        self._observe_machinetypes(status.get("machinetypes") or {}, status_time)
        self._observe_census(status.get("census"))
        config_problem = self._observe_faults(status)
        self._observe_slot_error_totals(status.get("slot_error_totals"))
        quarantined = status.get("records_quarantined_total")
        if isinstance(quarantined, int) and not isinstance(quarantined, bool):
            if quarantined > self._records_quarantined_seen:
                self.records_quarantined.inc(quarantined - self._records_quarantined_seen)
            self._records_quarantined_seen = quarantined
        heartbeats = status.get("heartbeats") or {}
        with self._lock:
            self._heartbeats = {
                str(component): float(value)
                for component, value in heartbeats.items()
                if isinstance(value, (int, float)) and value > 0
            }
            self._status_time = status_time
            self._config_problem = config_problem

    def _observe_faults(self, status: Mapping[str, Any]) -> Optional[str]:
        """Set vac_fault and vac_config_error; return the configuration problem for /healthz, if any."""
        present: dict[str, float] = {}
        config_problem = None
        for fault in status.get("faults") or ():
            if not isinstance(fault, Mapping) or not isinstance(fault.get("kind"), str):
                continue
            kind = fault["kind"]
            present.setdefault(kind, _number(fault.get("since")))
            if kind == "config" and config_problem is None:
                config_problem = _first_line(fault.get("message"))
                if present[kind]:
                    config_problem += f" (since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(present[kind]))})"
        if config_problem is None and status.get("config_error"):
            # A factory that sets only the older key still has a bad configuration.
            config_problem = _first_line(status.get("config_error"))
            present.setdefault("config", 0.0)
        self._fault_kinds |= set(present)
        for kind in sorted(self._fault_kinds):
            self.fault.labels(kind).set(1 if kind in present else 0)
            self.fault_since.labels(kind).set(present.get(kind, 0.0))
        self.config_error.set(1 if config_problem is not None else 0)
        return config_problem

    def _observe_slot_error_totals(self, totals: Any) -> None:
        """Add what each step's cumulative total grew by since the last status (never negative)."""
        if not isinstance(totals, Mapping):
            return
        for step, total in totals.items():
            if not isinstance(total, int) or isinstance(total, bool):
                continue
            grown = total - self._slot_error_totals_seen.get(str(step), 0)
            if grown > 0:
                self.slot_errors.labels(str(step)).inc(grown)
            self._slot_error_totals_seen[str(step)] = total

    def _observe_machinetypes(self, machinetypes: Mapping[str, Any], status_time: float) -> None:
        shares = {name: max(0.0, _number(values.get("target_share"))) for name, values in machinetypes.items()}
        share_total = sum(shares.values())
        hs06 = {name: max(0.0, _number(values.get("running_hs06"))) for name, values in machinetypes.items()}
        hs06_total = sum(hs06.values())
        for name, values in machinetypes.items():
            self.machines.labels(name).set(_number(values.get("running_machines")))
            self.processors.labels(name).set(_number(values.get("running_processors")))
            self.hs06.labels(name).set(hs06[name])
            self.configured_share.labels(name).set(shares[name])
            self.target_share.labels(name).set(shares[name] / share_total if share_total else 0.0)
            self.achieved_share.labels(name).set(hs06[name] / hs06_total if hs06_total else 0.0)
            until = _number(values.get("backoff_until"))
            self.backoff_until.labels(name).set(until)
            self.backoff.labels(name).set(1 if until > status_time else 0)
            outcome = values.get("last_outcome")
            if isinstance(outcome, Mapping):
                self.last_outcome_time.labels(name).set(_number(outcome.get("time")))
                message = outcome.get("message")
                self.last_outcome_code.labels(name).set(shutdown_code(message if isinstance(message, str) else None) or 0)
        current = frozenset(machinetypes)
        for gone in self._machinetypes - current:
            for metric in self._per_machinetype:
                try:
                    metric.remove(gone)
                except KeyError:
                    continue  # this series was never set (e.g. no outcome yet)
        self._machinetypes = current

    def _observe_census(self, census: Any) -> None:
        if not isinstance(census, Mapping):
            return
        heard, expected = _number(census.get("heard")), _number(census.get("expected"))
        self.census_heard.set(heard)
        self.census_expected.set(expected)
        self.census_completeness.set(heard / expected if expected else 1.0)
        self.census_duration.set(_number(census.get("duration_seconds")))

    # ------------------------------------------------------------------ events
    def pass_finished(self, seconds: float, cpu_seconds: float, completed: bool) -> None:
        """One reconcile pass (and its publication) took `seconds` of wall and `cpu_seconds` of the loop's CPU."""
        self.passes.labels("complete" if completed else "incomplete").inc()
        self.pass_cpu_seconds.inc(max(0.0, cpu_seconds))
        self.pass_seconds.observe(max(0.0, seconds))

    def creation_finished(self, machinetype: str, seconds: float, ok: bool) -> None:
        self.creations.labels(machinetype, "ok" if ok else "failed").inc()
        self.creation_seconds.labels(machinetype).observe(max(0.0, seconds))

    def creation_phase(self, phase: str, seconds: float) -> None:
        """One phase of one creation ended (any thread); an unknown phase name is dropped, not exported."""
        if phase in PHASES:
            self.creation_phase_seconds.labels(phase).observe(max(0.0, seconds))

    def machine_finished(self, code: str) -> None:
        """A machine was finalised with this outcome code ("none" when its message had none)."""
        self.outcomes.labels(code).inc()

    def destruction_finished(self, seconds: float, ok: bool) -> None:
        self.destructions.labels("ok" if ok else "failed").inc()
        self.destruction_seconds.observe(max(0.0, seconds))

    def datagram(self, kind: str, outcome: str, count: int = 1) -> None:
        """Count received datagrams; any outcome but "accepted" is a drop for that reason."""
        self.datagrams_received.labels(kind).inc(count)
        if outcome != "accepted":
            self.datagrams_dropped.labels(kind, outcome).inc(count)

    def observe_responder_counters(self, totals: Mapping[str, int]) -> None:
        """Count what the VacQuery responder's cumulative tally grew by since the last call.

        Each query received has one outcome: "answered" is accepted, anything else is the
        reason it was dropped. A capped answer is counted once as received (and answered)
        and once in vac_vacquery_replies_capped_total; a socket error is no datagram.
        """
        for outcome, total in list(totals.items()):
            grown = total - self._responder_totals_seen.get(outcome, 0)
            self._responder_totals_seen[outcome] = total
            if grown <= 0:
                continue
            if outcome == RESPONDER_CAPPED:
                self.replies_capped.inc(grown)
            elif outcome == RESPONDER_SOCKET_ERROR:
                self.socket_errors.inc(grown)
            else:
                self.datagram("query", "accepted" if outcome == RESPONDER_ANSWERED else outcome, grown)

    def guest_request(self, path_class: str, status: int, count: int = 1) -> None:
        self.guest_requests.labels(path_class, str(status)).inc(count)

    # ------------------------------------------------------------------ health
    def heartbeat_ages(self) -> dict[str, float]:
        """Seconds since each component's last heartbeat, as of now."""
        now = self.clock()
        with self._lock:
            return {component: max(0.0, now - value) for component, value in self._heartbeats.items()}

    def healthy_if_fresh(self, max_age_seconds: float, components: Iterable[str] = ("factory",)) -> Callable[[], Health]:
        """A `healthy` callable for serve_metrics: every named heartbeat is younger than the limit
        and the configuration is good (the factory heartbeat beats only per completed pass)."""
        wanted = tuple(components)

        def healthy() -> Health:
            ages = self.heartbeat_ages()
            with self._lock:
                config_problem = self._config_problem
            problems = []
            if config_problem is not None:
                problems.append(f"configuration error: {config_problem}")
            for component in wanted:
                if component not in ages:
                    problems.append(f"no {component} heartbeat yet")
                elif ages[component] > max_age_seconds:
                    problems.append(f"{component} heartbeat {ages[component]:.0f}s old (limit {max_age_seconds:.0f}s)")
            return Health(tuple(problems))

        return healthy


def register_process_collectors(registry: CollectorRegistry) -> None:
    """Add the process_*, python_info and python_gc_* metrics that the default registry has.

    vacd serves its own registry (see the module rules), so these standard collectors,
    which Prometheus's usual process alerts and dashboards expect, are registered here.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class _HeartbeatCollector(Collector):
    """vac_heartbeat_timestamp_seconds and vac_heartbeat_age_seconds, computed at scrape time."""

    def __init__(self, metrics: FactoryMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        with self.metrics._lock:
            heartbeats = dict(self.metrics._heartbeats)
        timestamps = GaugeMetricFamily(
            "vac_heartbeat_timestamp_seconds", "Unix time of each component's last heartbeat", labels=["component"]
        )
        ages = GaugeMetricFamily("vac_heartbeat_age_seconds", "Seconds since each component's last heartbeat", labels=["component"])
        now = self.metrics.clock()
        for component, value in sorted(heartbeats.items()):
            timestamps.add_metric([component], value)
            ages.add_metric([component], max(0.0, now - value))
        return [timestamps, ages]

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting keeps registration from calling the clock.
        return [
            GaugeMetricFamily("vac_heartbeat_timestamp_seconds", "", labels=["component"]),
            GaugeMetricFamily("vac_heartbeat_age_seconds", "", labels=["component"]),
        ]


class MetricsServer:
    """A running /metrics + /healthz server; `stop()` shuts it down and joins its thread."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all IPv4 addresses). Raises ValueError."""
    text = address.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, colon, port_text = text.rpartition(":")
        port_text = port_text if colon else ""
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"metrics_address {address!r}: expected host:port")
    return (host or "0.0.0.0", int(port_text))


def serve_metrics(address: str, registry: CollectorRegistry, healthy: Callable[[], Union[bool, Health]],
                  pages: Optional[Mapping[str, PageSource]] = None) -> MetricsServer:
    """Serve `registry` on `/metrics` and `healthy()` on `/healthz` from a daemon thread.

    A `Health` verdict's problems are the body of the 503, one per line. `pages` maps more
    paths to their sources (the dashboard's `/dashboard` and `/dashboard.json`); a source
    that raises is a 500 with nothing of the error in the body (it is logged).

    Raises:
        ValueError: `address` is not host:port.
        OSError: the address cannot be bound.
    """
    host, port = parse_listen_address(address)

    class Handler(BaseHTTPRequestHandler):
        server_version = "vacd-metrics"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            headers: tuple[tuple[str, str], ...] = ()
            if pages is not None and path in pages:
                status, content_type, body, headers = _page_answer(path, pages[path])
            elif path == "/metrics":
                status, content_type, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path == "/healthz":
                problems: tuple[str, ...]
                try:
                    verdict = healthy()
                    if isinstance(verdict, Health):
                        problems = verdict.problems
                    else:
                        problems = () if verdict else ("unhealthy",)
                except Exception:  # boundary: a failing health check is "unhealthy", not a crash
                    log.exception("health check raised")
                    problems = ("health check failed",)
                status = 503 if problems else 200
                text = "".join(f"unhealthy: {problem}\n" for problem in problems) or "ok\n"
                content_type, body = "text/plain; charset=utf-8", text.encode()
            else:
                status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics request client=%s %s", self.client_address[0], format % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = _family_of(host)

    server = Server((host, port), Handler)
    # A short poll interval makes stop() prompt; an idle poll costs one select() call.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="vacd-metrics", daemon=True)
    thread.start()
    log.info("metrics served address=%s:%d", host, server.server_address[1])
    return MetricsServer(server, thread)


def _page_answer(path: str, source: PageSource) -> tuple[int, str, bytes, tuple[tuple[str, str], ...]]:
    """Status, content type, body and headers of an extra page (500 if its source raised)."""
    try:
        page = source()
    except Exception:  # boundary: one failing page must not take the server (or /metrics) down
        log.exception("page failed path=%s", path)
        return 500, "text/plain; charset=utf-8", b"internal error (see the vacd log)\n", ()
    if page is None:
        return 503, "text/plain; charset=utf-8", b"not ready: no pass has been published yet\n", ()
    return 200, page.content_type, page.body, page.headers


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _first_line(value: Any) -> str:
    lines = str(value or "").strip().splitlines()
    return lines[0] if lines else "(no message)"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
