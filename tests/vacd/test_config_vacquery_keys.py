"""`[settings] vacquery_key_file`: the current key, then optionally the previous one (issue 9 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vacd.config import effective_config_text
from vacd.configparse import parse_config
from vacd.errors import ConfigErrors
from vacd.paths import Paths

SETTINGS = "[settings]\nvac_space = vac01.example.com\nfactory_name = f1.example.com\nhost_processors = 2\n"


def parse(text: str) -> tuple[str, ...]:
    config = parse_config([("/etc/vac.conf", text)], host_fqdn="f1.example.com", host_cpu_count=2,
                          paths=Paths(Path("/prefix")))
    return config.settings.vacquery_key_file


def test_vacquery_key_file_takes_the_current_key_then_the_previous_one() -> None:
    assert parse(SETTINGS) == ()
    assert parse(SETTINGS + "vacquery_key_file = /etc/vac-new.key\n") == ("/etc/vac-new.key",)
    assert parse(SETTINGS + "vacquery_key_file = /etc/vac-new.key /etc/vac.key\n") == ("/etc/vac-new.key",
                                                                                       "/etc/vac.key")


def test_vacquery_key_file_refuses_a_third_key_and_relative_paths() -> None:
    with pytest.raises(ConfigErrors, match="at most 2 key files"):
        parse(SETTINGS + "vacquery_key_file = /etc/a.key /etc/b.key /etc/c.key\n")
    with pytest.raises(ConfigErrors, match="absolute path"):
        parse(SETTINGS + "vacquery_key_file = /etc/a.key b.key\n")


def test_both_key_files_survive_the_effective_configuration() -> None:
    text = SETTINGS + "vacquery_key_file = /etc/vac-new.key /etc/vac.key\n"
    config = parse_config([("/etc/vac.conf", text)], host_fqdn="f1.example.com", host_cpu_count=2,
                          paths=Paths(Path("/prefix")))
    effective = effective_config_text(config)
    assert "vacquery_key_file = /etc/vac-new.key /etc/vac.key" in effective
    assert parse(effective) == ("/etc/vac-new.key", "/etc/vac.key")
