"""The `vac` command against real responders on loopback, golden layouts, and local commands."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from vacd.config import FactoryAddress, Settings
from vacd.paths import Paths
from vacquery.cli import canonical_factory_name, gather, main
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
from vacquery.auth import AuthMode, Authenticator
from vacquery.messages import FactoryStatus, MessageType, MachineState, MachineStatus, MachinetypeStatus, Snapshot
from vacquery.transport import ResponderProtocol, start_responder

SPACE = "vac01.example.com"
NOW = 1_700_000_000  # Tue Nov 14 22:13:20 2023 UTC
VAC_REQUIRED_MACHINE_KEYS = (
    "cookie space factory num_machines machine state uuid created_time started_time heartbeat_time "
    "cpu_seconds cpu_percentage hs06 machinetype shutdown_message shutdown_time"
).split()


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


def run_vac(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_machines_lists_every_slot_of_the_answering_factories_and_names_the_silent_one(
    space: LoopbackSpace, tmp_path: Path
) -> None:
    code, out, err = run_vac("--prefix", str(tmp_path), "-t", "1", "machines")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["MACHINE", "MACHINETYPE", "STATE", "PROCS", "MODEL", "UP", "CPU", "NOW"]
    assert [line.split()[0] for line in lines[1:]] == ["f1-00", "f1-01", "f1-02", "f2-00", "f2-01"]
    assert lines[1].split()[:5] == ["f1-00", "lhcb", "Running", "2", "VM"]
    assert '"300 Nothing to do"' in lines[2]
    assert all(len(line) <= 80 for line in lines)
    assert err.strip() == "no answer from: f3.example.com"


def test_machines_json_is_one_array_of_wire_machine_status_objects(space: LoopbackSpace, tmp_path: Path) -> None:
    code, out, err = run_vac("--prefix", str(tmp_path), "-t", "1", "machines", "--json")

    assert code == 0
    statuses = json.loads(out)
    assert [status["machine"] for status in statuses] == [
        "f1-00.example.com",
        "f1-01.example.com",
        "f1-02.example.com",
        "f2-00.example.com",
        "f2-01.example.com",
    ]
    for status in statuses:
        assert status["message_type"] == "machine_status"
        assert all(key in status for key in VAC_REQUIRED_MACHINE_KEYS)
    assert "f3.example.com" in err


def test_factories_and_machinetypes_from_named_factories_only(space: LoopbackSpace, tmp_path: Path) -> None:
    code, out, _ = run_vac("--prefix", str(tmp_path), "-t", "1", "factories", "f2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["FACTORY", "f2"]
    assert out.splitlines()[1].split()[1:4] == ["2/2", "1/2", "0.50"]

    code, out, _ = run_vac("--prefix", str(tmp_path), "-t", "1", "machinetype", "lhcb", "f1.example.com")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["f1", "lhcb", "1", "2"]


def test_queries_are_signed_with_the_site_key_under_the_prefix(tmp_path: Path) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    loopback = LoopbackSpace()
    try:
        loopback.serve(
            "127.0.0.1", snapshot_of("f1.example.com", 2), Authenticator(key, AuthMode.REQUIRED, nonce_source=os.urandom)
        )
        key_file = tmp_path / "etc/vac-vacquery.key"
        write_config(tmp_path, loopback.port, [("f1.example.com", "127.0.0.1")], extra=f"vacquery_key_file = {key_file}\n")
        key_file.write_bytes(key + b"\n")
        key_file.chmod(0o600)

        code, out, err = run_vac("--prefix", str(tmp_path), "-t", "2", "machines")
        assert code == 0, err
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["f1-00", "f1-01"]

        key_file.unlink()
        code, _, err = run_vac("--prefix", str(tmp_path), "-t", "0.3", "machines")
        assert code == 1
        assert "sending unsigned queries" in err
    finally:
        loopback.close()


def test_no_answer_at_all_exits_1(space: LoopbackSpace, tmp_path: Path) -> None:
    code, out, err = run_vac("--prefix", str(tmp_path), "-t", "0.3", "machines", "f3.example.com")
    assert code == 1
    assert out == "" and "no factory answered" in err


def test_factory_without_configured_address_is_resolved_and_reported_when_it_has_none(space: LoopbackSpace) -> None:
    settings = Settings(
        vac_space=SPACE,
        factory_name="f1.example.com",
        total_processors=2,
        host_processors=2,
        gocdb_sitename="example.com",
        factories=(FactoryAddress("f1.example.com", "127.0.0.1"), FactoryAddress("f9.example.com")),
        vacquery_port=space.port,
    )
    asked: list[str] = []

    def no_dns(name: str) -> list[str]:
        asked.append(name)
        return []

    gathered = gather(
        MessageType.FACTORY_QUERY, settings, SPACE, ["f1.example.com", "f9.example.com"], 0.5, None, resolve=no_dns
    )

    assert asked == ["f9.example.com"]
    assert [status["factory"] for status in gathered.statuses] == ["f1.example.com"]
    assert gathered.unresolved == ("f9.example.com",) and gathered.silent == ("f9.example.com",)


def test_factory_names_are_canonicalised_as_in_vac_conf() -> None:
    settings = Settings(vac_space=SPACE, factory_name="f1.example.com", total_processors=1, host_processors=1, gocdb_sitename="x")
    assert [canonical_factory_name(name, settings) for name in ("F2", ".", "f3.other.org.")] == [
        "f2.example.com",
        "f1.example.com",
        "f3.other.org",
    ]


def test_bad_configuration_exits_1(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vac.conf").write_text("[settings]\nvac_space = \n")
    code, _, err = run_vac("--prefix", str(tmp_path), "machines")
    assert code == 1 and "configuration" in err


@pytest.mark.parametrize("argv", [[], ["frobnicate"]])
def test_missing_or_unknown_command_exits_1_with_vacs_message(argv: list[str]) -> None:
    code, _, err = run_vac(*argv)
    assert (code, err.strip()) == (1, "Must give a recognised command argument to vac!")


def test_scan_hints_at_machines() -> None:
    code, _, err = run_vac("scan")
    assert code == 1 and "vac machines" in err


def test_machinetype_alias_needs_a_name(space: LoopbackSpace, tmp_path: Path) -> None:
    assert run_vac("--prefix", str(tmp_path), "machinetype")[0] == 1


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


def test_status_reads_status_json_and_json_mode_prints_it(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    paths.status_file.write_text(json.dumps(status_document()))

    code, out, _ = run_vac("--prefix", str(tmp_path), "status")
    assert code == 0 and out.startswith("f1.example.com in space vac01.example.com")
    code, out, _ = run_vac("--prefix", str(tmp_path), "status", "-J")
    assert code == 0 and json.loads(out) == status_document()


def test_status_without_status_file_exits_1(tmp_path: Path) -> None:
    code, _, err = run_vac("--prefix", str(tmp_path), "status")
    assert code == 1 and "no status yet" in err


def test_drain_creates_and_undrain_removes_the_drain_file(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()

    assert run_vac("--prefix", str(tmp_path), "drain")[0] == 0
    assert paths.drain_file.is_file()
    assert run_vac("--prefix", str(tmp_path), "undrain")[0] == 0
    assert not paths.drain_file.exists()
    assert run_vac("--prefix", str(tmp_path), "undrain")[0] == 0


def test_drain_without_state_directory_fails(tmp_path: Path) -> None:
    code, _, err = run_vac("--prefix", str(tmp_path / "nowhere"), "drain")
    assert code == 1 and "does not exist" in err


def test_apel_sync_writes_a_sync_record_for_the_month(tmp_path: Path) -> None:
    write_config(tmp_path, 9995, [("f1.example.com", "127.0.0.1")], extra="gocdb_sitename = UKI-TEST\n")
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    day = paths.apel_archive_dir / "20181130"
    day.mkdir()
    (day / "0f1e2d3c4b5a46").write_text(
        "APEL-individual-job-message: v0.3\nSite: UKI-TEST\nSubmitHost: vac01.example.com/vac-f1.example.com\n"
        "EndTime: 1543579200\n%%\n"
    )

    code, out, _ = run_vac("--prefix", str(tmp_path), "apel-sync", "201811")

    assert code == 0
    written = Path(out.strip())
    assert written.parent.parent == paths.apel_outgoing_dir
    assert "NumberOfJobs: 1\nMonth: 11\nYear: 2018\n" in written.read_text()
    assert run_vac("--prefix", str(tmp_path), "apel-sync", "2018-11")[0] == 1


def test_squid_conf_rewrites_out_only_when_changed(tmp_path: Path) -> None:
    write_config(tmp_path, 9995, [("f1.example.com", "127.0.0.1"), ("f2.example.com", "127.0.0.2")])
    template, output = tmp_path / "squid.conf.vac", tmp_path / "squid.conf"
    template.write_text("http_port 3128\n")

    assert run_vac("--prefix", str(tmp_path), "squid-conf", str(template), str(output))[0] == 0
    assert output.read_text() == (
        "http_port 3128\nacl localnet src 127.0.0.1/32\nacl localnet src 127.0.0.2/32\n"
        "cache_peer 127.0.0.2 sibling 3128 3130 default\n"
    )
    os.utime(output, ns=(10**9, 10**9))
    assert run_vac("--prefix", str(tmp_path), "squid-conf", str(template), str(output))[0] == 0
    assert output.stat().st_mtime_ns == 10**9
    assert run_vac("--prefix", str(tmp_path), "squid-conf", str(template))[0] == 2


def test_proxy_init_needs_cert_and_key(tmp_path: Path) -> None:
    code, out, err = run_vac("proxy-init", "-c", str(tmp_path / "cert.pem"))
    assert code == 1 and out == "" and "--key" in err


def test_proxy_init_prints_a_twelve_hour_proxy(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vac test issuer")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )

    code, out, _ = run_vac("proxy-init", "-c", str(tmp_path / "cert.pem"), "-k", str(tmp_path / "key.pem"))

    assert code == 0
    proxy = x509.load_pem_x509_certificate(out.encode())
    lifetime = proxy.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(hours=11) < lifetime <= datetime.timedelta(hours=12)
    assert "BEGIN RSA PRIVATE KEY" in out


def test_options_may_come_after_the_command(space: LoopbackSpace, tmp_path: Path) -> None:
    code, out, _ = run_vac("factories", "--prefix", str(tmp_path), "-J", "-t", "1")
    assert code == 0
    assert sorted(status["factory"] for status in json.loads(out)) == ["f1.example.com", "f2.example.com"]


@pytest.mark.allow_commands(sys.executable)
def test_drain_wakes_the_running_factory_at_once(tmp_path: Path) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-c", "import signal, sys, time\n"
         "signal.signal(signal.SIGUSR1, lambda *_: (print('woken', flush=True), sys.exit(0)))\n"
         "print('ready', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert waiting.stdout is not None and waiting.stdout.readline().strip() == "ready"
        paths = Paths(tmp_path)
        paths.ensure_state_dirs()
        paths.pid_file.write_text(f"{waiting.pid}\n")
        code, out, err = run_vac("--prefix", str(tmp_path), "drain")
        assert code == 0, err
        assert waiting.wait(timeout=10) == 0
        assert waiting.stdout.read().strip() == "woken"
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()


# ---------------------------------------------------------------------- faults in `vac status` (issue 8 item 8)

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


def test_status_json_mode_keeps_the_fault_keys(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    paths.status_file.write_text(json.dumps(faulty_status_document()))
    code, out, _ = run_vac("--prefix", str(tmp_path), "status", "-J")
    assert code == 0 and json.loads(out) == faulty_status_document()
    code, out, _ = run_vac("--prefix", str(tmp_path), "status")
    assert code == 0 and "Faults:" in out and "SLOT ERROR" in out
