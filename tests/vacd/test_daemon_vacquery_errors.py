"""vacd still reports vacquery's deliberate errors as an admin's message (issue 9 item 1).

vacquery's errors no longer derive from vacd.errors.VacError (vacquery imports nothing from
vacd), so vacd catches `VacqueryError` beside `VacError` where a vacquery call may fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vacd.errors import VacError, VacqueryError
from vacquery.errors import AuthRejected, KeyFileError, MalformedDatagram

REPOSITORY = Path(__file__).resolve().parents[2]


def test_vacquerys_errors_share_vacquerys_base_and_vacd_re_exports_it() -> None:
    assert all(issubclass(error, VacqueryError) for error in (AuthRejected, KeyFileError, MalformedDatagram))
    assert not issubclass(VacqueryError, VacError)


@pytest.mark.allow_commands(sys.executable)
def test_vacd_with_an_unreadable_vacquery_key_file_stops_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    missing_key = tmp_path / "etc/vac-vacquery.key"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vac.conf").write_text(
        "[settings]\nvac_space = vac01.example.com\nfactory_name = f1.example.com\nhost_processors = 4\n"
        "libvirt_uri = test:///default\nvacquery_port = 0\nvacquery_bind_address = 127.0.0.1\n"
        f"vacquery_key_file = {missing_key}\n"
    )
    result = subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=60)
    assert result.returncode == 1
    assert f"vacd: {missing_key}: cannot read VacQuery key" in result.stderr
    assert "Traceback" not in result.stderr
