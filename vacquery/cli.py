"""The `vac` command's space listings: ask the space's factories what they run.

Rules (behaviour reference §9, acceptance 45):
- `machines`, `machinetypes` (`machinetype NAME` is its alias) and `factories` run one
  census (the `vacquery.client` state machine over `vacquery.transport`) with a hard
  deadline of `-t` or `udp_timeout_seconds`; a factory's address is its configured
  `name=address`, else what DNS says. Factories that did not answer are named on stderr;
  the exit code is 1 only when none answered with a status.
- A factory that limited its replies (this host is not one of its factories and did
  not sign with the site key; or its byte budget for us is spent, vacquery/responder.py)
  is named on stderr with its reason and how many statuses came, never left to look
  like loss.
- Plain output is aligned columns under a header row with human units, fitting 80
  columns; `-J` prints one JSON array of the status objects as they travel on the wire
  (every Vac 03 key, acceptance 45), for scripts. Formatting is pure (`*_table`
  functions take `now`), so the layouts have golden tests.
- This module stands alone, as a protocol library should (issue 9 item 1): it imports
  nothing from vacd. What it needs of vac.conf arrives as a `SpaceSettings` and an
  optional `Authenticator`; `vacd.cli`, the `vac` entry point, reads them from vac.conf,
  parses the command line and runs the factory-local verbs itself.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, TextIO

from vacquery.client import Census, CensusResult
from vacquery.codec import encode_reply
from vacquery.messages import MessageType, Reply
from vacquery.transport import CensusSockets, run_census

if TYPE_CHECKING:
    # Only a listing with a site key loads vacquery.auth (vacd.cli builds the Authenticator).
    from vacquery.auth import Authenticator

LISTING_KINDS = {
    "machines": MessageType.MACHINES_QUERY,
    "machinetypes": MessageType.MACHINETYPES_QUERY,
    "machinetype": MessageType.MACHINETYPES_QUERY,
    "factories": MessageType.FACTORY_QUERY,
}


@dataclasses.dataclass(frozen=True)
class PeerAddress:
    """One factory of the space: its canonical FQDN and, optionally, a fixed address (no DNS)."""

    name: str
    address: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SpaceSettings:
    """What a space listing needs to know of the site, as vac.conf's [settings] give it."""

    space: str  # vac_space, unless -s names another
    factory_name: str  # this factory: `.` means it, and its domain completes bare names
    factories: tuple[PeerAddress, ...]  # asked when no factory is named; empty: only this factory
    port: int  # vacquery_port
    timeout_seconds: float  # udp_timeout_seconds, unless -t says otherwise


@dataclasses.dataclass(frozen=True)
class Gathered:
    """What a listing heard: wire-form status objects, and who stayed silent."""

    statuses: tuple[Mapping[str, Any], ...]
    silent: tuple[str, ...]
    incomplete: tuple[tuple[str, int, int], ...]  # (factory, heard, expected)
    unresolved: tuple[str, ...] = ()
    # (factory, reason, heard, expected or None): factories that said they limited their answer.
    limited: tuple[tuple[str, str, int, Optional[int]], ...] = ()


def canonical_factory_name(name: str, factory_name: str) -> str:
    """As vac.conf's `factories`: lower case, `.` is this factory, a bare name gets our domain."""
    if name.strip() == ".":
        return factory_name
    lowered = name.strip().lower().rstrip(".")
    domain = factory_name.partition(".")[2]
    return f"{lowered}.{domain}" if "." not in lowered and domain else lowered


def factory_addresses(
    names: Sequence[str], configured: Sequence[PeerAddress], resolve: Callable[[str], list[str]]
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
    settings: SpaceSettings,
    space: str,
    names: Sequence[str],
    timeout_seconds: float,
    authenticator: Optional[Authenticator],
    resolve: Callable[[str], list[str]] = resolve_host,
    *,
    client_version: str,
) -> Gathered:
    """Run one census of `kind` over `names` and return the replies in wire form.

    `client_version` is what our queries carry as daemon_version (Vac sent "Vac <version>").
    """
    addresses = factory_addresses(names, settings.factories, resolve)
    # os.urandom is what secrets.token_bytes returns, without loading random and hmac.
    salt = base64.b64encode(os.urandom(32)).decode("ascii")
    census = Census(
        kind, space, list(names), time.monotonic(), deadline_seconds=timeout_seconds, salt=salt, daemon_version=client_version
    )
    with CensusSockets() as sockets:
        result = run_census(census, sockets, addresses, port=settings.port, authenticator=authenticator)
    unresolved = tuple(name for name, found in addresses.items() if not found)
    return dataclasses.replace(_gathered(result), unresolved=unresolved)


def _gathered(result: CensusResult) -> Gathered:
    statuses: list[Mapping[str, Any]] = []
    incomplete = []
    limited = []
    for name in result.factories:
        replies: Sequence[Reply] = result.replies.get(name, ())
        # The wire form as Vac 03 sent it: the responder's limit marker is said on stderr.
        statuses += [json.loads(encode_reply(dataclasses.replace(reply, limited=None))) for reply in replies]
        expected = result.expected.get(name)
        if name in result.limited:
            limited.append((name, result.limited[name], len(replies), expected))
        elif replies and name not in result.complete and expected is not None:
            incomplete.append((name, len(replies), expected))
    return Gathered(tuple(statuses), result.silent, tuple(incomplete), limited=tuple(limited))


LIMIT_EXPLANATIONS = {
    "unlisted": "this host is not one of its factories and did not sign its queries; "
                "set vacquery_key_file to the site key here, or run vac on a factory",
    "budget": "its reply budget for this host is spent for now; try again in a minute",
}


def limited_line(name: str, reason: str, heard: int, expected: Optional[int]) -> str:
    """The stderr line for a factory that limited its answer."""
    of = "" if expected is None else f" of {expected}"
    why = LIMIT_EXPLANATIONS.get(reason, f"reason {reason}")
    return f"replies limited by {name}: {heard}{of} statuses sent ({why})"


def run_listing(
    command: str,
    words: Sequence[str],
    settings: SpaceSettings,
    authenticator: Optional[Authenticator],
    *,
    client_version: str,
    now: float,
    out: TextIO,
    err: TextIO,
    json_output: bool = False,
    space: Optional[str] = None,
    timeout_seconds: Optional[float] = None,
) -> int:
    """`vac COMMAND [NAME] [factory...]` for a listing COMMAND of LISTING_KINDS; the exit code.

    `space` and `timeout_seconds` are the -s and -t options (None: the settings' values).
    """
    remaining = list(words)
    machinetype: Optional[str] = None
    if command in ("machinetypes", "machinetype"):
        # Machinetype names never contain a dot (§1.1); factory names given here must.
        if remaining and "." not in remaining[0]:
            machinetype = remaining.pop(0)
        elif command == "machinetype":
            print("vac machinetype needs a machinetype NAME", file=err)
            return 1
    if remaining:
        listed = [canonical_factory_name(word, settings.factory_name) for word in remaining]
    else:
        listed = [factory.name for factory in settings.factories] or [settings.factory_name]
    names = list(dict.fromkeys(listed))
    gathered = gather(
        LISTING_KINDS[command],
        settings,
        space or settings.space,
        names,
        timeout_seconds if timeout_seconds is not None else settings.timeout_seconds,
        authenticator,
        client_version=client_version,
    )

    if json_output:
        ordered = sorted(
            gathered.statuses,
            key=lambda status: (str(status.get("factory")), str(status.get("machine", status.get("machinetype", "")))),
        )
        if machinetype is not None:
            ordered = [status for status in ordered if status.get("machinetype") == machinetype]
        out.write(json.dumps(ordered, indent=1) + "\n")
    elif gathered.statuses:  # when nobody answered, stderr says so and no empty table is printed
        # Loaded once the answers are in (with datetime): -J and a silent space never need it.
        from vacquery.tables import factories_table, machines_table, machinetypes_table

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
    for limited in gathered.limited:
        print(limited_line(*limited), file=err)
    if not gathered.statuses:
        if len(gathered.silent) == len(names):
            print("no factory answered", file=err)
        return 1
    return 0
