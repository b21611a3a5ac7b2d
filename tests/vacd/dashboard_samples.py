"""Wire-form statuses and a status.json document for the dashboard's tests, made with the real codec."""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from vacquery.codec import encode_reply
from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Reply

SPACE = "vac01.example.com"
NOW = 1_700_000_000


def wire(status: Any) -> Mapping[str, Any]:
    encoded = dict(json.loads(encode_reply(Reply("0", NOW, status))))
    encoded.pop("cookie")
    encoded.pop("time_sent")
    return encoded


def machinetype(factory: str, name: str, hs06: float, processors: float, *, message: Optional[str] = None,
                message_time: Optional[int] = None) -> Mapping[str, Any]:
    return wire(MachinetypeStatus(
        space=SPACE, factory=factory, num_machinetypes=2, machinetype=name, running_hs06=hs06, num_before_fizzle=0,
        shutdown_message=message, shutdown_time=message_time, shutdown_machine=f"{factory.split('.')[0]}-00.example.com"
        if message else None, running_machines=int(processors), running_processors=processors,
        daemon_version="Vac 4.0.0 vacd-responder"))


def machine(factory: str, ordinal: int, name: Optional[str], state: MachineState, *, processors: int = 1,
            message: Optional[str] = None) -> Mapping[str, Any]:
    return wire(MachineStatus(
        space=SPACE, factory=factory, num_machines=2, machine=f"{factory.split('.')[0]}-{ordinal:02d}.example.com",
        state=state, uuid=None, created_time=NOW - 100, started_time=NOW - 90, heartbeat_time=NOW - 5,
        cpu_seconds=80.0, cpu_percentage=95.0, hs06=10.0, machinetype=name,
        shutdown_message=message, shutdown_time=NOW - 30 if message else None, processors=processors))


def factory(name: str, running: int, capacity: int) -> Mapping[str, Any]:
    return wire(FactoryStatus(space=SPACE, factory=name, running_processors=running, running_machines=running,
                              max_processors=capacity, max_machines=capacity, load_average=0.5,
                              daemon_version="Vac 4.0.0 vacd-responder"))


def status_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "factory": "f1.example.com",
        "space": SPACE,
        "time": NOW,
        "draining": False,
        "gate": "all 2 processors in use",
        "slots": [
            {"ordinal": 0, "name": "f1-00.example.com", "state": "Running", "machinetype": "lhcb", "processors": 1,
             "shutdown_message": None, "note": None},
            {"ordinal": 1, "name": "f1-01.example.com", "state": "Running", "machinetype": "atlas", "processors": 1,
             "shutdown_message": None, "note": None},
        ],
        "machinetypes": {
            "lhcb": {"target_share": 3.0, "running_processors": 1, "running_machines": 1, "running_hs06": 10.0,
                     "backoff_until": None, "last_outcome": None},
            "atlas": {"target_share": 1.0, "running_processors": 1, "running_machines": 1, "running_hs06": 10.0,
                      "backoff_until": NOW + 600, "last_outcome": None},
        },
        "heartbeats": {"factory": NOW, "loop": NOW, "responder": NOW - 400},
        "census": {"heard": 1, "expected": 2, "complete": 1, "silent": ["f3.example.com"], "duration_seconds": 2.0},
        "total_processors": 2,
        "running_processors": 2,
        "last_error": None,
        "config_error": None,
        "faults": [],
        "slot_errors": [],
        "last_pass_completed": NOW,
    }
    document.update(changes)
    return document
