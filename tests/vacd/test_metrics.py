"""The vac_* metrics, scraped over real HTTP on 127.0.0.1 and parsed with prometheus_client."""

from __future__ import annotations

import json
import re
from collections import Counter
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from vacd import VERSION
from vacd.metrics import FactoryMetrics, MetricsServer, parse_listen_address, register_process_collectors, serve_metrics

STATUS_TIME = 1_700_000_000


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_status(**changes: Any) -> dict[str, Any]:
    def slot(ordinal: int, state: str, machinetype: Any = None) -> dict[str, Any]:
        return {"ordinal": ordinal, "name": f"f1-{ordinal:02d}.example.com", "state": state, "machinetype": machinetype}

    status: dict[str, Any] = {
        "factory": "f1.example.com",
        "space": "vac01.example.com",
        "time": STATUS_TIME,
        "draining": False,
        "gate": None,
        "slots": [
            slot(0, "Running", "lhcb"),
            slot(1, "Running", "lhcb"),
            slot(2, "Running", "atlas"),
            slot(3, "Starting", "atlas"),
            slot(4, "Shut down"),
            slot(5, "Stopping", "lhcb"),
        ],
        "machinetypes": {
            "lhcb": {
                "target_share": 3.0,
                "running_processors": 3,
                "running_machines": 3,
                "running_hs06": 30.0,
                "backoff_until": None,
                "last_outcome": None,
            },
            "atlas": {
                "target_share": 1.0,
                "running_processors": 2,
                "running_machines": 2,
                "running_hs06": 10.0,
                "backoff_until": STATUS_TIME + 600,
                "last_outcome": {"machine": "f1-07.example.com", "message": "300 Nothing to do", "time": STATUS_TIME - 5},
            },
        },
        "heartbeats": {"factory": STATUS_TIME, "responder": STATUS_TIME - 30, "metadata": STATUS_TIME - 100, "mjf": 0},
        "census": {"heard": 2, "expected": 3, "duration_seconds": 1.5},
        "total_processors": 8,
        "running_processors": 5,
        "last_error": None,
    }
    status.update(changes)
    return status


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(STATUS_TIME + 10)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: FakeClock) -> FactoryMetrics:
    return FactoryMetrics(registry, clock=clock)


@pytest.fixture
def server(registry: CollectorRegistry, metrics: FactoryMetrics) -> Iterator[MetricsServer]:
    running = serve_metrics("127.0.0.1:0", registry, metrics.healthy_if_fresh(60.0))
    try:
        yield running
    finally:
        running.stop()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def healthz(server: MetricsServer) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_status_gauges_are_scraped_over_http(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.observe_status(make_status())
    samples = scrape(server)

    assert value(samples, "vac_slots", state="Running") == 3
    assert value(samples, "vac_slots", state="Starting") == 1
    assert value(samples, "vac_slots", state="Shut down") == 1
    assert value(samples, "vac_slots", state="Paused") == 0
    assert value(samples, "vac_processors_capacity") == 8
    assert value(samples, "vac_processors_running") == 5
    assert value(samples, "vac_draining") == 0
    assert value(samples, "vac_status_timestamp_seconds") == STATUS_TIME
    assert value(samples, "vac_factory_info", factory="f1.example.com", space="vac01.example.com", version=VERSION) == 1
    assert value(samples, "vac_machinetype_machines", machinetype="lhcb") == 3
    assert value(samples, "vac_machinetype_processors", machinetype="atlas") == 2
    assert value(samples, "vac_machinetype_target_share", machinetype="lhcb") == 0.75
    assert value(samples, "vac_machinetype_achieved_share", machinetype="lhcb") == 0.75
    assert value(samples, "vac_machinetype_achieved_share", machinetype="atlas") == 0.25
    assert value(samples, "vac_machinetype_backoff", machinetype="atlas") == 1
    assert value(samples, "vac_machinetype_backoff", machinetype="lhcb") == 0
    assert value(samples, "vac_machinetype_backoff_until_timestamp_seconds", machinetype="atlas") == STATUS_TIME + 600
    assert value(samples, "vac_machinetype_last_outcome_code", machinetype="atlas") == 300
    assert value(samples, "vac_census_completeness_ratio") == pytest.approx(2 / 3)
    assert value(samples, "vac_census_duration_seconds") == 1.5


def test_heartbeat_ages_grow_at_scrape_time_without_new_status(
    metrics: FactoryMetrics, server: MetricsServer, clock: FakeClock
) -> None:
    metrics.observe_status(make_status())
    assert value(scrape(server), "vac_heartbeat_age_seconds", component="responder") == 40

    clock.now += 1000
    samples = scrape(server)

    assert value(samples, "vac_heartbeat_age_seconds", component="factory") == 1010
    assert value(samples, "vac_heartbeat_timestamp_seconds", component="metadata") == STATUS_TIME - 100
    assert ("vac_heartbeat_age_seconds", frozenset({("component", "mjf")})) not in samples


def test_event_counters_and_histograms(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.creation_finished("lhcb", 12.0, ok=True)
    metrics.creation_finished("lhcb", 700.0, ok=False)
    metrics.destruction_finished(0.3, ok=True)
    metrics.datagram("machines_query", "accepted")
    metrics.datagram("machines_query", "wrong_space")
    metrics.guest_request("jobfeatures", 200)
    metrics.guest_request("joboutputs", 403)
    samples = scrape(server)

    assert value(samples, "vac_creations_total", machinetype="lhcb", outcome="ok") == 1
    assert value(samples, "vac_creations_total", machinetype="lhcb", outcome="failed") == 1
    assert value(samples, "vac_creation_duration_seconds_count", machinetype="lhcb") == 2
    assert value(samples, "vac_creation_duration_seconds_bucket", machinetype="lhcb", le="20.0") == 1
    assert value(samples, "vac_destructions_total", outcome="ok") == 1
    assert value(samples, "vac_destruction_duration_seconds_bucket", le="0.5") == 1
    assert value(samples, "vac_datagrams_received_total", kind="machines_query") == 2
    assert value(samples, "vac_datagrams_dropped_total", kind="machines_query", reason="wrong_space") == 1
    assert value(samples, "vac_guest_requests_total", path_class="joboutputs", status="403") == 1


def test_each_pass_counts_its_outcome_cpu_and_duration(metrics: FactoryMetrics, server: MetricsServer) -> None:
    assert value(scrape(server), "vac_passes_total", outcome="incomplete") == 0
    metrics.pass_finished(0.02, 0.015, completed=True)
    metrics.pass_finished(0.3, 0.1, completed=True)
    metrics.pass_finished(0.004, 0.001, completed=False)
    samples = scrape(server)

    assert value(samples, "vac_passes_total", outcome="complete") == 2
    assert value(samples, "vac_passes_total", outcome="incomplete") == 1
    assert value(samples, "vac_pass_cpu_seconds_total") == pytest.approx(0.116)
    assert value(samples, "vac_pass_duration_seconds_count") == 3
    assert value(samples, "vac_pass_duration_seconds_bucket", le="0.025") == 2
    assert value(samples, "vac_pass_duration_seconds_bucket", le="0.25") == 2
    assert value(samples, "vac_pass_duration_seconds_bucket", le="0.5") == 3


def test_an_answered_query_is_received_once_and_dropped_never(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.observe_responder_counters(Counter({"answered": 3}))
    samples = scrape(server)

    assert value(samples, "vac_datagrams_received_total", kind="query") == 3
    assert not [key for key in samples if key[0] == "vac_datagrams_dropped_total"]


def test_a_capped_answer_is_one_datagram_received_and_one_capped_reply(
    metrics: FactoryMetrics, server: MetricsServer
) -> None:
    # The responder tallies a capped answer both "answered" and "replies_capped".
    metrics.observe_responder_counters(Counter({"answered": 2, "replies_capped": 1}))
    samples = scrape(server)

    assert value(samples, "vac_datagrams_received_total", kind="query") == 2
    assert value(samples, "vac_vacquery_replies_capped_total") == 1
    assert not [key for key in samples if key[0] == "vac_datagrams_dropped_total"]


def test_refused_queries_are_received_and_dropped_for_their_reason_and_socket_errors_are_neither(
    metrics: FactoryMetrics, server: MetricsServer
) -> None:
    metrics.observe_responder_counters(Counter({"answered": 1, "wrong_space": 2, "socket_error": 4}))
    samples = scrape(server)

    assert value(samples, "vac_datagrams_received_total", kind="query") == 3
    assert value(samples, "vac_datagrams_dropped_total", kind="query", reason="wrong_space") == 2
    assert value(samples, "vac_vacquery_socket_errors_total") == 4
    assert ("vac_datagrams_dropped_total", frozenset({("kind", "query"), ("reason", "socket_error")})) not in samples


def test_responder_counters_add_only_what_the_tally_grew_by(metrics: FactoryMetrics, server: MetricsServer) -> None:
    tally = Counter({"answered": 5, "malformed": 1})
    metrics.observe_responder_counters(tally)
    tally["answered"] += 2
    metrics.observe_responder_counters(tally)
    # A new responder (a fresh tally) must not make a counter go back.
    metrics.observe_responder_counters(Counter({"answered": 1}))
    metrics.observe_responder_counters(Counter({"answered": 4}))
    samples = scrape(server)

    assert value(samples, "vac_datagrams_received_total", kind="query") == 5 + 1 + 2 + 3
    assert value(samples, "vac_datagrams_dropped_total", kind="query", reason="malformed") == 1


def test_process_and_platform_collectors_are_served_beside_the_vac_metrics(
    registry: CollectorRegistry, metrics: FactoryMetrics, server: MetricsServer
) -> None:
    register_process_collectors(registry)
    names = {name for name, _ in scrape(server)}

    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"} <= names
    assert "python_info" in names and "python_gc_collections_total" in names


def test_before_any_census_the_census_is_complete_not_empty(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.observe_status(make_status(census=None))
    samples = scrape(server)

    assert value(samples, "vac_census_expected_factories") == 0
    assert value(samples, "vac_census_completeness_ratio") == 1


def test_no_gauge_has_a_counters_total_suffix(registry: CollectorRegistry, metrics: FactoryMetrics) -> None:
    metrics.observe_status(make_status())
    register_process_collectors(registry)
    gauges_named_like_counters = [
        family.name for family in registry.collect() if family.type != "counter" and family.name.endswith("_total")
    ]

    assert gauges_named_like_counters == []


def test_machinetype_removed_from_status_disappears_from_metrics(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.observe_status(make_status())
    status = make_status()
    del status["machinetypes"]["atlas"]
    metrics.observe_status(status)
    samples = scrape(server)

    assert not [key for key in samples if ("machinetype", "atlas") in key[1]]
    assert value(samples, "vac_machinetype_target_share", machinetype="lhcb") == 1.0


def test_healthz_follows_the_factory_heartbeat(metrics: FactoryMetrics, server: MetricsServer, clock: FakeClock) -> None:
    assert healthz(server) == 503  # nothing published yet
    metrics.observe_status(make_status())
    assert healthz(server) == 200
    clock.now += 120
    assert healthz(server) == 503


def test_healthz_is_unhealthy_when_the_check_raises(registry: CollectorRegistry) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    running = serve_metrics("127.0.0.1:0", registry, broken)
    try:
        assert healthz(running) == 503
    finally:
        running.stop()


def test_unknown_path_is_404(server: MetricsServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
    assert caught.value.code == 404


def test_two_factories_can_share_a_process_with_their_own_registries(clock: FakeClock) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    FactoryMetrics(first, clock=clock).observe_status(make_status())
    FactoryMetrics(second, clock=clock).observe_status(make_status(draining=True))
    assert first.get_sample_value("vac_draining") == 0
    assert second.get_sample_value("vac_draining") == 1


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))],
)
def test_listen_address_forms(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9100", "host:", "host:70000", "[::1]9100"])
def test_bad_listen_address_is_rejected(address: str) -> None:
    with pytest.raises(ValueError, match="metrics_address"):
        parse_listen_address(address)


def test_grafana_dashboard_uses_only_metrics_that_exist(registry: CollectorRegistry, metrics: FactoryMetrics) -> None:
    metrics.observe_status(make_status())
    metrics.creation_finished("lhcb", 1.0, ok=True)
    metrics.destruction_finished(1.0, ok=True)
    metrics.datagram("factory_query", "malformed")
    metrics.guest_request("metadata", 200)
    metrics.machine_finished("300")
    exposed = {sample.name for family in registry.collect() for sample in family.samples}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "etc/grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]

    used = {name for expression in expressions for name in re.findall(r"\bvac_[a-z0-9_]+", expression)}
    assert used and used <= exposed, used - exposed


def test_outcomes_are_counted_by_code(metrics: FactoryMetrics, server: MetricsServer) -> None:
    for code in ("200", "300", "300", "none"):
        metrics.machine_finished(code)
    samples = scrape(server)
    assert value(samples, "vac_outcomes_total", code="300") == 2
    assert value(samples, "vac_outcomes_total", code="200") == 1 and value(samples, "vac_outcomes_total", code="none") == 1


# ---------------------------------------------------------------- faults (issue 8 item 8)

CONFIG_ERROR = "/etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'"


def healthz_body(server: MetricsServer) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_faults_and_config_error_are_gauges_with_their_since_time(metrics: FactoryMetrics, server: MetricsServer) -> None:
    metrics.observe_status(make_status())
    samples = scrape(server)
    assert value(samples, "vac_config_error") == 0
    assert value(samples, "vac_fault", kind="config") == 0 and value(samples, "vac_fault", kind="disk") == 0

    metrics.observe_status(make_status(
        config_error=CONFIG_ERROR,
        faults=[{"kind": "config", "message": CONFIG_ERROR, "since": STATUS_TIME - 300},
                {"kind": "disk", "message": "disk: /var/lib/vac has 312 MiB free, needs 1024 MiB", "since": STATUS_TIME - 60}],
    ))
    samples = scrape(server)
    assert value(samples, "vac_config_error") == 1
    assert value(samples, "vac_fault", kind="config") == 1
    assert value(samples, "vac_fault_since_seconds", kind="config") == STATUS_TIME - 300
    assert value(samples, "vac_fault", kind="disk") == 1
    assert value(samples, "vac_fault", kind="listing") == 0
    assert value(samples, "vac_fault_since_seconds", kind="listing") == 0

    metrics.observe_status(make_status(faults=[]))
    samples = scrape(server)
    assert value(samples, "vac_config_error") == 0 and value(samples, "vac_fault", kind="config") == 0
    assert value(samples, "vac_fault_since_seconds", kind="disk") == 0


def test_slot_errors_total_follows_the_factory_totals_and_never_goes_back(
    metrics: FactoryMetrics, server: MetricsServer
) -> None:
    assert value(scrape(server), "vac_slot_errors_total", step="police") == 0  # every step exported from the start
    metrics.observe_status(make_status(slot_error_totals={"police": 2, "account": 0}))
    metrics.observe_status(make_status(slot_error_totals={"police": 5, "account": 1}))
    metrics.observe_status(make_status(slot_error_totals={"police": 5, "account": 1}))
    samples = scrape(server)
    assert value(samples, "vac_slot_errors_total", step="police") == 5
    assert value(samples, "vac_slot_errors_total", step="account") == 1
    assert value(samples, "vac_slot_errors_total", step="observe") == 0


def test_healthz_is_503_naming_the_config_fault_while_heartbeats_are_fresh(
    metrics: FactoryMetrics, server: MetricsServer
) -> None:
    metrics.observe_status(make_status(
        config_error=CONFIG_ERROR, faults=[{"kind": "config", "message": CONFIG_ERROR, "since": STATUS_TIME - 300}]
    ))
    status, body = healthz_body(server)
    assert status == 503
    assert body == f"unhealthy: configuration error: {CONFIG_ERROR} (since 2023-11-14 22:08:20Z)\n"

    metrics.observe_status(make_status())
    assert healthz_body(server) == (200, "ok\n")


def test_healthz_names_a_stale_factory_heartbeat(metrics: FactoryMetrics, server: MetricsServer, clock: FakeClock) -> None:
    assert healthz_body(server) == (503, "unhealthy: no factory heartbeat yet\n")
    metrics.observe_status(make_status())
    clock.now += 120
    assert healthz_body(server) == (503, "unhealthy: factory heartbeat 130s old (limit 60s)\n")


def test_quarantined_records_are_counted_from_the_status_totals() -> None:
    registry = CollectorRegistry()
    metrics = FactoryMetrics(registry, clock=lambda: 1_700_000_000.0)
    for total in (0, 2, 2, 5):
        metrics.observe_status({**make_status(), "records_quarantined_total": total})
    assert registry.get_sample_value("vac_records_quarantined_total") == 5
