"""VacMon datagrams reach a real UDP collector on loopback; bad collectors never raise."""

from __future__ import annotations

import json
import socket
from typing import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.vacmon import Hostport, VacmonSender


@pytest.fixture
def collector() -> Iterator[socket.socket]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5.0)
    try:
        yield listener
    finally:
        listener.close()


def hostport_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()
    return f"{host}:{port}"


def receive(listener: socket.socket, count: int) -> list[dict[str, object]]:
    return [json.loads(listener.recv(65536)) for _ in range(count)]


def status(message_type: str, **fields: object) -> bytes:
    return json.dumps({"message_type": message_type, "cookie": "0", **fields}).encode()


def test_each_pass_sends_factory_status_and_one_machinetype_status_per_machinetype(collector: socket.socket) -> None:
    with VacmonSender([hostport_of(collector)]) as sender:
        sent = sender.send_pass(
            status("factory_status"),
            [status("machinetype_status", machinetype="lhcb"), status("machinetype_status", machinetype="atlas")],
        )

    assert sent == 3
    messages = receive(collector, 3)
    assert [message["message_type"] for message in messages] == ["factory_status", "machinetype_status", "machinetype_status"]
    assert [message.get("machinetype") for message in messages[1:]] == ["lhcb", "atlas"]


def test_finished_machine_sends_one_machine_status_with_its_message(collector: socket.socket) -> None:
    with VacmonSender([hostport_of(collector)]) as sender:
        sender.send_machine_finished(status("machine_status", state="Shut down", shutdown_message="300 Nothing to do"))

    [message] = receive(collector, 1)
    assert (message["state"], message["shutdown_message"]) == ("Shut down", "300 Nothing to do")


def test_every_collector_gets_every_datagram(collector: socket.socket) -> None:
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.2", 0))
    second.settimeout(5.0)
    try:
        with VacmonSender([hostport_of(collector), hostport_of(second)]) as sender:
            assert sender.send_pass(status("factory_status"), [status("machinetype_status")]) == 4
        assert len(receive(collector, 2)) == 2
        assert len(receive(second, 2)) == 2
    finally:
        second.close()


def test_a_refusing_collector_does_not_stop_the_others(collector: socket.socket) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_hostport = hostport_of(closed)
    closed.close()
    with VacmonSender([closed_hostport, hostport_of(collector)]) as sender:
        for _ in range(3):
            sender.send_pass(status("factory_status"), [])

    assert len(receive(collector, 3)) == 3


def test_hostport_parses_names_ipv4_and_bracketed_ipv6() -> None:
    assert Hostport.parse("vacmon.example.org:8884") == Hostport("vacmon.example.org", 8884)
    assert Hostport.parse("127.0.0.1:9") == Hostport("127.0.0.1", 9)
    assert Hostport.parse("[::1]:8884") == Hostport("::1", 8884)
    assert str(Hostport("::1", 8884)) == "[::1]:8884"


@pytest.mark.parametrize("bad", ["vacmon.example.org", ":8884", "host:0", "host:99999", "[::1]8884", "host:port", "[]:80"])
def test_hostport_rejects_malformed_values(bad: str) -> None:
    with pytest.raises(ValueError, match="vacmon_hostport"):
        Hostport.parse(bad)


@given(st.text())
def test_hostport_parse_gives_a_hostport_or_value_error(raw_text: str) -> None:
    try:
        hostport = Hostport.parse(raw_text)
    except ValueError:
        return
    assert 0 < hostport.port < 65536 and hostport.host
