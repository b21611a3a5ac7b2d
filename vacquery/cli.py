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
from vacquery.tables import factories_table, machines_table, machinetypes_table, status_report
from vacquery.transport import CensusSockets, run_census

CLIENT_VERSION = f"{MANAGER_VERSION} vac-command"
UNRECOGNISED = "Must give a recognised command argument to vac!"
# Vac's `vac proxy-init` made 12-hour proxies (Appendix C).
PROXY_LIFETIME_SECONDS = 43200
REMOTE_KINDS = {
    "machines": MessageType.MACHINES_QUERY,
    "machinetypes": MessageType.MACHINETYPES_QUERY,
    "machinetype": MessageType.MACHINETYPES_QUERY,
    "factories": MessageType.FACTORY_QUERY,
}
LOCAL_COMMANDS = ("status", "drain", "undrain", "apel-sync", "squid-conf", "proxy-init", "scan")


class CommandError(VacError):
    """A command cannot run; the message is printed to stderr and `vac` exits 1."""


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
