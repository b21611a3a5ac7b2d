"""The guest servers' event loop: uvloop where installed, asyncio's own otherwise, or as the admin says."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from vacd.serviceloop import ServiceLoop
from vacd.eventloop import (ASYNCIO, AUTO, EVENT_LOOP_VARIABLE, UVLOOP, EventLoopUnavailable, chosen_kind,
                            new_event_loop, uvloop_factory)

needs_uvloop = pytest.mark.skipif(uvloop_factory() is None, reason="uvloop is not installed")


def test_asyncio_is_chosen_when_asked_for_even_where_uvloop_is_installed() -> None:
    assert chosen_kind(ASYNCIO) == ASYNCIO


def test_auto_takes_uvloop_exactly_when_it_is_installed() -> None:
    assert chosen_kind(AUTO) == (UVLOOP if uvloop_factory() is not None else ASYNCIO)


def test_the_environment_variable_chooses_when_no_choice_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, " AsyncIO ")
    assert chosen_kind() == ASYNCIO
    monkeypatch.setenv(EVENT_LOOP_VARIABLE, "")
    assert chosen_kind() == chosen_kind(AUTO)


def test_an_unknown_choice_is_refused_naming_the_variable_and_the_choices() -> None:
    with pytest.raises(EventLoopUnavailable, match=r"VACD_EVENT_LOOP='tokio' is not one of auto, asyncio, uvloop"):
        chosen_kind("tokio")


@pytest.mark.allow_commands(sys.executable)
def test_without_uvloop_auto_falls_back_and_an_explicit_uvloop_is_refused() -> None:
    """A plain EL9 host: the import fails (here blocked in a fresh interpreter)."""
    script = (
        "import sys; sys.modules['uvloop'] = None\n"
        "from vacd.eventloop import chosen_kind, EventLoopUnavailable, uvloop_factory\n"
        "assert uvloop_factory() is None\n"
        "print(chosen_kind('auto'))\n"
        "try:\n"
        "    chosen_kind('uvloop')\n"
        "except EventLoopUnavailable as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    first, second = result.stdout.splitlines()
    assert first == "asyncio"
    assert "uvloop is not installed" in second and "python3-uvloop" in second


@pytest.mark.parametrize("kind", [ASYNCIO, pytest.param(UVLOOP, marks=needs_uvloop)])
def test_a_service_loop_of_either_kind_serves_a_real_socket(kind: str) -> None:
    services = ServiceLoop("test-eventloop", kind)
    services.start()
    try:
        async def echo_once() -> int:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            return int(server.sockets[0].getsockname()[1])

        port = services.call(echo_once())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hello\n")
            assert client.recv(100) == b"hello\n"
        assert services.is_responsive()
        assert (type(services.loop).__module__.startswith("uvloop")) == (kind == UVLOOP)
    finally:
        services.stop()


def test_an_unknown_kind_of_loop_is_refused() -> None:
    with pytest.raises(EventLoopUnavailable, match="unknown event loop kind 'trio'"):
        new_event_loop("trio")
