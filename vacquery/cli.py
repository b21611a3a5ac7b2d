"""The `vac` command: ask the space's factories what they run, and look after this factory.

Rules (behaviour reference §9, acceptance 45):
- Vac 03's command line is kept: `vac [options] command [args]`, options before or after
  the command, `machinetype NAME` as an alias of `machinetypes NAME`, `scan` as a hint,
  and Vac's exit codes (1 for no or an unknown command, 2 for a wrong argument count).
- Remote commands (`machines`, `machinetypes`, `factories`) run one census (the
  `vacquery.client` state machine over `vacquery.transport`) with a hard deadline of
  `-t` or `udp_timeout_seconds`; a factory's address is its configured `name=address`,
  else what DNS says. Factories that did not answer are named on stderr; the exit code
  is 1 only when none answered.
- Plain output is aligned columns under a header row with human units, fitting 80
  columns; `-J` prints one JSON array of the status objects as they travel on the wire
  (every Vac 03 key, acceptance 45), for scripts. Formatting is pure (`*_table`
  functions take `now`), so the layouts have golden tests.
- Local commands read and write only this factory's files under `--prefix`: `status`
  (status.json), `drain`/`undrain` (the drain file the factory checks every pass),
  `apel-sync`, `squid-conf`, and `proxy-init` (needs `-c` and `-k`).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TextIO

from vacd import MANAGER_VERSION
from vacd.accounting import ApelError, apel_sync
from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.config import Config, FactoryAddress, Settings, load_config
from vacd.errors import ConfigErrors, VacError
from vacd.paths import Paths
from vacd.proxy import ProxyError, load_issuer_files, make_proxy
from vacd.squidconf import squid_conf
from vacquery.auth import Authenticator, KeyFileError, authenticator_from_settings
from vacquery.client import Census, CensusResult
from vacquery.codec import encode_reply
from vacquery.messages import MessageType, Reply
from vacquery.transport import CensusSockets, run_census

CLIENT_VERSION = f"{MANAGER_VERSION} vac-command"
UNRECOGNISED = "Must give a recognised command argument to vac!"
# Vac's `vac proxy-init` made 12-hour proxies (Appendix C).
PROXY_LIFETIME_SECONDS = 43200
SCREEN_COLUMNS = 80
REMOTE_KINDS = {
    "machines": MessageType.MACHINES_QUERY,
    "machinetypes": MessageType.MACHINETYPES_QUERY,
    "machinetype": MessageType.MACHINETYPES_QUERY,
    "factories": MessageType.FACTORY_QUERY,
}
LOCAL_COMMANDS = ("status", "drain", "undrain", "apel-sync", "squid-conf", "proxy-init", "scan")
MODEL_CLASSES = {"cernvm3": "VM", "cernvm4": "VM", "vm-raw": "VM", "docker": "DC", "singularity": "SC"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class CommandError(VacError):
    """A command cannot run; the message is printed to stderr and `vac` exits 1."""


# ---------------------------------------------------------------------- human units


def human_duration(seconds: Optional[float]) -> str:
    """`45s`, `12m`, `5.2h`, `3.1d`; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def human_kilobytes(kilobytes: Optional[float]) -> str:
    """`512K`, `12.3M`, `450.1G`, `1.2T`; `-` for None."""
    if kilobytes is None:
        return "-"
    value = float(kilobytes)
    for unit in ("K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "K" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def local_time(epoch_seconds: Optional[float], with_seconds: bool = False) -> str:
    """`Nov 22 01:02` (local time, English month names whatever the locale); `-` for None."""
    if not epoch_seconds:
        return "-"
    moment = datetime.fromtimestamp(epoch_seconds)
    text = f"{_MONTHS[moment.month - 1]} {moment.day:02d} {moment:%H:%M}"
    return text + f":{moment:%S}" if with_seconds else text


def short_name(fqdn: Optional[str]) -> str:
    return (fqdn or "-").split(".", 1)[0]


class Span(str):
    """A row's last cell that may run on across the columns after it (a shutdown message
    where a running machine's figures would be); it does not widen its column."""


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns aligned under `headers`, two spaces apart, each line cut at 80 columns.

    Rows may be shorter than the header: missing cells are blank.
    """
    widths = [len(header) for header in headers]
    for row in rows:
        for index, cell in enumerate(row):
            if not isinstance(cell, Span):
                widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells: list[str] = []
        for index, cell in enumerate(row):
            if isinstance(cell, Span):
                cells.append(cell)
            elif index in right:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        line = "  ".join(cells).rstrip()
        lines.append(line if len(line) <= SCREEN_COLUMNS else line[: SCREEN_COLUMNS - 1] + "~")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "-"
    return f"{number:.0f}" if number == int(number) else f"{number:.1f}"


def _quoted(message: Any) -> str:
    return f'"{message}"' if isinstance(message, str) and message else ""


# ---------------------------------------------------------------------- remote tables


def machines_table(statuses: Sequence[Mapping[str, Any]], now: float) -> str:
    """One row per slot, factories in name order, slots in name order (§9)."""
    rows = []
    for status in sorted(statuses, key=lambda status: (str(status.get("factory")), str(status.get("machine")))):
        state = str(status.get("state") or "-")
        processors = status.get("num_processors", status.get("num_cpus"))
        model = status.get("machine_model")
        row = [
            short_name(status.get("machine")),
            str(status.get("machinetype") or "-")[:14],
            state,
            _count(processors),
            MODEL_CLASSES.get(str(model), "??") if model else "",
        ]
        started, created = _number(status.get("started_time")), _number(status.get("created_time"))
        heartbeat, cpu_seconds = _number(status.get("heartbeat_time")), _number(status.get("cpu_seconds"))
        if state == "Running" and started:
            efficiency = ""
            if heartbeat and cpu_seconds is not None and heartbeat > started:
                efficiency = f"{100 * cpu_seconds / (heartbeat - started):.0f}%"
            recent = _number(status.get("cpu_percentage"))
            row += [human_duration(now - started), efficiency, "" if recent is None else f"{recent:.0f}%"]
        elif state == "Starting" and created:
            row += [human_duration(now - created), "", ""]
        elif status.get("shutdown_message"):
            row.append(Span(_quoted(status.get("shutdown_message"))))
        rows.append(row)
    return format_table(["MACHINE", "MACHINETYPE", "STATE", "PROCS", "MODEL", "UP", "CPU", "NOW"], rows, right=(3, 5, 6, 7))


def machinetypes_table(statuses: Sequence[Mapping[str, Any]], machinetype: Optional[str] = None) -> str:
    """One row per factory and machinetype, with the last outcome the factory knows (§9)."""
    rows = []
    chosen = [status for status in statuses if machinetype is None or status.get("machinetype") == machinetype]
    for status in sorted(chosen, key=lambda status: (str(status.get("factory")), str(status.get("machinetype")))):
        hs06 = _number(status.get("running_hs06"))
        row = [
            short_name(status.get("factory")),
            str(status.get("machinetype") or "-"),
            _count(status.get("running_machines", status.get("total_machines"))),
            _count(status.get("running_processors", status.get("running_cpus"))),
            "-" if hs06 is None else f"{hs06:.1f}",
        ]
        if status.get("shutdown_message"):
            row.append(f"{local_time(_number(status.get('shutdown_time')))} {_quoted(status.get('shutdown_message'))}")
        rows.append(row)
    headers = ["FACTORY", "MACHINETYPE", "MACHINES", "PROCS", "HS06", "LAST OUTCOME"]
    return format_table(headers, rows, right=(2, 3, 4))


def factories_table(statuses: Sequence[Mapping[str, Any]]) -> str:
    """One row per factory that answered: usage against capacity, load, disk, memory (§9)."""
    rows = []
    for status in sorted(statuses, key=lambda status: str(status.get("factory"))):
        load = _number(status.get("load_average"))
        version = str(status.get("daemon_version", status.get("vac_version")) or "-")
        words = version.split()
        rows.append(
            [
                short_name(status.get("factory")),
                f"{_count(status.get('running_processors', status.get('running_cpus')))}"
                f"/{_count(status.get('max_processors', status.get('total_cpus')))}",
                f"{_count(status.get('running_machines'))}/{_count(status.get('max_machines', status.get('total_machines')))}",
                "-" if load is None else f"{load:.2f}",
                human_kilobytes(_number(status.get("root_disk_avail_kb"))),
                human_kilobytes(_number(status.get("daemon_disk_avail_kb", status.get("vac_disk_avail_kb")))),
                f"{human_kilobytes(_number(status.get('mem_used_kb')))}/{human_kilobytes(_number(status.get('mem_total_kb')))}",
                words[1] if len(words) > 1 and words[0] == "Vac" else version,
            ]
        )
    headers = ["FACTORY", "PROCS", "MACHINES", "LOAD", "ROOT FREE", "VAC FREE", "MEMORY", "VERSION"]
    return format_table(headers, rows, right=(1, 2, 3, 4, 5, 6))


# ---------------------------------------------------------------------- status.json


def status_report(document: Mapping[str, Any], now: float) -> str:
    """`vac status`: this factory's last pass as status.json recorded it."""
    status_time = _number(document.get("time"))
    census = document.get("census")
    lines = [
        f"{document.get('factory') or '-'} in space {document.get('space') or '-'}, "
        f"last pass {local_time(status_time, with_seconds=True)} "
        f"({human_duration(None if status_time is None else now - status_time)} ago)",
        f"Processors: {_count(document.get('running_processors'))}/{_count(document.get('total_processors'))} running"
        f"   Draining: {'yes' if document.get('draining') else 'no'}"
        f"   Gate: {document.get('gate') or 'none'}",
    ]
    if isinstance(census, Mapping):
        lines.append(
            f"Census: heard {_count(census.get('heard'))} of {_count(census.get('expected'))} factories"
            f" in {_number(census.get('duration_seconds')) or 0.0:.2f}s"
        )
    for key, label in (("last_error", "Last error"), ("config_error", "Configuration error"), ("observe_error", "Observe error")):
        if document.get(key):
            lines.append(f"{label}: {str(document[key]).splitlines()[0]}")

    slot_rows = []
    for slot in document.get("slots") or ():
        state = str(slot.get("state") or "-")
        row = [
            _count(slot.get("ordinal")),
            short_name(slot.get("name")),
            str(slot.get("machinetype") or "-"),
            state,
            _count(slot.get("processors")),
        ]
        started, created = _number(slot.get("started_time")), _number(slot.get("created_time"))
        if state in ("Running", "Stopping", "Paused") and started:
            row += [human_duration(now - started), human_duration(_number(slot.get("cpu_seconds")) or 0.0)]
        elif state == "Starting" and created:
            row += [human_duration(now - created), ""]
        elif slot.get("shutdown_message"):
            row.append(Span(_quoted(slot.get("shutdown_message"))))
        slot_rows.append(row)

    machinetype_rows, outcome_rows = [], []
    for name, values in sorted((document.get("machinetypes") or {}).items()):
        until = _number(values.get("backoff_until"))
        in_force = until is not None and status_time is not None and until > status_time
        machinetype_rows.append(
            [
                name,
                f"{_number(values.get('target_share')) or 0.0:g}",
                _count(values.get("running_machines")),
                _count(values.get("running_processors")),
                f"{_number(values.get('running_hs06')) or 0.0:.1f}",
                local_time(until, with_seconds=True) if in_force else "-",
            ]
        )
        outcome = values.get("last_outcome")
        if isinstance(outcome, Mapping) and outcome.get("message"):
            outcome_rows.append(
                [name, local_time(_number(outcome.get("time"))), short_name(outcome.get("machine")), _quoted(outcome.get("message"))]
            )

    heartbeat_rows = []
    for component, beat in sorted((document.get("heartbeats") or {}).items()):
        beat_time = _number(beat)
        heartbeat_rows.append(
            [component, local_time(beat_time, with_seconds=True), human_duration(now - beat_time) if beat_time else "never"]
        )

    sections = [
        "\n".join(lines) + "\n",
        format_table(["SLOT", "MACHINE", "MACHINETYPE", "STATE", "PROCS", "UP", "CPU"], slot_rows, right=(0, 4, 5, 6)),
        format_table(
            ["MACHINETYPE", "SHARE", "MACHINES", "PROCS", "HS06", "BACKED OFF UNTIL"], machinetype_rows, right=(1, 2, 3, 4)
        ),
    ]
    if outcome_rows:
        sections.append(format_table(["LAST OUTCOME", "TIME", "MACHINE", "MESSAGE"], outcome_rows))
    sections.append(format_table(["COMPONENT", "LAST HEARTBEAT", "AGE"], heartbeat_rows, right=(2,)))
    return "\n".join(sections)


# ---------------------------------------------------------------------- remote commands


@dataclasses.dataclass(frozen=True)
class Gathered:
    """What a remote command heard: wire-form status objects, and who stayed silent."""

    statuses: tuple[Mapping[str, Any], ...]
    silent: tuple[str, ...]
    incomplete: tuple[tuple[str, int, int], ...]  # (factory, heard, expected)
    unresolved: tuple[str, ...] = ()


def canonical_factory_name(name: str, settings: Settings) -> str:
    """As vac.conf's `factories`: lower case, `.` is this factory, a bare name gets our domain."""
    if name.strip() == ".":
        return settings.factory_name
    lowered = name.strip().lower().rstrip(".")
    domain = settings.factory_name.partition(".")[2]
    return f"{lowered}.{domain}" if "." not in lowered and domain else lowered


def factory_addresses(
    names: Sequence[str], configured: Sequence[FactoryAddress], resolve: Callable[[str], list[str]]
) -> dict[str, list[str]]:
    """Each factory's addresses: its configured `name=address`, else DNS (may be empty)."""
    fixed = {factory.name: factory.address for factory in configured if factory.address}
    return {name: [fixed[name]] if name in fixed else resolve(name) for name in names}


def resolve_host(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    except OSError:
        return []
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


def gather(
    kind: MessageType,
    settings: Settings,
    space: str,
    names: Sequence[str],
    timeout_seconds: float,
    authenticator: Optional[Authenticator],
    resolve: Callable[[str], list[str]] = resolve_host,
) -> Gathered:
    """Run one census of `kind` over `names` and return the replies in wire form."""
    addresses = factory_addresses(names, settings.factories, resolve)
    salt = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    census = Census(
        kind, space, list(names), time.monotonic(), deadline_seconds=timeout_seconds, salt=salt, daemon_version=CLIENT_VERSION
    )
    with CensusSockets() as sockets:
        result = run_census(census, sockets, addresses, port=settings.vacquery_port, authenticator=authenticator)
    unresolved = tuple(name for name, found in addresses.items() if not found)
    return dataclasses.replace(_gathered(result), unresolved=unresolved)


def _gathered(result: CensusResult) -> Gathered:
    statuses: list[Mapping[str, Any]] = []
    incomplete = []
    for name in result.factories:
        replies: Sequence[Reply] = result.replies.get(name, ())
        statuses += [json.loads(encode_reply(reply)) for reply in replies]
        expected = result.expected.get(name)
        if replies and name not in result.complete and expected is not None:
            incomplete.append((name, len(replies), expected))
    return Gathered(tuple(statuses), result.silent, tuple(incomplete))


def run_remote(command: str, arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    settings = _load_settings(paths)
    words = list(arguments.words)
    machinetype: Optional[str] = None
    if command in ("machinetypes", "machinetype"):
        # Machinetype names never contain a dot (§1.1); factory names given here must.
        if words and "." not in words[0]:
            machinetype = words.pop(0)
        elif command == "machinetype":
            print("vac machinetype needs a machinetype NAME", file=err)
            return 1
    space = arguments.space or settings.vac_space
    timeout = arguments.timeout if arguments.timeout is not None else settings.udp_timeout_seconds
    if words:
        listed = [canonical_factory_name(word, settings) for word in words]
    else:
        listed = [factory.name for factory in settings.factories] or [settings.factory_name]
    names = list(dict.fromkeys(listed))
    gathered = gather(REMOTE_KINDS[command], settings, space, names, timeout, _authenticator(settings, paths, err))

    if arguments.json:
        ordered = sorted(
            gathered.statuses,
            key=lambda status: (str(status.get("factory")), str(status.get("machine", status.get("machinetype", "")))),
        )
        if machinetype is not None:
            ordered = [status for status in ordered if status.get("machinetype") == machinetype]
        out.write(json.dumps(ordered, indent=1) + "\n")
    elif gathered.statuses:  # when nobody answered, stderr says so and no empty table is printed
        if command == "machines":
            out.write(machines_table(gathered.statuses, now))
        elif command == "factories":
            out.write(factories_table(gathered.statuses))
        else:
            out.write(machinetypes_table(gathered.statuses, machinetype))

    if gathered.unresolved:
        print(f"no address for: {' '.join(sorted(gathered.unresolved))}", file=err)
    silent = sorted(set(gathered.silent) - set(gathered.unresolved))
    if silent:
        print(f"no answer from: {' '.join(silent)}", file=err)
    for name, heard, expected in gathered.incomplete:
        print(f"incomplete answer from {name}: {heard} of {expected}", file=err)
    if len(gathered.silent) == len(names):
        print("no factory answered", file=err)
        return 1
    return 0


def _authenticator(settings: Settings, paths: Paths, err: TextIO) -> Optional[Authenticator]:
    """Sign queries with the site key if one is configured and readable by this user."""
    if not settings.vacquery_key_file:
        return None
    try:
        return authenticator_from_settings(settings)
    except KeyFileError as error:
        print(f"warning: sending unsigned queries: {error}", file=err)
        return None


# ---------------------------------------------------------------------- local commands


def run_status(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    raw_text = read_text_or_none(paths.status_file)
    if raw_text is None:
        print(f"no status yet: {paths.status_file} does not exist (is vacd running?)", file=err)
        return 1
    try:
        document = json.loads(raw_text)
    except ValueError as error:
        raise CommandError(f"{paths.status_file}: not JSON: {error}") from error
    if arguments.json:
        out.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    else:
        out.write(status_report(document, now))
    return 0


def wake_factory(paths: Paths) -> bool:
    """Ask a running vacd for a pass now (SIGUSR1 to the pid in its pid file); False if none runs.

    vacd reads the drain file at every pass, so creation stops or resumes at once.
    """
    raw_text = read_text_or_none(paths.pid_file)
    if raw_text is None or not (raw_text.strip().isascii() and raw_text.strip().isdigit()):
        return False
    try:
        os.kill(int(raw_text.strip()), signal.SIGUSR1)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_drain(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    if not paths.state_dir.is_dir():
        raise CommandError(f"{paths.state_dir} does not exist: is vac installed here?")
    write_atomic(paths.drain_file, f"{int(now)}\n")
    wake_factory(paths)
    print("draining: no new machines will be created; running ones finish normally (vac undrain ends it)", file=out)
    return 0


def run_undrain(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    try:
        paths.drain_file.unlink()
        wake_factory(paths)
        print("not draining: machines will be created again", file=out)
    except FileNotFoundError:
        print("was not draining (a `draining` option in vac.conf still applies)", file=out)
    return 0


def run_apel_sync(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    settings = _load_settings(paths)
    try:
        written = apel_sync(paths, list(arguments.words), now, settings)
    except ApelError as error:
        raise CommandError(str(error)) from error
    print(written, file=out)
    return 0


def run_squid_conf(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    if len(arguments.words) != 2:
        print("usage: vac squid-conf IN OUT", file=err)
        return 2
    settings = _load_settings(paths)
    try:
        squid_conf(Path(arguments.words[0]), Path(arguments.words[1]), settings)
    except OSError as error:
        raise CommandError(f"squid-conf: {error}") from error
    return 0


def run_proxy_init(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    if not arguments.cert or not arguments.key:
        print("vac proxy-init needs --cert FILE and --key FILE", file=err)
        return 1
    try:
        issuer = load_issuer_files(Path(arguments.cert), Path(arguments.key))
        proxy = make_proxy(issuer, now=int(now), expiry_time=int(now) + PROXY_LIFETIME_SECONDS, legacy=arguments.legacy_proxy)
    except ProxyError as error:
        raise CommandError(str(error)) from error
    out.write(proxy)
    return 0


def run_scan(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    print("vac scan is now vac machines", file=err)
    return 1


LOCAL_RUNNERS = {
    "status": run_status,
    "drain": run_drain,
    "undrain": run_undrain,
    "apel-sync": run_apel_sync,
    "squid-conf": run_squid_conf,
    "proxy-init": run_proxy_init,
    "scan": run_scan,
}


def _load_settings(paths: Paths) -> Settings:
    config: Config = load_config(paths)
    return config.settings


# ---------------------------------------------------------------------- arguments


def _option_parser(suppress: bool) -> argparse.ArgumentParser:
    """The options; with `suppress`, unset ones leave no attribute (for after the command)."""
    default: Any = argparse.SUPPRESS if suppress else None
    flag: Any = argparse.SUPPRESS if suppress else False
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--prefix", default=default, help="root of this factory's files (default $VAC_PREFIX or /)")
    parser.add_argument("-s", "--space", default=default, help="ask this space instead of vac_space")
    parser.add_argument("-t", "--timeout", type=float, default=default, help="seconds to wait for answers (udp_timeout_seconds)")
    parser.add_argument("-J", "--json", action="store_true", default=flag, help="print a JSON array of the status objects")
    parser.add_argument("-H", "--include-hs06", action="store_true", default=flag, help="accepted for Vac 03 compatibility")
    parser.add_argument("-l", "--legacy-proxy", action="store_true", default=flag, help="proxy-init: make a legacy proxy")
    parser.add_argument("-c", "--cert", default=default, help="proxy-init: issuing certificate file")
    parser.add_argument("-k", "--key", default=default, help="proxy-init: issuing key file")
    return parser


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vac",
        parents=[_option_parser(suppress=False)],
        description="Query a vac space's factories, or look after this factory.",
        epilog="commands: machines [factory...], machinetypes [NAME] [factory...], factories [factory...], "
        "status, drain, undrain, apel-sync [YYYYMM...], squid-conf IN OUT, proxy-init",
    )
    parser.add_argument("command", nargs="?")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    after = argparse.ArgumentParser(prog=f"vac {arguments.command}", parents=[_option_parser(suppress=True)])
    after.add_argument("words", nargs="*")
    later = after.parse_args(arguments.rest)
    for name, value in vars(later).items():
        setattr(arguments, name, value)
    return arguments


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    arguments = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    command = arguments.command
    if command not in REMOTE_KINDS and command not in LOCAL_RUNNERS:
        print(UNRECOGNISED, file=err)
        return 1
    paths = Paths.from_prefix(arguments.prefix)
    now = time.time()
    try:
        if command in REMOTE_KINDS:
            return run_remote(command, arguments, paths, now, out, err)
        return LOCAL_RUNNERS[command](arguments, paths, now, out, err)
    except ConfigErrors as errors:
        print(f"vac: the configuration is not valid:\n{errors}", file=err)
        return 1
    except (CommandError, VacError) as error:
        print(f"vac {command}: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
