"""Secrets are never logged or shown (issue 11 item 6): tokens, the VacQuery key, proxy keys.

A factory holds three kinds: user_data_option_* values (tokens, passwords), the site's
VacQuery key (vacquery_key_file) and the X.509 key proxies are made from (x509key.pem of a
user_data_proxy machinetype). `vacd --check-config` output and vacd's log go to the
journal under vacd.service, which more users than root may read. Each test plants secrets
with unmistakable values and reads everything vacd printed, at DEBUG, for them.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vacd.config import SECRET_OPTION_PREFIXES

REPOSITORY = Path(__file__).resolve().parents[2]
SETTINGS_TOKEN = "settings-token-4f1d9c"
MACHINETYPE_TOKEN = "machinetype-password-8e27"
VACQUERY_KEY = "site-vacquery-key-5a0b3e71c2"


def proxy_issuer(directory: Path) -> bytes:
    """x509cert.pem and x509key.pem for a user_data_proxy machinetype; returns the key's PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lhcb pilot")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "x509cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "x509key.pem").write_bytes(key_pem)
    (directory / "x509key.pem").chmod(0o600)
    return key_pem


def factory_with_secrets(prefix: Path) -> list[str]:
    """A factory on libvirt's test driver whose machines get every kind of secret; the secrets."""
    machinetype = prefix / "var/lib/vac/machinetypes/lhcb"
    key_pem = proxy_issuer(machinetype)
    (machinetype / "files").mkdir()
    (machinetype / "files/root.img").write_bytes(b"\0" * 65536)
    (machinetype / "files/user_data").write_text(
        "token=##user_data_option_token##\npassword=##user_data_option_password##\n"
        "##user_data_option_x509_proxy##\n")
    key_file = prefix / "etc/vac-vacquery.key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(VACQUERY_KEY + "\n")
    key_file.chmod(0o600)
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 2
libvirt_uri = test:///default
vacquery_port = 0
vacquery_bind_address = 127.0.0.1
metadata_port = 0
# The test is about secrets, not load: a busy test machine must not hold creations back.
overload_per_processor = 1000
vacquery_key_file = {key_file}
user_data_option_token = {SETTINGS_TOKEN}

[machinetype lhcb]
target_share = 1
root_image = root.img
user_data = user_data
user_data_proxy = true
user_data_option_password = {MACHINETYPE_TOKEN}
""")
    key_body = key_pem.decode().splitlines()[1]  # a line of base64 from inside the PEM block
    return [SETTINGS_TOKEN, MACHINETYPE_TOKEN, VACQUERY_KEY, key_body, "PRIVATE KEY"]


def vacd(prefix: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), *arguments],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=120)


@pytest.mark.allow_commands(sys.executable)
def test_check_config_at_debug_shows_no_token_vacquery_key_or_proxy_key(tmp_path: Path) -> None:
    secrets = factory_with_secrets(tmp_path)
    checked = vacd(tmp_path, "--check-config", "--stderr", "--log-level", "DEBUG")
    assert checked.returncode == 0, checked.stderr
    assert "user_data_option_token = ********" in checked.stdout
    assert "user_data_option_password = ********" in checked.stdout
    assert f"vacquery_key_file = {tmp_path}/etc/vac-vacquery.key" in checked.stdout
    for secret in secrets:
        assert secret not in checked.stdout + checked.stderr, secret


@pytest.mark.allow_commands(sys.executable)
def test_a_pass_that_creates_machines_logs_no_secret_at_debug_and_keeps_user_data_root_only(tmp_path: Path) -> None:
    secrets = factory_with_secrets(tmp_path)
    log_path = tmp_path / "vacd.stderr"
    with log_path.open("w") as log_file:
        daemon = subprocess.Popen([sys.executable, "-m", "vacd.daemon", "--prefix", str(tmp_path), "--stderr",
                                   "--log-level", "DEBUG"], stdin=subprocess.DEVNULL, stdout=log_file,
                                  stderr=subprocess.STDOUT, cwd=REPOSITORY)
    try:
        deadline = time.monotonic() + 60
        while "created machine" not in log_path.read_text() and daemon.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    log = log_path.read_text()
    assert "created machine" in log, log[-3000:]
    for secret in secrets:
        assert secret not in log, secret
    # The machines' user_data holds the tokens and a proxy's key, as it must: root's alone.
    user_data_files = sorted((tmp_path / "var/lib/vac/machines").glob("*/user_data"))
    assert user_data_files
    for user_data in user_data_files:
        assert SETTINGS_TOKEN in user_data.read_text() and "PRIVATE KEY" in user_data.read_text()
        assert user_data.stat().st_mode & 0o077 == 0, user_data
    # Nothing else vacd wrote holds a secret (status.json, machine.json, heartbeats, logs).
    planted = {tmp_path / "etc/vac.conf", tmp_path / "etc/vac-vacquery.key",
               tmp_path / "var/lib/vac/machinetypes/lhcb/x509key.pem",
               tmp_path / "var/lib/vac/machinetypes/lhcb/files/user_data", log_path, *user_data_files}
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in planted:
            text = path.read_bytes().decode(errors="replace")
            assert not [secret for secret in secrets if secret in text], path


# Lines vacd cannot read, and the line number of the error: quoted without their values.
UNREADABLE_SECRET_LINES = [
    ("{option}token = a-secret-token-1e6a\n", 1),  # before any [section]
    ("{option}TOKEN: a-secret-token-1e6a\n", 1),
    ("[settings]\n{option}token a-secret-token-1e6a\n", 2),  # '=' forgotten
    ("[settings]\nvac_space = v.example.com\n{option}token\ta-secret-token-1e6a\n", 3),
]


@pytest.mark.parametrize(("text", "line_number"), UNREADABLE_SECRET_LINES)
@pytest.mark.parametrize("option", SECRET_OPTION_PREFIXES)
@pytest.mark.allow_commands(sys.executable)
def test_a_line_vacd_cannot_read_is_quoted_without_its_secret_value(tmp_path: Path, text: str, line_number: int,
                                                                    option: str) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vac.conf").write_text(text.format(option=option))
    checked = vacd(tmp_path, "--check-config", "--stderr")
    assert checked.returncode == 1
    assert "a-secret-token-1e6a" not in checked.stdout + checked.stderr
    # The error still points at the line and the option to fix.
    assert f"{tmp_path}/etc/vac.conf:{line_number}:" in checked.stderr
    assert option in checked.stderr.lower() and "********" in checked.stderr


@pytest.mark.allow_commands(sys.executable)
def test_a_vacquery_key_too_short_is_refused_by_its_length_not_its_text(tmp_path: Path) -> None:
    factory_with_secrets(tmp_path)
    (tmp_path / "etc/vac-vacquery.key").write_text("short-key-93\n")
    checked = vacd(tmp_path, "--check-config", "--stderr")
    assert checked.returncode == 1
    assert f"{tmp_path}/etc/vac-vacquery.key: VacQuery key has 12 bytes" in checked.stderr
    assert "short-key-93" not in checked.stdout + checked.stderr
