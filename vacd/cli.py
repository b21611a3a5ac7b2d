"""The `vac` command: the space listings through vacquery, and this factory's local verbs.

Rules (behaviour reference §9, acceptance 45; issue 9 item 1):
- Vac 03's command line is kept: `vac [options] command [args]`, options before or after
  the command, `machinetype NAME` as an alias of `machinetypes NAME`, `scan` as a hint,
  and Vac's exit codes (1 for no or an unknown command, 2 for a wrong argument count).
- The space listings (`machines`, `machinetypes`, `factories`) are vacquery's
  (`vacquery.cli.run_listing`, which imports nothing from vacd). This module reads what
  they need from vac.conf (`factories`, `vacquery_port`, `vac_space`,
  `udp_timeout_seconds`, the site key) and hands it over, so `vac machines` on a factory
  asks /etc/vac.conf's factories, as it always did.
- The local verbs (`status`, `drain`, `undrain`, `apel-sync`, `squid-conf`, `proxy-init`,
  and the `scan` hint) live in `vacd.localcommands`, imported only when one runs: a
  listing loads neither the X.509 code (cryptography) nor the APEL code.
- Commands as admins expect (issue 12 item 6): one argparse subparser per command (VERBS),
  so `vac COMMAND --help` and `vac help COMMAND` show its arguments and the options it
  uses (every option is still accepted with every command, as Vac's were); `vac help` and
  `vac --help` list the commands and options; `vac` alone, or an unknown command, prints
  Vac's message and then the commands, and exits 1; `--version` prints `vac VERSION`.
  Extra words after a command that takes none are an argument-count error, exit 2.
  etc/bash-completion/vac completes the same commands and options (a test keeps them so).
- A site key this user cannot read stops a listing at once, naming the file, when the
  space requires signed queries; the factories would drop unsigned ones (vacquery_auth).
  Without a key, a listing does not load vacquery.auth.
- A listing loads only what it uses before its first datagram (issue 15 item 4; the guard is
  tests/vacd/test_cli.py): the installed `vac` script enters through vacd.vacentry, which
  loads this module with the garbage collector paused.
- A file of the factory this user may not read or write ends the command with its name
  and exit 1, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, TextIO

from vacd import MANAGER_VERSION, VERSION
from vacd.config import Settings, load_config
from vacd.errors import ConfigErrors, VacError, VacqueryError
from vacd.paths import Paths
from vacquery.cli import LISTING_KINDS, PeerAddress, SpaceSettings, run_listing
from vacquery.errors import KeyFileError

if TYPE_CHECKING:
    from vacquery.auth import Authenticator

# What our queries carry as daemon_version (Vac's client sent "Vac <version>", §3.2).
CLIENT_VERSION = f"{MANAGER_VERSION} vac-command"
UNRECOGNISED = "Must give a recognised command argument to vac!"


class KeyFileUnusable(VacError):
    """The site key cannot be read, and the space accepts only signed queries."""


def space_settings(settings: Settings) -> SpaceSettings:
    """What a space listing needs of vac.conf's [settings]."""
    return SpaceSettings(
        space=settings.vac_space,
        factory_name=settings.factory_name,
        factories=tuple(PeerAddress(factory.name, factory.address) for factory in settings.factories),
        port=settings.vacquery_port,
        timeout_seconds=settings.udp_timeout_seconds,
    )


def listing_authenticator(settings: Settings, err: TextIO) -> Optional[Authenticator]:
    """Sign queries with the site key if one is configured; None when there is none.

    A key this user cannot read (a non-root admin, a key file mode 0600) is refused with
    its file named when `vacquery_auth = required` (the default): the factories would drop
    every unsigned query and the listing would only end in "no factory answered". With
    `optional` the queries go unsigned, with a warning that names the file.
    """
    if not settings.vacquery_key_file:
        return None
    # Loaded only here: a listing without a site key never needs it (issue 15 item 4).
    from vacquery.auth import AuthMode, authenticator_from_settings, mode_from_settings

    try:
        return authenticator_from_settings(settings)
    except KeyFileError as error:
        if mode_from_settings(settings) is AuthMode.OPTIONAL:
            print(f"warning: sending unsigned queries (vacquery_auth = optional): {error}", file=err)
            return None
        raise KeyFileUnusable(
            f"{error}\nthe factories drop unsigned queries (vacquery_auth = required): run vac as root, "
            "or as a user who may read the key file"
        ) from error


def run_space_listing(command: str, arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO,
                      err: TextIO) -> int:
    settings = load_config(paths).settings
    return run_listing(
        command,
        list(arguments.words),
        space_settings(settings),
        listing_authenticator(settings, err),
        client_version=CLIENT_VERSION,
        now=now,
        out=out,
        err=err,
        json_output=arguments.json,
        space=arguments.space,
        timeout_seconds=arguments.timeout,
    )


# ---------------------------------------------------------------------- arguments


@dataclasses.dataclass(frozen=True)
class Verb:
    """One `vac` command: its subparser, and its line in `vac help` and in `vac` alone."""

    name: str
    arguments: str  # as usage shows them, "" for none
    summary: str
    option_groups: frozenset[str]  # the groups of _OPTIONS its --help shows (all are accepted)
    aliases: tuple[str, ...] = ()


LISTING_OPTIONS = frozenset({"listing", "json", "hs06"})
VERBS = (
    Verb("machines", "[FACTORY ...]", "every slot of the factories", LISTING_OPTIONS),
    Verb("machinetypes", "[NAME] [FACTORY ...]", "the machinetypes of the factories", LISTING_OPTIONS,
         aliases=("machinetype",)),
    Verb("factories", "[FACTORY ...]", "each factory's load, disk and version", LISTING_OPTIONS),
    Verb("status", "", "this factory's last pass (status.json)", frozenset({"json"})),
    Verb("drain", "", "create no new machines here", frozenset()),
    Verb("undrain", "", "end vac drain", frozenset()),
    Verb("apel-sync", "[YYYYMM ...]", "write APEL sync records", frozenset()),
    Verb("squid-conf", "IN OUT", "write the space's Squid configuration", frozenset()),
    Verb("proxy-init", "", "print a 12-hour proxy (-c, -k, -l)", frozenset({"proxy"})),
    Verb("scan", "", "Vac 03's scan: now vac machines", frozenset()),
    Verb("help", "[COMMAND]", "list commands, or COMMAND's options", frozenset()),
)
# The verbs of vacd.localcommands.LOCAL_RUNNERS, named here so that a listing runs without
# importing them.
LOCAL_COMMANDS = tuple(verb.name for verb in VERBS if verb.name not in LISTING_KINDS and verb.name != "help")
HELP_HINT = "`vac help COMMAND` or `vac COMMAND --help` shows its arguments and options."


class UnrecognisedCommand(Exception):
    """The command line names no command, or one vac does not have (Vac's message, exit 1)."""


class _VacArgumentParser(argparse.ArgumentParser):
    # argparse refuses an unknown subcommand with its own message and exit 2; Vac 03 printed
    # UNRECOGNISED and exited 1, and scripts may test for that. _check_value is where argparse
    # tests a subcommand against the choices (the same in Python 3.9 to 3.13).
    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            raise UnrecognisedCommand(str(value))
        super()._check_value(action, value)


class _MetavarCheckFormatter(argparse.HelpFormatter):
    """The formatter argparse makes at each add_argument, only to check the argument's metavar.

    Given a width, it does not ask the terminal for one, which loads shutil (and with it
    zlib, bz2 and lzma: 3 ms of every `vac machines`, issue 15 item 4). build_parsers hands
    the parsers argparse's own formatter once their arguments are in, so that help, usage
    and errors are sized to the terminal as before.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=80)


# The options, by group: (flags, keyword arguments of add_argument).
_OPTIONS: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...] = (
    ("prefix", ("--prefix",), {"help": "root of this factory's files (default $VAC_PREFIX or /)"}),
    ("listing", ("-s", "--space"), {"metavar": "SPACE", "help": "ask this space instead of vac_space"}),
    ("listing", ("-t", "--timeout"),
     {"type": float, "metavar": "SECONDS", "help": "seconds to wait for answers (default udp_timeout_seconds)"}),
    ("json", ("-J", "--json"), {"action": "store_true", "help": "print JSON: the status objects, or status.json"}),
    ("hs06", ("-H", "--include-hs06"), {"action": "store_true", "help": "accepted for Vac 03 compatibility"}),
    ("proxy", ("-l", "--legacy-proxy"), {"action": "store_true", "help": "proxy-init: make a legacy proxy"}),
    ("proxy", ("-c", "--cert"), {"metavar": "FILE", "help": "proxy-init: issuing certificate file"}),
    ("proxy", ("-k", "--key"), {"metavar": "FILE", "help": "proxy-init: issuing key file"}),
)


def _add_options(parser: argparse.ArgumentParser, after_command: bool, shown: frozenset[str]) -> None:
    """Vac 03 took every option before or after any command, so every parser accepts all.

    After the command, an unset option leaves no attribute (SUPPRESS), so it does not undo
    one given before the command; options of other commands are accepted but not listed.
    """
    for group, flags, keywords in _OPTIONS:
        keywords = dict(keywords)
        if after_command:
            keywords["default"] = argparse.SUPPRESS
            if group != "prefix" and group not in shown:
                keywords["help"] = argparse.SUPPRESS
        elif keywords.get("action") == "store_true":
            keywords["default"] = False
        parser.add_argument(*flags, **keywords)


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `vac` parser, and each command's subparser by its name (and aliases)."""
    parser = _VacArgumentParser(
        prog="vac",
        usage="vac [options] COMMAND [arguments] [options]",
        description="Query a vac space's factories, or look after this factory.",
        epilog=HELP_HINT.replace("`", ""),
        formatter_class=_MetavarCheckFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    _add_options(parser, after_command=False, shown=frozenset())
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    verb_parsers: dict[str, argparse.ArgumentParser] = {}
    for verb in VERBS:
        usage = f"vac [options] {verb.name} [options]" + (f" {verb.arguments}" if verb.arguments else "")
        verb_parser = verbs.add_parser(verb.name, aliases=list(verb.aliases), help=verb.summary, usage=usage,
                                       description=verb.summary, formatter_class=_MetavarCheckFormatter)
        _add_options(verb_parser, after_command=True, shown=verb.option_groups)
        verb_parser.set_defaults(words=[])
        if verb.arguments:
            # The words are handed over as they come (vacquery.cli.run_listing tells NAME from
            # a factory by its dot, squid-conf counts its own for Vac's exit 2); usage names them.
            verb_parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
        verb_parsers.update(dict.fromkeys((verb.name, *verb.aliases), verb_parser))
    for built in (parser, *verb_parsers.values()):
        built.formatter_class = argparse.HelpFormatter
    return parser, verb_parsers


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; raises UnrecognisedCommand for no command or an unknown one."""
    arguments = build_parsers()[0].parse_args(argv)
    if arguments.command is None:
        raise UnrecognisedCommand("")
    return arguments


def commands_summary() -> str:
    """What `vac` alone prints after Vac's message: one line per command."""
    rows = [(" ".join(part for part in ("vac", verb.name, verb.arguments) if part), verb.summary) for verb in VERBS]
    width = max(len(usage) for usage, _ in rows)
    lines = ["commands:"] + [f"  {usage:<{width}}  {summary}" for usage, summary in rows]
    return "\n".join(lines) + "\n" + HELP_HINT + "\n"


def run_help(arguments: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`vac help`: every command and option; `vac help COMMAND`: that command's."""
    parser, verb_parsers = build_parsers()
    if not arguments.words:
        out.write(parser.format_help())
        return 0
    if len(arguments.words) > 1 or arguments.words[0] not in verb_parsers:
        print(f"vac help: no command {' '.join(arguments.words)!r}", file=err)
        err.write(commands_summary())
        return 2
    out.write(verb_parsers[arguments.words[0]].format_help())
    return 0


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        arguments = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    except UnrecognisedCommand:
        print(UNRECOGNISED, file=err)
        err.write(commands_summary())
        return 1
    command = arguments.command
    if command == "help":
        return run_help(arguments, out, err)
    paths = Paths.from_prefix(arguments.prefix)
    now = time.time()
    try:
        if command in LISTING_KINDS:
            return run_space_listing(command, arguments, paths, now, out, err)
        from vacd.localcommands import LOCAL_RUNNERS

        return LOCAL_RUNNERS[command](arguments, paths, now, out, err)
    except ConfigErrors as errors:
        print(f"vac: the configuration is not valid:\n{errors}", file=err)
        return 1
    except (VacError, VacqueryError) as error:  # vacd.localcommands.CommandError is a VacError
        print(f"vac {command}: {error}", file=err)
        return 1
    except OSError as error:  # a file of the factory this user may not read or write
        hint = " (run vac as root)" if isinstance(error, PermissionError) and os.geteuid() != 0 else ""
        where = f"{error.filename}: " if error.filename else ""
        print(f"vac {command}: {where}{error.strerror or error}{hint}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
