"""`dashboard` in [settings]: off unless configured, a yes/no, and named when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from vacd.config import Settings
from vacd.configparse import parse_config
from vacd.errors import ConfigErrors
from vacd.paths import Paths

BASE = """[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
"""


def settings_of(text: str, tmp_path: Path) -> Settings:
    return parse_config([("/etc/vac.conf", text)], host_fqdn="f1.example.com", host_cpu_count=2,
                        paths=Paths.from_prefix(str(tmp_path))).settings


def test_the_dashboard_is_off_unless_configured(tmp_path: Path) -> None:
    assert settings_of(BASE, tmp_path).dashboard is False


def test_the_dashboard_is_switched_on_with_a_boolean_beside_metrics_address(tmp_path: Path) -> None:
    settings = settings_of(BASE + "metrics_address = 127.0.0.1:9100\ndashboard = true\n", tmp_path)
    assert settings.dashboard is True and settings.metrics_address == "127.0.0.1:9100"


def test_a_dashboard_value_that_is_not_a_boolean_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as raised:
        settings_of(BASE + "dashboard = sometimes\n", tmp_path)
    assert "dashboard" in str(raised.value)


def test_the_dashboard_without_metrics_address_is_a_warning_naming_both(tmp_path: Path) -> None:
    config = parse_config([("/etc/vac.conf", BASE + "dashboard = yes\n")], host_fqdn="f1.example.com",
                          host_cpu_count=2, paths=Paths.from_prefix(str(tmp_path)))
    assert config.settings.dashboard is True
    assert [warning for warning in config.warnings if "dashboard" in warning and "metrics_address" in warning]
