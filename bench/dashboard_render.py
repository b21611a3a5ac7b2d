"""The dashboard page's cost as the space grows: document, HTML and JSON, beside `vac machines`.

Run: `.venv/bin/python bench/dashboard_render.py [--factories 10 100 500] [--slots 8] [--repeat 5]`.

For each space size, every factory has `--slots` slots (all running, one of four
machinetypes each) and four machinetype statuses, in wire form made by the real codec; the
history ring holds a full day (1,440 samples of four machinetypes). Measured per page:
`space_view` (the /dashboard.json document), `render_page` (the HTML) and `json.dumps` of
the document, against `vacquery.tables.machines_table` (what `vac machines` prints) on the
same machine statuses, as a ratio. The best of `--repeat` runs is taken. Prints a
Markdown table with the page's and the JSON's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vacd.dashboard.history import Sample  # noqa: E402
from vacd.dashboard.render import render_page  # noqa: E402
from vacd.dashboard.view import Heard, PassFacts, space_view  # noqa: E402
from vacquery.codec import encode_reply  # noqa: E402
from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Reply  # noqa: E402
from vacquery.tables import machines_table  # noqa: E402

SPACE = "vac01.example.org"
MACHINETYPES = ("lhcb", "atlas", "cms", "gridpp")
NOW = 1_767_225_600


def wire(status: Any) -> Mapping[str, Any]:
    return dict(json.loads(encode_reply(Reply("0", NOW, status))))


def factory_statuses(index: int, slots: int) -> list[Mapping[str, Any]]:
    name = f"f{index:04d}.example.org"
    statuses = [
        wire(MachineStatus(space=SPACE, factory=name, num_machines=slots, machine=f"f{index:04d}-{slot:02d}.example.org",
                           state=MachineState.RUNNING, uuid=None, created_time=NOW - 4000, started_time=NOW - 3990,
                           heartbeat_time=NOW - 10, cpu_seconds=3900.0, cpu_percentage=98.0, hs06=10.0,
                           machinetype=MACHINETYPES[slot % 4], shutdown_message=None, shutdown_time=None, processors=1))
        for slot in range(slots)
    ]
    statuses += [
        wire(MachinetypeStatus(space=SPACE, factory=name, num_machinetypes=4, machinetype=machinetype,
                               running_hs06=10.0 * slots / 4, num_before_fizzle=0, shutdown_message="200 Success",
                               shutdown_time=NOW - 60, shutdown_machine=f"f{index:04d}-00.example.org",
                               running_machines=slots // 4, running_processors=slots / 4))
        for machinetype in MACHINETYPES
    ]
    statuses.append(wire(FactoryStatus(space=SPACE, factory=name, running_processors=slots, running_machines=slots,
                                       max_processors=slots, max_machines=slots, load_average=1.0)))
    return statuses


def best_of(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    arguments = parser.parse_args()
    status = {"factory": "f0000.example.org", "space": SPACE, "time": NOW, "slots": [], "heartbeats": {"factory": NOW},
              "machinetypes": {name: {"target_share": 1.0, "backoff_until": None} for name in MACHINETYPES}}
    history = [Sample(sequence, NOW - 86400 + 60 * sequence, {name: 100.0 for name in MACHINETYPES}, 0.05, 1.0, 1, 0,
                      {"200": 1}) for sequence in range(1440)]
    print("| factories | machines | document | HTML page | JSON | `vac machines` table | page / table | page size | JSON size |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in arguments.factories:
        own = factory_statuses(0, arguments.slots)
        peers = [status for index in range(1, count) for status in factory_statuses(index, arguments.slots)]
        facts = PassFacts(NOW, status, tuple(own), Heard(NOW, tuple(s for s in peers if s["message_type"] == "machinetype_status")))
        listing = Heard(NOW, tuple(s for s in peers if s["message_type"] != "machinetype_status"))
        machines = [s for s in own + peers if s["message_type"] == "machine_status"]
        view_seconds, document = best_of(arguments.repeat, lambda: space_view(facts, listing, history, NOW + 5))
        page_seconds, page = best_of(arguments.repeat, lambda: render_page(document))
        json_seconds, text = best_of(arguments.repeat, lambda: json.dumps(document, indent=1, sort_keys=True))
        table_seconds, _ = best_of(arguments.repeat, lambda: machines_table(machines, NOW + 5))
        print(f"| {count} | {len(machines)} | {1000 * view_seconds:.1f} ms | {1000 * page_seconds:.1f} ms | "
              f"{1000 * json_seconds:.1f} ms | {1000 * table_seconds:.1f} ms | "
              f"{(view_seconds + page_seconds) / table_seconds:.1f} | {len(page.encode()) / 1024:.0f} KiB | "
              f"{len(text.encode()) / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
