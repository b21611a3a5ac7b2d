"""etc/grafana-dashboard.json: valid for Grafana's dashboard schema, sound PromQL, and the page's series.

No Grafana is installable here (Debian has no `grafana` package), so the dashboard is
checked against Grafana's schema as Grafana Labs' generated models encode it (the
grafana-foundation-sdk package, Python 3.11 and later): decoded through them, with the
panel and Prometheus query plugins registered, and encoded back, nothing may be lost or
changed, every panel's options and every query must decode into its plugin's typed model.
Every expression must parse (`promtool check rules`), and the share-error panel must give
the number the dashboard page gives for the same space (`promtool test rules`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vacd.dashboard.view import share_error

REPOSITORY = Path(__file__).resolve().parents[2]
DASHBOARD = REPOSITORY / "etc/grafana-dashboard.json"


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def expressions() -> dict[str, str]:
    """Each panel target's PromQL with Grafana's variables given values, by panel title and refId."""
    return {
        f"{panel['title']} {target['refId']}": target["expr"].replace("$instance", ".*").replace("$__rate_interval", "5m")
        for panel in dashboard()["panels"] for target in panel["targets"]
    }


def losses(original: Any, round_tripped: Any, path: str = "") -> list[str]:
    if isinstance(original, dict) and isinstance(round_tripped, dict):
        found = [f"{path}/{key}: not in Grafana's schema" for key in original if key not in round_tripped]
        return found + [loss for key in original if key in round_tripped
                        for loss in losses(original[key], round_tripped[key], f"{path}/{key}")]
    if isinstance(original, list) and isinstance(round_tripped, list) and len(original) == len(round_tripped):
        return [loss for index, (a, b) in enumerate(zip(original, round_tripped))
                for loss in losses(a, b, f"{path}[{index}]")]
    return [] if original == round_tripped else [f"{path}: {original!r} became {round_tripped!r}"]


def test_the_dashboard_is_valid_for_grafanas_dashboard_schema() -> None:
    plugins = pytest.importorskip("grafana_foundation_sdk.cog.plugins", reason="grafana-foundation-sdk needs Python 3.11")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.runtime import UnknownDataquery
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel

    plugins.register_default_plugins()
    original = dashboard()
    model = Dashboard.from_json(original)
    round_tripped = json.loads(json.dumps(model, cls=JSONEncoder))

    assert losses(original, round_tripped) == []
    assert model.panels
    for panel in model.panels:
        assert isinstance(panel, Panel), panel
        assert not isinstance(panel.options, dict), f"{panel.title}: options of an unknown panel type {panel.type!r}"
        for target in panel.targets or ():
            assert not isinstance(target, UnknownDataquery), f"{panel.title}: query not decoded as Prometheus's"
    ids = [panel.id_val for panel in model.panels]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_the_series_the_page_plots() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    assert {"Running processors by machinetype (space)", "Share error (space)", "Census completeness",
            "Creations and destructions", "Outcomes by shutdown code"} <= titles


@pytest.mark.allow_commands("promtool")
def test_every_expression_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = [{"record": f"vac:panel_{index}", "expr": expression} for index, expression in enumerate(expressions().values())]
    rule_file = tmp_path / "panels.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "panels", "rules": rules}]}))
    completed = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.allow_commands("promtool")
def test_the_share_error_panel_gives_the_pages_number(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    expression = expressions()["Share error (space) A"]
    # Two factories: f1 runs 30 HS06 of lhcb and 10 of atlas, f2 20 of atlas; targets 3:1 on both.
    running = {("f1", "lhcb"): 30.0, ("f1", "atlas"): 10.0, ("f2", "lhcb"): 0.0, ("f2", "atlas"): 20.0}
    targets = {"lhcb": 0.75, "atlas": 0.25}
    hs06 = {name: sum(value for (_, machinetype), value in running.items() if machinetype == name) for name in targets}
    expected = share_error(targets, {name: value / sum(hs06.values()) for name, value in hs06.items()})
    series = [
        {"series": f'vac_machinetype_hs06{{instance="{factory}",machinetype="{machinetype}"}}', "values": f"{value}x5"}
        for (factory, machinetype), value in running.items()
    ] + [
        {"series": f'vac_machinetype_target_share{{instance="{factory}",machinetype="{machinetype}"}}', "values": f"{share}x5"}
        for factory in ("f1", "f2") for machinetype, share in targets.items()
    ]
    (tmp_path / "rules.yml").write_text(json.dumps(
        {"groups": [{"name": "page", "rules": [{"record": "vac:share_error", "expr": expression}]}]}))
    (tmp_path / "test.yml").write_text(json.dumps({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": "vac:share_error", "eval_time": "2m", "exp_samples": [{"labels": "vac:share_error", "value": expected}]}
        ]}],
    }))
    completed = subprocess.run([promtool, "test", "rules", "test.yml"], capture_output=True, text=True, timeout=60,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert expected == pytest.approx(0.25)
