"""A real guest that Vac 03 started keeps running when vacd replaces Vac 03, and is accounted once (issue 10 "Must show").

The node is set up as Vac 03 leaves it: the state tree Vac 03 writes (tests/vac03tree.py,
from the behaviour reference), Vac 03's metadata server (a stand-in on 169.254.169.254:80
serving the machine's user_data, as vacd-metadata did) and a real guest booted under the name,
UUID, MAC and address Vac 03 gives slot 0. Then "Vac 03 is stopped" (the stand-in goes) and
the real vacd starts. The guest must keep running, become vacd's machine, finish with the
message it puts to vacd's joboutputs server, and get exactly one APEL record; the guest
network must be the one that was there (same bridge, same dnsmasq).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import libvirt
import psutil
import pytest

from tests.integration.conftest import VacNetwork
from tests.integration.test_guest_boots import GuestServers
# `factory`: a RunningFactory in tmp_path, killed and its domains destroyed afterwards.
from tests.integration.test_vacd_real_vms import RunningFactory, factory  # noqa: F401
from tests.vac03tree import write_vac03_machine
from vacd.accounting import parse_message
from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from vacd.network import NETWORK_NAME

pytestmark = [pytest.mark.vm, pytest.mark.slow]

BOOT_DEADLINE_SECONDS = 120.0
# The payload outlives vacd's start and a few of its passes, then reports and powers off.
PAYLOAD = """#!/bin/sh
sleep 25
http-put http://169.254.169.253/joboutputs/shutdown_message "200 Success"
"""


def network_identity(uri: str) -> tuple[str, tuple[int, ...]]:
    """The network's XML and its dnsmasq processes: a replaced network changes both."""
    connection = libvirt.open(uri)
    try:
        network = connection.networkLookupByName(NETWORK_NAME)
        bridge = network.bridgeName()
        xml_text = network.XMLDesc(0)
    finally:
        connection.close()
    dnsmasq = tuple(sorted(
        process.pid for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "dnsmasq" and any(f"{NETWORK_NAME}.conf" in part for part in process.info["cmdline"] or [])
    ))
    return f"{bridge}\n{xml_text}", dnsmasq


def apel_records(prefix: Path) -> list[dict[str, str]]:
    archive = prefix / "var/lib/vac/apel-archive"
    return [record for path in sorted(archive.rglob("*")) if path.is_file() for record in parse_message(path.read_text())]


def test_guest_started_by_vac03_keeps_running_is_adopted_finishes_and_gets_one_apel_record(
    factory: RunningFactory,
    test_guest,  # type: ignore[no-untyped-def]
    vac_network: VacNetwork,
    libvirt_backend: LibvirtBackend,
    guest_spec: Callable[..., MachineSpec],
) -> None:
    factory.configure(test_guest, total_processors=1, machinetypes={"long": {"payload": "sleep 600"}})
    state_dir = factory.prefix / "var/lib/vac"
    now = int(time.time())
    spec = guest_spec(0)
    vac03 = write_vac03_machine(state_dir, factory_name=vac_network.factory_name, ordinal=0, uuid=spec.uuid,
                                machinetype="long", created_time=now - 60, shutdown_time=now + 3600,
                                mb_per_processor=128)
    (vac03.directory / "user_data").write_text(PAYLOAD)
    spec = MachineSpec(**{**spec.__dict__, "machine_dir": vac03.directory})

    vac03_metadata = GuestServers(PAYLOAD)
    vac03_metadata.start()
    try:
        libvirt_backend.create(spec)
        fetched = vac03_metadata.wait_for("GET", "/latest/user-data", time.monotonic() + BOOT_DEADLINE_SECONDS)
        assert fetched is not None and fetched.client_address == spec.ip_address, "the guest never got its user_data"
    finally:
        vac03_metadata.stop()  # Vac 03 is stopped here; the guest runs on
    network_before = network_identity(factory.uri)

    factory.start()
    factory.wait_for("the Vac 03 machine adopted", lambda: any(
        slot["name"] == spec.name and slot["state"] == "Running" and slot["uuid"] == spec.uuid
        for slot in factory.status().get("slots", [])
    ))
    assert factory.running_domains().get(spec.name) == spec.uuid  # the same domain, never restarted
    assert "took over Vac 03 machine" in factory.log_text()

    factory.wait_for("the adopted machine finished", lambda: any(
        record["uuid"] == spec.uuid and record["finished"] is not None for record in factory.records()
    ), timeout=BOOT_DEADLINE_SECONDS)
    [adopted] = [record for record in factory.records() if record["uuid"] == spec.uuid]
    assert (vac03.directory / "joboutputs" / "shutdown_message").read_text().strip() == "200 Success"
    factory.wait_for("its APEL record", lambda: any(r.get("LocalJobId") == spec.uuid for r in apel_records(factory.prefix)))
    time.sleep(6)  # a pass or two more: nothing is accounted twice
    assert [r["LocalJobId"] for r in apel_records(factory.prefix)].count(spec.uuid) == 1
    [record] = [r for r in apel_records(factory.prefix) if r["LocalJobId"] == spec.uuid]
    assert record["StartTime"] == str(now - 60) and record["Queue"] == "long"
    assert adopted["created_time"] == now - 60
    assert "zombie" not in factory.log_text()
    assert network_identity(factory.uri) == network_before
