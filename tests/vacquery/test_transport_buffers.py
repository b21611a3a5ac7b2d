"""vacquery.transport: the socket buffers asked for, what the kernel granted, and the warning
when it granted less (issue 9 item 5). Read-only: the tests never change net.core.rmem_max."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from vacquery import transport
from vacquery.transport import CensusSockets, size_socket_buffers
from vacquery.responder_transport import open_responder_socket

RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


def rmem_max() -> int:
    if not RMEM_MAX.exists():
        pytest.skip("no /proc/sys/net/core/rmem_max (not Linux)")
    return int(RMEM_MAX.read_text())


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_short_buffer_warned", set())


def test_a_buffer_above_rmem_max_is_granted_short_and_the_warning_names_the_sysctl(
        caplog: pytest.LogCaptureFixture) -> None:
    asked = 4 * rmem_max()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, caplog.at_level(logging.DEBUG, "vacquery"):
        granted = size_socket_buffers(sock, "census", asked)
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert granted < asked
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"asked={asked} granted={granted}" in warnings[0] and "net.core.rmem_max" in warnings[0]


def test_a_short_grant_warns_once_per_role_then_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    asked = 4 * rmem_max()
    with caplog.at_level(logging.DEBUG, "vacquery"):
        for role in ("census", "census", "census", "responder"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                size_socket_buffers(sock, role, asked)
    warned = [record.getMessage().split()[1] for record in caplog.records if record.levelno == logging.WARNING]
    assert warned == ["census", "responder"]


def test_a_buffer_within_rmem_max_is_granted_in_full_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    asked = min(65536, rmem_max())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, caplog.at_level(logging.DEBUG, "vacquery"):
        granted = size_socket_buffers(sock, "census", asked)
    assert granted >= asked
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert f"asked={asked} granted={granted}" in caplog.text


def test_census_sockets_record_the_grant_and_none_leaves_the_kernel_default() -> None:
    default = int(Path("/proc/sys/net/core/rmem_default").read_text()) if RMEM_MAX.exists() else None
    small = min(65536, rmem_max())
    with CensusSockets(buffer_bytes=small) as sized, CensusSockets(buffer_bytes=None) as untouched:
        sized.for_family(socket.AF_INET)
        untouched.for_family(socket.AF_INET)
        assert sized.receive_buffer_bytes[socket.AF_INET] >= small
        # Linux reports the doubled figure it keeps; the default is reported as set.
        assert untouched.receive_buffer_bytes[socket.AF_INET] == default


def test_responder_socket_asks_for_vac_16_mib(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "vacquery"):
        sock = open_responder_socket("127.0.0.1", 0)
    try:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        sock.close()
    assert f"asked={transport.SOCKET_BUFFER_BYTES} granted={granted}" in caplog.text
    assert granted >= min(transport.SOCKET_BUFFER_BYTES, rmem_max())
