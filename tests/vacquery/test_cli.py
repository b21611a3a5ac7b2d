"""The `vac` command's space listings (vacquery.cli, standalone: no vacd) and the golden layouts."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tests.vacquery.vac_command_space import (  # noqa: F401 (utc: an autouse fixture)
    NOW,
    SPACE,
    LoopbackSpace,
    faulty_status_document,
    space,
    status_document,
    utc,
)
from vacquery.cli import PeerAddress, SpaceSettings, canonical_factory_name, gather, run_listing
from vacquery.messages import MessageType
from vacquery.tables import (
    Span,
    factories_table,
    format_table,
    human_duration,
    human_kilobytes,
    machines_table,
    machinetypes_table,
    status_report,
)

CLIENT_VERSION = "Vac 04.00.00a1 vac-command"


def test_factory_without_configured_address_is_resolved_and_reported_when_it_has_none(space: LoopbackSpace) -> None:
    settings = SpaceSettings(
        space=SPACE,
        factory_name="f1.example.com",
        factories=(PeerAddress("f1.example.com", "127.0.0.1"), PeerAddress("f9.example.com")),
        port=space.port,
        timeout_seconds=0.5,
    )
    asked: list[str] = []

    def no_dns(name: str) -> list[str]:
        asked.append(name)
        return []

    gathered = gather(
        MessageType.FACTORY_QUERY, settings, SPACE, ["f1.example.com", "f9.example.com"], 0.5, None, resolve=no_dns,
        client_version=CLIENT_VERSION,
    )

    assert asked == ["f9.example.com"]
    assert [status["factory"] for status in gathered.statuses] == ["f1.example.com"]
    assert gathered.unresolved == ("f9.example.com",) and gathered.silent == ("f9.example.com",)


def test_factory_names_are_canonicalised_as_in_vac_conf() -> None:
    assert [canonical_factory_name(name, "f1.example.com") for name in ("F2", ".", "f3.other.org.")] == [
        "f2.example.com",
        "f1.example.com",
        "f3.other.org",
    ]


def test_a_listing_runs_from_space_settings_alone_without_any_vac_conf(space: LoopbackSpace, tmp_path: Path) -> None:
    # Issue 9 item 1: vacquery is a library of its own; the `space` fixture writes a vac.conf
    # under tmp_path, which run_listing must not need: everything comes from SpaceSettings.
    settings = SpaceSettings(
        space=SPACE,
        factory_name="f1.example.com",
        factories=(PeerAddress("f1.example.com", "127.0.0.1"), PeerAddress("f2.example.com", "127.0.0.2")),
        port=space.port,
        timeout_seconds=2.0,
    )
    out, err = io.StringIO(), io.StringIO()

    code = run_listing("machines", [], settings, None, client_version=CLIENT_VERSION, now=float(NOW), out=out, err=err)

    assert code == 0, err.getvalue()
    assert [line.split()[0] for line in out.getvalue().splitlines()[1:]] == ["f1-00", "f1-01", "f1-02", "f2-00", "f2-01"]
    assert err.getvalue() == ""


def test_a_listing_asks_only_the_named_factory_of_the_given_space_and_port(space: LoopbackSpace) -> None:
    settings = SpaceSettings(space="other.example.org", factory_name="f1.example.com",
                             factories=(PeerAddress("f2.example.com", "127.0.0.2"),), port=space.port, timeout_seconds=2.0)
    out, err = io.StringIO(), io.StringIO()

    # -s names the space the responders serve; `f2` is completed with this factory's domain.
    code = run_listing("factories", ["f2"], settings, None, client_version=CLIENT_VERSION, now=float(NOW), out=out,
                       err=err, space=SPACE, json_output=True)

    assert code == 0, err.getvalue()
    assert [status["factory"] for status in json.loads(out.getvalue())] == ["f2.example.com"]


# ---------------------------------------------------------------------- golden layouts

RUNNING = {
    "factory": "f1.example.com",
    "machine": "f1-00.example.com",
    "state": "Running",
    "machinetype": "lhcb",
    "num_processors": 2,
    "machine_model": "cernvm3",
    "created_time": NOW - 7300,
    "started_time": NOW - 7200,
    "heartbeat_time": NOW - 10,
    "cpu_seconds": 13000.0,
    "cpu_percentage": 97.5,
}
STARTING = {
    "factory": "f1.example.com",
    "machine": "f1-01.example.com",
    "state": "Starting",
    "machinetype": "atlas-production-long",
    "num_processors": 1,
    "machine_model": "docker",
    "created_time": NOW - 90,
}
SHUT_DOWN = {
    "factory": "f2.example.com",
    "machine": "f2-00.example.com",
    "state": "Shut down",
    "machinetype": "lhcb",
    "num_processors": 0,
    "shutdown_message": "300 Nothing to do: no matching jobs found in the task queue for this machine",
}
FREE = {"factory": "f2.example.com", "machine": "f2-01.example.com", "state": "Shut down", "num_processors": 0}

MACHINES_GOLDEN = """\
MACHINE  MACHINETYPE     STATE      PROCS  MODEL    UP   CPU  NOW
f1-00    lhcb            Running        2  VM     2.0h  181%  98%
f1-01    atlas-producti  Starting       1  DC       2m
f2-00    lhcb            Shut down      0         "300 Nothing to do: no matchi~
f2-01    -               Shut down      0
"""


def test_machines_golden_layout() -> None:
    assert machines_table([FREE, SHUT_DOWN, STARTING, RUNNING], NOW) == MACHINES_GOLDEN


FACTORIES_GOLDEN = """\
FACTORY  PROCS  MACHINES  LOAD  ROOT FREE  VAC FREE      MEMORY  VERSION
f1         5/8       3/8  0.52      10.0G    400.0G  3.0G/16.0G  04.00.00a1
f2        0/16      0/16  0.00       512K      1.0T    -/125.0G  03.01
"""


def test_factories_golden_layout() -> None:
    statuses = [
        {
            "factory": "f2.example.com",
            "running_processors": 0,
            "max_processors": 16,
            "running_machines": 0,
            "max_machines": 16,
            "load_average": 0.0,
            "root_disk_avail_kb": 512,
            "vac_disk_avail_kb": 1024**3,
            "mem_total_kb": 125 * 1024 * 1024,
            "vac_version": "Vac 03.01 vacd-responder",
        },
        {
            "factory": "f1.example.com",
            "running_processors": 5,
            "max_processors": 8,
            "running_machines": 3,
            "max_machines": 8,
            "load_average": 0.52,
            "root_disk_avail_kb": 10 * 1024 * 1024,
            "daemon_disk_avail_kb": 400 * 1024 * 1024,
            "mem_used_kb": 3 * 1024 * 1024,
            "mem_total_kb": 16 * 1024 * 1024,
            "daemon_version": "Vac 04.00.00a1 vacd-responder",
        },
    ]
    assert factories_table(statuses) == FACTORIES_GOLDEN


MACHINETYPES_GOLDEN = """\
FACTORY  MACHINETYPE  MACHINES  PROCS  HS06  LAST OUTCOME
f1       atlas               0      0   0.0  Nov 14 22:03 "300 Nothing to do"
f1       lhcb                3    3.5  30.0
"""


def test_machinetypes_golden_layout() -> None:
    statuses = [
        {"factory": "f1.example.com", "machinetype": "lhcb", "running_machines": 3, "running_processors": 3.5,
         "running_hs06": 30.0, "num_before_fizzle": 1},
        {"factory": "f1.example.com", "machinetype": "atlas", "running_machines": 0, "running_processors": 0.0,
         "running_hs06": 0.0, "num_before_fizzle": 0, "shutdown_message": "300 Nothing to do", "shutdown_time": NOW - 600},
    ]  # fmt: skip
    assert machinetypes_table(statuses) == MACHINETYPES_GOLDEN
    assert machinetypes_table(statuses, "lhcb").splitlines()[1:] == MACHINETYPES_GOLDEN.splitlines()[2:]


STATUS_GOLDEN = """\
f1.example.com in space vac01.example.com, last pass Nov 14 22:13:15 (5s ago)
Processors: 2/8 running   Draining: no   Gate: none
Census: heard 2 of 3 factories in 1.25s
Last error: creating f1-02.example.com: image download failed

SLOT  MACHINE  MACHINETYPE  STATE      PROCS    UP   CPU
   0  f1-00    lhcb         Running        2  1.0h  1.9h
   1  f1-01    atlas        Shut down      0  "300 Nothing to do"

MACHINETYPE  SHARE  MACHINES  PROCS  HS06  BACKED OFF UNTIL
atlas            1         0      0   0.0  Nov 14 22:23:15
lhcb             3         1      2  20.0  -

LAST OUTCOME  TIME          MACHINE  MESSAGE
atlas         Nov 14 22:11  f1-01    "300 Nothing to do"

COMPONENT  LAST HEARTBEAT     AGE
factory    Nov 14 22:13:15     5s
metadata   Nov 14 22:12:40    40s
mjf        -                never
responder  Nov 14 22:13:18     2s
"""


def test_status_golden_layout() -> None:
    assert status_report(status_document(), NOW) == STATUS_GOLDEN


def test_every_golden_line_fits_80_columns() -> None:
    for golden in (MACHINES_GOLDEN, FACTORIES_GOLDEN, MACHINETYPES_GOLDEN):
        assert all(len(line) <= 80 for line in golden.splitlines())


def test_human_units() -> None:
    assert [human_duration(seconds) for seconds in (0, 59, 60, 3599, 3600, 172799, 172800)] == [
        "0s", "59s", "1m", "60m", "1.0h", "48.0h", "2.0d",
    ]  # fmt: skip
    assert [human_kilobytes(kb) for kb in (None, 1023, 1024, 1024**2 * 1.5, 1024**3)] == ["-", "1023K", "1.0M", "1.5G", "1.0T"]


def test_format_table_lets_a_span_cell_run_across_columns() -> None:
    table = format_table(["A", "B", "C"], [["x", "long-b", "c"], ["yy", Span("a message spanning")], ["z"]])
    assert table.splitlines() == ["A   B       C", "x   long-b  c", "yy  a message spanning", "z"]


# ---------------------------------------------------------------------- local commands


# ---------------------------------------------------------------------- faults in `vac status` (issue 8 item 8)


def test_status_shows_faults_with_since_times_and_a_slot_error_table() -> None:
    report = status_report(faulty_status_document(), NOW)
    lines = report.splitlines()

    assert lines[3:9] == [
        "No pass completed since Nov 14 21:58:20 (15m ago)",
        "Faults:",
        "  config since Nov 14 22:03:20: /etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'",
        "    /etc/vac.conf:14: [settings] x: unknown",
        "  disk since Nov 14 22:12:20: disk: /var/lib/vac has 312 MiB free, needs 1024 MiB",
        "",
    ]
    # The config fault says it all: the older one-line "Configuration error:" is not repeated.
    assert not any(line.startswith("Configuration error:") for line in lines)
    table = report.split("\n\n")[2].splitlines()
    assert table == [
        "SLOT ERROR  STEP    COUNT  SINCE         RETRY AT      ERROR",
        "f1-01       police      3  Nov 14 22:08  Nov 14 22:15  KeyError: 'uuid'",
    ]


def test_status_of_a_factory_that_never_completed_a_pass_says_so() -> None:
    document = faulty_status_document()
    document.update(last_pass_completed=None, factory=None, faults=[], slot_errors=[])
    lines = status_report(document, NOW).splitlines()
    assert "No pass has completed since vacd started" in lines
    assert "Configuration error: /etc/vac.conf:12: [settings] cycle_seconds: not a number: 'soon'" in lines


def test_status_names_the_guest_server_processes_and_their_restarts() -> None:
    document = status_document()
    document["guest_servers"] = {"processes": 2, "pids": [4312, 4313], "restarts": 1}
    lines = status_report(document, NOW).splitlines()
    assert "Guest servers: 2 processes, serving: 4312 4313   Restarts: 1" in lines
    # On vacd's own guest thread (null) nothing is said, as in the golden layout.
    document["guest_servers"] = None
    assert status_report(document, NOW) == STATUS_GOLDEN
