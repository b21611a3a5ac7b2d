"""The `vac` command as an admin runs it (vacd.cli): listings of a loopback space, and the local verbs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vacquery.vac_command_space import (  # noqa: F401 (utc, space: fixtures)
    LoopbackSpace,
    faulty_status_document,
    snapshot_of,
    space,
    status_document,
    utc,
    write_config,
)
from vacd.cli import main
from vacd.paths import Paths
from vacd.status import write_heartbeat
from vacquery.auth import AuthMode, Authenticator

VAC_REQUIRED_MACHINE_KEYS = (
    "cookie space factory num_machines machine state uuid created_time started_time heartbeat_time "
    "cpu_seconds cpu_percentage hs06 machinetype shutdown_message shutdown_time"
).split()


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
        assert f"{key_file}: cannot read VacQuery key" in err and "no factory answered" not in err
    finally:
        loopback.close()


def test_no_answer_at_all_exits_1(space: LoopbackSpace, tmp_path: Path) -> None:
    code, out, err = run_vac("--prefix", str(tmp_path), "-t", "0.3", "machines", "f3.example.com")
    assert code == 1
    assert out == "" and "no factory answered" in err


def test_bad_configuration_exits_1(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/vac.conf").write_text("[settings]\nvac_space = \n")
    code, _, err = run_vac("--prefix", str(tmp_path), "machines")
    assert code == 1 and "configuration" in err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["-J", "--prefix", "/nowhere"]])
def test_missing_or_unknown_command_exits_1_with_vacs_message_then_the_commands(argv: list[str]) -> None:
    code, out, err = run_vac(*argv)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == "Must give a recognised command argument to vac!"
    assert "  vac machines [FACTORY ...]" in err and "  vac squid-conf IN OUT" in err


def test_scan_hints_at_machines() -> None:
    code, _, err = run_vac("scan")
    assert code == 1 and "vac machines" in err


def test_machinetype_alias_needs_a_name(space: LoopbackSpace, tmp_path: Path) -> None:
    assert run_vac("--prefix", str(tmp_path), "machinetype")[0] == 1


# ---------------------------------------------------------------------- local commands


def as_if_vacd_runs(paths: Paths) -> None:
    """The signs of a running vacd that `vac status` reads: a live pid and a fresh loop heartbeat."""
    paths.pid_file.write_text(f"{os.getpid()}\n")
    write_heartbeat(paths, "loop", int(time.time()))


def test_status_reads_status_json_and_json_mode_prints_it(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    paths.status_file.write_text(json.dumps(status_document()))
    as_if_vacd_runs(paths)

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

    from vacd.proxy import not_valid_after_utc

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
    lifetime = not_valid_after_utc(proxy) - datetime.datetime.now(datetime.timezone.utc)
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


def test_status_json_mode_keeps_the_fault_keys(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    paths.status_file.write_text(json.dumps(faulty_status_document()))
    as_if_vacd_runs(paths)
    code, out, _ = run_vac("--prefix", str(tmp_path), "status", "-J")
    assert code == 0 and json.loads(out) == faulty_status_document()
    code, out, _ = run_vac("--prefix", str(tmp_path), "status")
    assert code == 0 and "Faults:" in out and "SLOT ERROR" in out


# ---------------------------------------------------------------------- the split of issue 9 item 1

# asyncio (and the ssl it loads) is the responder's, not the census's (issue 15 item 4).
# vacquery.auth (and hmac) only sign and check, for a site with a key; random only injects
# loss in tests, and secrets would load both for the salt (os.urandom gives the same bytes).
HEAVY_FOR_A_LISTING = ("cryptography", "vacd.proxy", "vacd.accounting", "vacd.store", "asyncio", "ssl",
                       "vacquery.responder_transport", "vacquery.auth", "hmac", "random", "secrets",
                       # argparse sizes a formatter to the terminal with shutil (which loads zlib,
                       # bz2 and lzma); a listing prints no help (vacd.cli._MetavarCheckFormatter).
                       "shutil")


@pytest.mark.allow_commands(sys.executable)
def test_a_space_listing_loads_neither_cryptography_nor_the_apel_code(space: LoopbackSpace, tmp_path: Path) -> None:
    # `vac machines` imported cryptography through vacd.proxy before the split; the listing
    # now loads only vac.conf's reader and vacquery's census side.
    probe = (
        "import json, sys\nfrom vacd.cli import main\n"
        f"code = main(['--prefix', {str(tmp_path)!r}, '-t', '2', 'machines', 'f1'])\n"
        f"print(json.dumps([code, [name for name in {HEAVY_FOR_A_LISTING!r} if name in sys.modules]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    code, loaded = json.loads(result.stdout.splitlines()[-1])
    assert result.stdout.splitlines()[1].split()[0] == "f1-00"  # the listing really ran
    assert (code, loaded) == (0, [])


@pytest.mark.allow_commands(sys.executable)
def test_the_vac_script_runs_the_command_with_the_collector_on_and_what_it_loaded_frozen(
    space: LoopbackSpace, tmp_path: Path
) -> None:
    # setup.cfg's `vac` is vacd.vacentry:main: the collector is paused while vacd.cli loads
    # (it would walk the growing heap some 20 times and free nothing), the loaded objects are
    # then frozen, and the command runs with the collector on.
    probe = (
        "import gc, json, sys\nfrom vacd.vacentry import main\n"
        f"code = main(['--prefix', {str(tmp_path)!r}, '-t', '2', 'machines', 'f1'])\n"
        "import vacd.cli, vacquery.messages\n"
        "tracked = {id(thing) for thing in gc.get_objects()}\n"
        "loaded = (vacd.cli.main, vacd.cli.build_parsers, vacquery.messages.MachineStatus.__init__)\n"
        "print(json.dumps([code, gc.isenabled(), [id(thing) in tracked for thing in loaded]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "f1-00"  # the listing ran, printed as before
    assert json.loads(result.stdout.splitlines()[-1]) == [0, True, [False, False, False]]


@pytest.mark.parametrize("argv", [["help"], ["help", "machines"]])
def test_help_is_wrapped_to_the_terminal_width(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The parsers are built with a fixed-width formatter (no shutil for a listing); the help
    # they print must still be sized to the terminal, as argparse's own is (COLUMNS here).
    monkeypatch.setenv("COLUMNS", "200")
    code, wide, _ = run_vac(*argv)
    assert code == 0 and max(len(line) for line in wide.splitlines()) > 80
    monkeypatch.setenv("COLUMNS", "60")
    code, narrow, _ = run_vac(*argv)
    assert code == 0 and narrow != wide
    assert all(len(line) <= 60 for line in narrow.splitlines() if not line.startswith("usage:"))


def test_every_local_verb_the_dispatcher_accepts_has_a_runner() -> None:
    from vacd.cli import LOCAL_COMMANDS
    from vacd.localcommands import LOCAL_RUNNERS
    from vacquery.cli import LISTING_KINDS

    assert sorted(LOCAL_COMMANDS) == sorted(LOCAL_RUNNERS)
    assert not set(LOCAL_COMMANDS) & set(LISTING_KINDS)
