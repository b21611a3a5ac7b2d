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
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional, Sequence, TextIO

from vacd import MANAGER_VERSION
from vacd.config import Settings, load_config
from vacd.errors import ConfigErrors, VacError, VacqueryError
from vacd.paths import Paths
from vacquery.auth import Authenticator, KeyFileError, authenticator_from_settings
from vacquery.cli import LISTING_KINDS, PeerAddress, SpaceSettings, run_listing

# What our queries carry as daemon_version (Vac's client sent "Vac <version>", §3.2).
CLIENT_VERSION = f"{MANAGER_VERSION} vac-command"
UNRECOGNISED = "Must give a recognised command argument to vac!"
# The verbs of vacd.localcommands.LOCAL_RUNNERS, named here so that an unknown command is
# refused, and a listing runs, without importing them.
LOCAL_COMMANDS = ("status", "drain", "undrain", "apel-sync", "squid-conf", "proxy-init", "scan")


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
    """Sign queries with the site key if one is configured and readable by this user."""
    if not settings.vacquery_key_file:
        return None
    try:
        return authenticator_from_settings(settings)
    except KeyFileError as error:
        print(f"warning: sending unsigned queries: {error}", file=err)
        return None


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
    if command not in LISTING_KINDS and command not in LOCAL_COMMANDS:
        print(UNRECOGNISED, file=err)
        return 1
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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
