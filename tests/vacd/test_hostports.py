"""vacd.hostports: every port vacd listens on is checked, and a taken one is named with its holder."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Iterator

import pytest

from vacd.config import Settings
from vacd.hostports import IP_FREEBIND, busy_ports, needed_endpoints


def free_port(kind: int) -> int:
    """A port nobody holds now (the kernel's choice, released at once)."""
    probe = socket.socket(socket.AF_INET, kind)
    try:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
    finally:
        probe.close()


def settings_with(**fields: object) -> Settings:
    base = Settings(vac_space="vac01.example.com", factory_name="f1.example.com", total_processors=2,
                    host_processors=2, gocdb_sitename="UKI-TEST", libvirt_uri="test:///default",
                    vacquery_bind_address="127.0.0.1", vacquery_port=free_port(socket.SOCK_DGRAM))
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture
def udp_holder() -> Iterator[socket.socket]:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        yield holder
    finally:
        holder.close()


def test_free_ports_are_no_problem_and_the_check_leaves_them_free() -> None:
    settings = settings_with(metrics_address=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}")
    assert busy_ports(settings) == []
    # Nothing stays bound: vacd (here the test) can take each port at once.
    responder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    metrics = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        responder.bind(("127.0.0.1", settings.vacquery_port))
        metrics.bind(("127.0.0.1", int(str(settings.metrics_address).rpartition(":")[2])))
    finally:
        responder.close()
        metrics.close()


def test_a_taken_responder_port_is_named_with_its_setting_and_holder(udp_holder: socket.socket) -> None:
    port = udp_holder.getsockname()[1]
    problems = busy_ports(settings_with(vacquery_port=port))
    assert problems == [f"cannot listen for VacQuery on 127.0.0.1 port {port} (UDP): in use by pid {os.getpid()} "
                        f"({_own_process_name()}) on 127.0.0.1 (vacquery_bind_address, vacquery_port in [settings])"]


def test_a_holder_on_the_wildcard_address_takes_the_port_on_every_address(udp_holder: socket.socket) -> None:
    port = udp_holder.getsockname()[1]
    problems = busy_ports(settings_with(vacquery_bind_address="0.0.0.0", vacquery_port=port))
    assert len(problems) == 1 and f"in use by pid {os.getpid()}" in problems[0]


def test_the_guest_api_ports_are_checked_on_both_guest_addresses_unless_the_test_driver_serves_none() -> None:
    assert [(e.protocol, e.address) for e in needed_endpoints(settings_with())[0]] == [("udp", "127.0.0.1")]
    real = settings_with(libvirt_uri="qemu:///system", metadata_port=8080)
    assert [(e.protocol, e.address, e.port) for e in needed_endpoints(real)[0]] == [
        ("udp", "127.0.0.1", real.vacquery_port),
        ("tcp", "169.254.169.254", 8080),
        ("tcp", "169.254.169.253", 8080),
    ]


def test_a_taken_metadata_port_is_found_before_the_address_is_on_any_interface() -> None:
    # Vac 03's vacd-metadata holds 169.254.169.254:80; here a test socket on a free port stands in.
    # IP_FREEBIND: the address need not exist, as the guest API binds it before the bridge has it.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    holder.bind(("169.254.169.254", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        problems = busy_ports(settings_with(libvirt_uri="qemu:///system", metadata_port=port))
    finally:
        holder.close()
    assert problems == [f"cannot listen for the guests' metadata on 169.254.169.254 port {port} (TCP): in use by "
                        f"pid {os.getpid()} ({_own_process_name()}) on 169.254.169.254 (metadata_port in [settings])"]


def test_a_taken_metrics_port_and_a_malformed_metrics_address_are_problems() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        problems = busy_ports(settings_with(metrics_address=f"127.0.0.1:{port}"))
    finally:
        holder.close()
    assert len(problems) == 1
    assert problems[0].startswith(f"cannot listen for metrics on 127.0.0.1 port {port} (TCP): in use by pid")
    assert problems[0].endswith("(metrics_address in [settings])")
    assert busy_ports(settings_with(metrics_address="localhost")) == [
        "metrics_address 'localhost': expected host:port"]


def _own_process_name() -> str:
    import psutil

    return str(psutil.Process(os.getpid()).name())
