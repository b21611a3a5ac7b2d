"""vacd.metrics on prometheus_client 0.13.1, EPEL 9's python3-prometheus_client (issue 12 item 1).

0.13.1 has no `prometheus_client.registry.Collector` (0.14 added it), and importing it made
vacd.metrics, so vacd with `metrics_address` set, fail to start. The test takes the class
away from whatever release is installed, in a fresh interpreter (vacd.metrics binds the
name at import), so the fallback is checked on every run, not only in the EL9 venv.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

WITHOUT_COLLECTOR = """
import prometheus_client.registry
if hasattr(prometheus_client.registry, "Collector"):
    del prometheus_client.registry.Collector  # as in prometheus_client 0.13.1
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from vacd.metrics import FactoryMetrics

registry = CollectorRegistry()
metrics = FactoryMetrics(registry, clock=lambda: 1000.0)
metrics.observe_status({"time": 1000, "heartbeats": {"factory": 990.0}})
print(generate_latest(registry).decode())
"""


@pytest.mark.allow_commands(sys.executable)
def test_heartbeat_ages_are_served_by_a_prometheus_client_without_a_collector_class() -> None:
    completed = subprocess.run([sys.executable, "-c", WITHOUT_COLLECTOR], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert 'vac_heartbeat_age_seconds{component="factory"} 10.0' in completed.stdout
