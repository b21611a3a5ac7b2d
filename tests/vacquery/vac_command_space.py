"""A loopback space for the tests of the `vac` command: real responders, vac.conf, status.json documents.

Shared by tests/vacquery/test_cli.py (the space listings and layouts) and tests/vacd/test_cli.py
(the `vac` entry point and the factory-local verbs) since issue 9 item 1 split the command.
The fixtures `utc` and `space` are imported by name into the test modules that use them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from vacquery.auth import Authenticator
from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Snapshot
from vacquery.responder_transport import ResponderProtocol, start_responder

SPACE = "vac01.example.com"
NOW = 1_700_000_000  # Tue Nov 14 22:13:20 2023 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ---------------------------------------------------------------------- loopback factories


def machine(factory: str, ordinal: int, slots: int, state: MachineState, **fields: Any) -> MachineStatus:
    short, _, domain = factory.partition(".")
    values: dict[str, Any] = dict(
        space=SPACE,
        factory=factory,
        num_machines=slots,
        machine=f"{short}-{ordinal:02d}.{domain}",
        state=state,
        uuid=None,
        created_time=None,
        started_time=None,
        heartbeat_time=None,
        cpu_seconds=0.0,
        cpu_percentage=0.0,
        hs06=0.0,
        machinetype=None,
        shutdown_message=None,
        shutdown_time=None,
        processors=0,
    )
    values.update(fields)
    return MachineStatus(**values)


def snapshot_of(factory: str, slots: int) -> Snapshot:
    now = int(time.time())
    machines = [
        machine(
            factory,
            0,
            slots,
            MachineState.RUNNING,
            uuid="0f1e2d3c-4b5a-4697-8877-665544332211",
            created_time=now - 7300,
            started_time=now - 7200,
            heartbeat_time=now - 10,
            cpu_seconds=13000.0,
            cpu_percentage=97.5,
            hs06=20.0,
            machinetype="lhcb",
            processors=2,
            machine_model="cernvm3",
        )
    ]
    machines += [
        machine(factory, ordinal, slots, MachineState.SHUT_DOWN, machinetype="atlas", shutdown_message="300 Nothing to do")
        for ordinal in range(1, slots)
    ]
    machinetypes = [
        MachinetypeStatus(
            space=SPACE,
            factory=factory,
            num_machinetypes=1,
            machinetype="lhcb",
            running_hs06=20.0,
            num_before_fizzle=0,
            shutdown_message=None,
            shutdown_time=None,
            shutdown_machine=None,
            running_machines=1,
            running_processors=2.0,
        )
    ]
    factory_status = FactoryStatus(
        space=SPACE,
        factory=factory,
        running_processors=2,
        running_machines=1,
        running_hs06=20.0,
        max_processors=slots,
        max_machines=slots,
        max_hs06=float(slots * 10),
        load_average=0.5,
        root_disk_avail_kb=10 * 1024 * 1024,
        daemon_disk_avail_kb=400 * 1024 * 1024,
        mem_used_kb=3 * 1024 * 1024,
        mem_total_kb=16 * 1024 * 1024,
        daemon_version="Vac 04.00.00a1 vacd-responder",
    )
    return Snapshot(tuple(machines), tuple(machinetypes), factory_status)


class LoopbackSpace:
    """Responders for some factories on 127.0.0.x, one port, in an event loop on a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.transports: list[asyncio.DatagramTransport] = []
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    def serve(self, address: str, snapshot: Snapshot, authenticator: Optional[Authenticator] = None) -> None:
        protocol = ResponderProtocol(
            authenticator=authenticator, trusted_sources={f"127.0.0.{n}" for n in range(1, 10)}
        )
        protocol.publish(snapshot)
        future = asyncio.run_coroutine_threadsafe(start_responder(address, self.port, protocol), self.loop)
        self.transports.append(future.result(timeout=10))

    def close(self) -> None:
        for transport in self.transports:
            self.loop.call_soon_threadsafe(transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def write_config(prefix: Path, port: int, factories: Sequence[tuple[str, str]], extra: str = "") -> None:
    (prefix / "etc").mkdir(parents=True, exist_ok=True)
    listed = " ".join(f"{name}={address}" for name, address in factories)
    (prefix / "etc/vac.conf").write_text(
        "[settings]\n"
        f"vac_space = {SPACE}\n"
        "factory_name = f1.example.com\n"
        f"factories = {listed}\n"
        f"vacquery_port = {port}\n"
        f"{extra}"
    )


@pytest.fixture
def space(tmp_path: Path) -> Iterator[LoopbackSpace]:
    loopback = LoopbackSpace()
    try:
        loopback.serve("127.0.0.1", snapshot_of("f1.example.com", 3))
        loopback.serve("127.0.0.2", snapshot_of("f2.example.com", 2))
        # f3 is configured on 127.0.0.3 but has no responder: it stays silent.
        write_config(
            tmp_path,
            loopback.port,
            [("f1.example.com", "127.0.0.1"), ("f2.example.com", "127.0.0.2"), ("f3.example.com", "127.0.0.3")],
        )
        yield loopback
    finally:
        loopback.close()


def status_document() -> dict[str, Any]:
    return {
        "factory": "f1.example.com",
        "space": SPACE,
        "time": NOW - 5,
        "draining": False,
        "gate": None,
        "slots": [
            {"ordinal": 0, "name": "f1-00.example.com", "state": "Running", "machinetype": "lhcb", "processors": 2,
             "uuid": "u0", "created_time": NOW - 3700, "started_time": NOW - 3600, "shutdown_time": NOW + 80000,
             "cpu_seconds": 7000.0, "shutdown_message": None},
            {"ordinal": 1, "name": "f1-01.example.com", "state": "Shut down", "machinetype": "atlas", "processors": 0,
             "uuid": "u1", "created_time": NOW - 900, "started_time": NOW - 800, "shutdown_time": NOW - 100,
             "cpu_seconds": 0.0, "shutdown_message": "300 Nothing to do"},
        ],
        "machinetypes": {
            "lhcb": {"target_share": 3.0, "running_processors": 2, "running_machines": 1, "running_hs06": 20.0,
                     "backoff_until": None, "last_outcome": None},
            "atlas": {"target_share": 1.0, "running_processors": 0, "running_machines": 0, "running_hs06": 0.0,
                      "backoff_until": NOW + 595,
                      "last_outcome": {"machine": "f1-01.example.com", "message": "300 Nothing to do", "time": NOW - 100}},
        },
        "heartbeats": {"factory": NOW - 5, "responder": NOW - 2, "metadata": NOW - 40, "mjf": 0},
        "census": {"heard": 2, "expected": 3, "duration_seconds": 1.25},
        "total_processors": 8,
        "running_processors": 2,
        "last_error": "creating f1-02.example.com: image download failed\ndetails",
    }  # fmt: skip



CONFIG_PROBLEMS = "/etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'\n/etc/vac.conf:14: [settings] x: unknown"


def faulty_status_document() -> dict[str, Any]:
    document = status_document()
    document.update(
        last_error=None,
        config_error=CONFIG_PROBLEMS,
        observe_error=None,
        faults=[
            {"kind": "config", "message": CONFIG_PROBLEMS, "since": NOW - 600},
            {"kind": "disk", "message": "disk: /var/lib/vac has 312 MiB free, needs 1024 MiB", "since": NOW - 60},
        ],
        slot_errors=[
            {"ordinal": 1, "name": "f1-01.example.com", "step": "police", "error": "KeyError: 'uuid'\nTraceback",
             "since": NOW - 300, "count": 3, "retry_at": NOW + 120},
        ],
        slot_error_totals={"police": 3},
        last_pass_completed=NOW - 900,
    )
    return document

