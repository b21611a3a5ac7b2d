"""/dashboard and /dashboard.json on the metrics server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.vacd.dashboard_samples import NOW, factory, machinetype, status_document
from vacd.dashboard.history import HistoryRing
from vacd.dashboard.pages import dashboard_pages
from vacd.dashboard.service import Dashboard
from vacd.dashboard.view import PassFacts
from vacd.metrics import MetricsServer, serve_metrics


@pytest.fixture
def dashboard(tmp_path: Path) -> Dashboard:
    return Dashboard(HistoryRing(tmp_path / "dashboard-history"), clock=lambda: float(NOW + 1))


@pytest.fixture
def server(dashboard: Dashboard) -> Iterator[MetricsServer]:
    running = serve_metrics("127.0.0.1:0", CollectorRegistry(), lambda: True, dashboard_pages(dashboard))
    try:
        yield running
    finally:
        running.stop()


def get(server: MetricsServer, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return int(response.status), dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), dict(error.headers), error.read()


def publish(dashboard: Dashboard, time: int = NOW, messages: tuple[str, ...] = ()) -> None:
    own = (machinetype("f1.example.com", "lhcb", 10.0, 1.0), factory("f1.example.com", 1, 2))
    dashboard.observe_pass(PassFacts(time, status_document(time=time), own), messages)


def test_before_the_first_pass_every_path_says_not_ready(server: MetricsServer) -> None:
    for path in ("/dashboard", "/dashboard.json", "/dashboard-times.json"):
        status, _, body = get(server, path)
        assert status == 503 and body.startswith(b"not ready")


def test_the_page_is_html_with_its_policy_and_no_caching(server: MetricsServer, dashboard: Dashboard) -> None:
    publish(dashboard)
    status, headers, body = get(server, "/dashboard")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    assert b"vac space vac01.example.com from f1.example.com" in body


def test_the_json_is_the_documented_document(server: MetricsServer, dashboard: Dashboard) -> None:
    publish(dashboard)
    status, headers, body = get(server, "/dashboard.json")
    document = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert document["document_version"] == 1 and document["time"] == NOW + 1
    assert {"factories", "machinetypes", "backoffs", "outcomes", "machines", "this_factory", "history",
            "share_error", "pass_time", "census_time", "listing_time", "machinetypes_heard_time"} <= set(document)


def test_the_times_the_script_polls_are_a_few_bytes(server: MetricsServer, dashboard: Dashboard) -> None:
    publish(dashboard)
    status, headers, body = get(server, "/dashboard-times.json")
    assert status == 200 and headers["Cache-Control"] == "no-store" and len(body) < 200
    assert json.loads(body) == {"time": NOW + 1, "pass_time": NOW, "census_time": None, "listing_time": None}


def test_metrics_and_healthz_are_still_served_beside_it(server: MetricsServer) -> None:
    assert get(server, "/metrics")[0] == 200 and get(server, "/healthz")[0] == 200
    assert get(server, "/dashboard/../metrics")[0] == 404


def test_a_page_that_raises_is_a_500_and_the_server_goes_on(tmp_path: Path) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail")

    running = serve_metrics("127.0.0.1:0", CollectorRegistry(), lambda: True, {"/dashboard": broken})
    try:
        status, _, body = get(running, "/dashboard")
        assert status == 500 and b"secret" not in body
        assert get(running, "/metrics")[0] == 200
    finally:
        running.stop()


def test_one_sample_a_minute_goes_to_the_ring_with_the_outcomes_and_creations_between(dashboard: Dashboard) -> None:
    dashboard.creation_finished(ok=True)
    publish(dashboard, NOW, ("200 Success",))
    dashboard.creation_finished(ok=True)
    dashboard.creation_finished(ok=False)
    publish(dashboard, NOW + 30, ("300 No more work", "no code"))
    publish(dashboard, NOW + 61, ("300 No more work",))
    samples = HistoryRing(dashboard.history.path).samples()
    assert [(s.time, s.creations, s.creation_failures, s.outcomes) for s in samples] == [
        (NOW, 1, 0, {"200": 1}), (NOW + 61, 1, 1, {"300": 2, "none": 1})]


def test_a_restarted_vacd_samples_on_from_its_ring(tmp_path: Path) -> None:
    first = Dashboard(HistoryRing(tmp_path / "ring"))
    publish(first, NOW)
    again = Dashboard(HistoryRing(tmp_path / "ring"))
    publish(again, NOW + 10)  # within the minute of the last sample before the restart: not sampled
    publish(again, NOW + 60)
    assert [s.time for s in again.history.samples()] == [NOW, NOW + 60]
