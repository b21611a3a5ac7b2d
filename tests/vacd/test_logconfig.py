"""Log line format, reopening on SIGHUP after rotation, syslog through a socket, redaction."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from vacd.logconfig import VacdFormatter, configure_logging, redact, reopen_logs

LINE = re.compile(r"^[A-Z][a-z]{2} [0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} vacd\[(\d+)\]: (\w+) ([\w.]+): (.*)$")
PROXY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nsecretsecret\n-----END RSA PRIVATE KEY-----"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def test_file_lines_have_vac_style_format(tmp_path: Path) -> None:
    log_file = tmp_path / "var/log/vacd"
    configure_logging("file", log_file, "INFO")
    logging.getLogger("vacd.factory").info("created machine name=%s slot=%d", "f1-04.example.com", 4)
    logging.getLogger("vacd.factory").debug("not at INFO")

    [line] = log_file.read_text().splitlines()
    match = LINE.match(line)
    assert match is not None, line
    assert match.groups() == (str(os.getpid()), "INFO", "vacd.factory", "created machine name=f1-04.example.com slot=4")


def test_month_names_are_english_whatever_the_locale() -> None:
    assert re.fullmatch(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d\d \d\d:\d\d:\d\d", VacdFormatter.timestamp(0.0))


def test_sighup_reopens_the_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    log_file = tmp_path / "vacd"
    configure_logging("file", log_file, logging.INFO)
    log = logging.getLogger("vacd.daemon")
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: reopen_logs())
    try:
        log.info("before rotation")
        log_file.rename(tmp_path / "vacd.1")
        log.info("after rename, before SIGHUP")
        os.kill(os.getpid(), signal.SIGHUP)
        log.info("after SIGHUP")
    finally:
        signal.signal(signal.SIGHUP, previous)

    rotated = (tmp_path / "vacd.1").read_text()
    assert "before rotation" in rotated and "before SIGHUP" in rotated
    assert [LINE.match(line).group(4) for line in log_file.read_text().splitlines()] == ["after SIGHUP"]  # type: ignore[union-attr]


def test_syslog_destination_sends_to_the_socket_without_a_timestamp() -> None:
    # A short directory: unix socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="vaclog") as directory:
        address = os.path.join(directory, "log")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(5.0)
        try:
            configure_logging("journal", Path("/nonexistent"), "WARNING", syslog_address=address)
            logging.getLogger("vacd.responder").warning("dropped datagram peer=127.0.0.1 reason=wrong_space")
            datagram = listener.recv(4096).decode()
        finally:
            listener.close()
    # <30> would be daemon.info; daemon (3) * 8 + warning (4) = 28.
    assert datagram.rstrip("\x00") == (
        f"<28>vacd[{os.getpid()}]: WARNING vacd.responder: dropped datagram peer=127.0.0.1 reason=wrong_space"
    )


def test_unreachable_syslog_falls_back_to_stderr_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("syslog", tmp_path / "unused", "INFO", syslog_address=str(tmp_path / "no-socket"))
    logging.getLogger("vacd.daemon").info("still logged")

    err = capsys.readouterr().err
    assert "logging to stderr instead of syslog" in err and "still logged" in err


def test_pem_blocks_never_reach_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "vacd"
    configure_logging("file", log_file, "INFO")
    log = logging.getLogger("vacd.guestapi")
    log.info("user_data would have been %s", PROXY)
    try:
        raise ValueError("bad proxy " + PROXY)
    except ValueError:
        log.exception("proxy failed")

    text = log_file.read_text()
    assert "secretsecret" not in text and "BEGIN RSA" not in text
    assert text.count("[redacted PEM block]") >= 2


def test_unterminated_pem_block_is_redacted_to_the_end() -> None:
    assert redact("key: -----BEGIN PRIVATE KEY-----\nabc") == "key: [redacted PEM block]"
    assert redact("no secrets here") == "no secrets here"


def test_configuring_twice_replaces_the_handler(tmp_path: Path) -> None:
    configure_logging("file", tmp_path / "first", "INFO")
    configure_logging("file", tmp_path / "second", "INFO")
    logging.getLogger("vacd").info("once")

    assert (tmp_path / "first").read_text() == ""
    assert len((tmp_path / "second").read_text().splitlines()) == 1


@pytest.mark.parametrize(("destination", "level"), [("kafka", "INFO"), ("file", "LOUD")])
def test_bad_destination_or_level_is_rejected(tmp_path: Path, destination: str, level: str) -> None:
    with pytest.raises(ValueError):
        configure_logging(destination, tmp_path / "vacd", level)
