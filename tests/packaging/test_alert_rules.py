"""etc/prometheus/vac-alerts.yml: valid rules, alerts that fire when they should, and installed.

`promtool check rules` checks the file as shipped. `promtool test rules` then runs each
alert on made-up series: it fires for the trouble it names, after its `for`, and stays
quiet for a healthy factory. promtool compares annotations too, so those scenarios run on
a copy without them (the wording is for people; the expressions, durations and labels are
what is tested). promtool comes from Debian's `prometheus` package (tools/install-deps).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.packaging.test_spec import covered, files_entries, make_install_data
from vacd.metrics import FactoryMetrics

REPOSITORY = Path(__file__).resolve().parents[2]
RULES = REPOSITORY / "etc/prometheus/vac-alerts.yml"
INSTALLED_RULES = "/usr/share/vac/prometheus/vac-alerts.yml"
INSTANCE = 'instance="f1.example.com:9100"'

# One promtool rule test per alert: the input series (1-minute steps) and, at each
# evaluation time, the alerts expected (the labels each carries besides alertname).
SCENARIOS: dict[str, str] = {
    "VacConfigError": f"""
    input_series:
      - series: 'vac_config_error{{{INSTANCE}}}'
        values: '0 0 1x10'
    alert_rule_test:
      - {{eval_time: 2m, alertname: VacConfigError, exp_alerts: []}}
      - eval_time: 4m
        alertname: VacConfigError
        exp_alerts:
          - exp_labels: {{severity: critical, {INSTANCE.replace('=', ': ')}}}
""",
    "VacFactoryError": f"""
    input_series:
      - series: 'vac_factory_error{{{INSTANCE}}}'
        values: '1x30'
    alert_rule_test:
      - {{eval_time: 10m, alertname: VacFactoryError, exp_alerts: []}}
      - eval_time: 20m
        alertname: VacFactoryError
        exp_alerts:
          - exp_labels: {{severity: warning, {INSTANCE.replace('=', ': ')}}}
""",
    "VacPassStale": f"""
    input_series:
      # A loop that stopped completing passes at 0m: the age grows a minute a minute.
      - series: 'vac_heartbeat_age_seconds{{component="factory",{INSTANCE}}}'
        values: '30+60x20'
      # Another factory that completes its passes, and a responder age that is no pass.
      - series: 'vac_heartbeat_age_seconds{{component="factory",instance="f2.example.com:9100"}}'
        values: '30x20'
      - series: 'vac_heartbeat_age_seconds{{component="responder",instance="f2.example.com:9100"}}'
        values: '5000x20'
    alert_rule_test:
      - {{eval_time: 9m, alertname: VacPassStale, exp_alerts: []}}
      - eval_time: 13m
        alertname: VacPassStale
        exp_alerts:
          - exp_labels: {{severity: critical, component: factory, {INSTANCE.replace('=', ': ')}}}
""",
    "VacListingFault": f"""
    input_series:
      - series: 'vac_fault{{kind="listing",{INSTANCE}}}'
        values: '1x10'
      - series: 'vac_fault{{kind="disk",{INSTANCE}}}'
        values: '1x10'
      - series: 'vac_fault{{kind="config",{INSTANCE}}}'
        values: '0x10'
    alert_rule_test:
      - {{eval_time: 3m, alertname: VacListingFault, exp_alerts: []}}
      - eval_time: 6m
        alertname: VacListingFault
        exp_alerts:
          - exp_labels: {{severity: warning, kind: listing, {INSTANCE.replace('=', ': ')}}}
""",
    "VacDiskGate": f"""
    input_series:
      - series: 'vac_fault{{kind="disk",{INSTANCE}}}'
        values: '0 1x10'
      - series: 'vac_fault{{kind="disk",instance="f2.example.com:9100"}}'
        values: '0x10'
    alert_rule_test:
      - {{eval_time: 4m, alertname: VacDiskGate, exp_alerts: []}}
      - eval_time: 7m
        alertname: VacDiskGate
        exp_alerts:
          - exp_labels: {{severity: warning, kind: disk, {INSTANCE.replace('=', ': ')}}}
""",
    "VacSlotErrors": f"""
    input_series:
      # One create error at 3m, then none: the alert fires, then clears after 15 minutes.
      - series: 'vac_slot_errors_total{{step="create",{INSTANCE}}}'
        values: '0 0 0 1x30'
      - series: 'vac_slot_errors_total{{step="observe",{INSTANCE}}}'
        values: '0x33'
    alert_rule_test:
      - {{eval_time: 2m, alertname: VacSlotErrors, exp_alerts: []}}
      - eval_time: 5m
        alertname: VacSlotErrors
        exp_alerts:
          - exp_labels: {{severity: warning, step: create, {INSTANCE.replace('=', ': ')}}}
      - {{eval_time: 25m, alertname: VacSlotErrors, exp_alerts: []}}
""",
    "VacCensusIncomplete": f"""
    input_series:
      - series: 'vac_census_heard_factories{{{INSTANCE}}}'
        values: '2x40'
      - series: 'vac_census_expected_factories{{{INSTANCE}}}'
        values: '3x40'
      - series: 'vac_census_heard_factories{{instance="f2.example.com:9100"}}'
        values: '3x40'
      - series: 'vac_census_expected_factories{{instance="f2.example.com:9100"}}'
        values: '3x40'
    alert_rule_test:
      - {{eval_time: 20m, alertname: VacCensusIncomplete, exp_alerts: []}}
      - eval_time: 35m
        alertname: VacCensusIncomplete
        exp_alerts:
          - exp_labels: {{severity: warning, {INSTANCE.replace('=', ': ')}}}
""",
    "VacGuestServerRestarting": f"""
    input_series:
      # One restart at 2m (a crash is restarted once: no alert), then a crash loop from 20m.
      - series: 'vac_guest_server_restarts_total{{{INSTANCE}}}'
        values: '0 0 1x18 2 3 4 5 6x20'
      - series: 'vac_guest_server_restarts_total{{instance="f2.example.com:9100"}}'
        values: '0x45'
    alert_rule_test:
      - {{eval_time: 10m, alertname: VacGuestServerRestarting, exp_alerts: []}}
      - eval_time: 25m
        alertname: VacGuestServerRestarting
        exp_alerts:
          - exp_labels: {{severity: warning, {INSTANCE.replace('=', ': ')}}}
""",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE)


def without_annotations(text: str) -> str:
    """The rules with every `annotations:` block left out (its lines are indented deeper)."""
    kept: list[str] = []
    block_indent = None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and (not line.strip() or indent > block_indent):
            continue
        block_indent = indent if line.strip() == "annotations:" else None
        if block_indent is None:
            kept.append(line)
    return "\n".join(kept) + "\n"


@pytest.mark.allow_commands("promtool")
def test_promtool_check_rules_accepts_the_shipped_alerts_file() -> None:
    completed = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in completed.stdout


def test_every_alert_has_a_scenario_and_the_asked_for_troubles_are_covered() -> None:
    assert sorted(alert_names()) == sorted(SCENARIOS)
    assert {"VacFactoryError", "VacConfigError", "VacPassStale", "VacCensusIncomplete", "VacSlotErrors",
            "VacDiskGate"} <= set(alert_names())


@pytest.mark.allow_commands("promtool")
@pytest.mark.parametrize("alert", sorted(SCENARIOS))
def test_alert_fires_after_its_for_on_trouble_and_not_for_a_healthy_factory(tmp_path: Path, alert: str) -> None:
    tool = promtool()
    rules = tmp_path / "vac-alerts.yml"
    rules.write_text(without_annotations(RULES.read_text()))
    assert "annotations" not in rules.read_text() and f"alert: {alert}" in rules.read_text()
    unit_test = tmp_path / "vac-alerts.test.yml"
    unit_test.write_text(f"rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
                         + SCENARIOS[alert])
    completed = subprocess.run([tool, "test", "rules", str(unit_test)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


def test_alert_expressions_use_only_metrics_vacd_exports() -> None:
    registry = CollectorRegistry()
    FactoryMetrics(registry)
    exported = {sample_name for family in registry.collect() for sample_name in
                {family.name, family.name + "_total", family.name + "_info"}}
    expressions = re.findall(r"^\s*expr:\s*(.+)$", RULES.read_text(), re.MULTILINE)
    used = {name for expression in expressions for name in re.findall(r"\bvac_[a-z0-9_]+", expression)}
    assert used and used <= exported, sorted(used - exported)


def test_the_alerts_are_documented_by_name() -> None:
    documented = (REPOSITORY / "docs/metrics.md").read_text()
    for alert in alert_names():
        assert f"`{alert}`" in documented, f"docs/metrics.md does not describe {alert}"


@pytest.mark.allow_commands("make")
def test_make_install_puts_the_alerts_file_where_the_rpm_packages_it(tmp_path: Path) -> None:
    make_install_data(tmp_path, "systemd")
    installed = tmp_path / INSTALLED_RULES.lstrip("/")
    assert installed.read_text() == RULES.read_text()
    entries = [entry for entries in files_entries().values() for entry in entries if not entry.is_doc]
    assert any(covered(INSTALLED_RULES, entry) for entry in entries)
