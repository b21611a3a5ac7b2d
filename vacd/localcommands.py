"""The `vac` command's factory-local verbs: they read and write only this factory's files.

Rules (behaviour reference §9; issue 9 item 1 moved them here from vacquery, which is the
protocol library and knows nothing of a factory's files):
- `status` prints status.json (`-J`: as it is), and first judges whether vacd runs: the pid
  file must name a live process whose loop or responder heartbeat is younger than
  STALE_HEARTBEAT_SECONDS. When vacd does not run it says so on stderr (why, and the age of
  the status it still prints) and exits 1, so `vac status` in a script or a cron job
  tells a stopped factory from a working one. The pid alone would be fooled by a pid file
  left by a killed vacd whose pid was reused; the heartbeats alone by a clock. Both are
  read only: vacd's flock on the pid file is not probed, since a probe that held the lock
  for an instant could make a vacd starting at that moment refuse to run.
- `drain`/`undrain` create and remove the
  drain file the factory checks every pass, and wake a running vacd at once (SIGUSR1);
  `apel-sync` writes the monthly APEL sync records; `squid-conf IN OUT` writes the Squid
  configuration of the space; `proxy-init` (needs `-c` and `-k`) prints a 12-hour proxy;
  `scan` only says it is now `vac machines`.
- Each runner takes the parsed arguments, the factory's paths, `now`, and the two output
  streams, and returns the exit code; a failure it explains is a `CommandError`, which
  `vacd.cli.main` prints to stderr with exit code 1.
- `vacd.cli` imports this module only when a local verb runs, so the space listings do not
  load cryptography (vacd.proxy) or the APEL code (vacd.accounting).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
from pathlib import Path
from typing import Callable, Optional, TextIO

from vacd.accounting import ApelError, apel_sync
from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.config import Settings, load_config
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.proxy import ProxyError, load_issuer_files, make_proxy
from vacd.squidconf import squid_conf
from vacquery.tables import status_report

# Vac's `vac proxy-init` made 12-hour proxies (Appendix C).
PROXY_LIFETIME_SECONDS = 43200
# The loop beats at least every cycle (30 s) or pass-error backoff (60 s), the responder
# more often; ten minutes is check-vacd's default critical age for a heartbeat.
STALE_HEARTBEAT_SECONDS = 600.0
# The heartbeats that say vacd's process is alive whatever its passes do.
LIVENESS_HEARTBEATS = ("loop", "responder")

LocalRunner = Callable[[argparse.Namespace, Paths, float, TextIO, TextIO], int]


class CommandError(VacError):
    """A command cannot run; the message is printed to stderr and `vac` exits 1."""


def load_settings(paths: Paths) -> Settings:
    return load_config(paths).settings


@dataclasses.dataclass(frozen=True)
class VacdLiveness:
    """Whether vacd runs on this factory's files, and the words that say why not."""

    running: bool
    pid: Optional[int]
    reason: str  # "" when running


def read_pid(paths: Paths) -> Optional[int]:
    raw_text = read_text_or_none(paths.pid_file)
    pid_text = (raw_text or "").strip()
    return int(pid_text) if pid_text.isascii() and pid_text.isdigit() else None


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (vacd is root's, the admin may not be)
        return True
    return True


def read_heartbeat_time(paths: Paths, part: str) -> Optional[float]:
    try:
        return float((read_text_or_none(paths.heartbeat_file(part)) or "").split()[0])
    except (IndexError, ValueError, OSError):
        return None


def vacd_liveness(paths: Paths, now: float) -> VacdLiveness:
    """Judge from the pid file and the loop and responder heartbeats (see the module's rules)."""
    pid = read_pid(paths)
    if pid is None:
        if paths.pid_file.exists():
            return VacdLiveness(False, None, f"{paths.pid_file} holds no pid")
        return VacdLiveness(False, None, f"{paths.pid_file} does not exist")
    if not process_exists(pid):
        return VacdLiveness(False, pid, f"pid {pid} of {paths.pid_file} is not running (vacd stopped or was killed)")
    beats = [beat for beat in (read_heartbeat_time(paths, part) for part in LIVENESS_HEARTBEATS) if beat is not None]
    if not beats:
        return VacdLiveness(False, pid, f"pid {pid} is running, but vacd has written no loop or responder heartbeat")
    age = now - max(beats)
    if age > STALE_HEARTBEAT_SECONDS:
        return VacdLiveness(
            False, pid,
            f"pid {pid} is running, but vacd's loop and responder have not beaten for {format_age(age)} "
            "(vacd is stuck, or the pid is now another process's)",
        )
    return VacdLiveness(True, pid, "")


def format_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_status(arguments: argparse.Namespace, paths: Paths, now: float, out: TextIO, err: TextIO) -> int:
    liveness = vacd_liveness(paths, now)
    if not liveness.running:
        print(f"vacd is not running: {liveness.reason}", file=err)
    raw_text = read_text_or_none(paths.status_file)
    if raw_text is None:
        print(f"no status yet: {paths.status_file} does not exist", file=err)
        return 1
    try:
        document = json.loads(raw_text)
    except ValueError as error:
        raise CommandError(f"{paths.status_file}: not JSON: {error}") from error
    if not liveness.running:
        written = document.get("time") if isinstance(document, dict) else None
        when = f", written {format_age(now - written)} ago" if isinstance(written, (int, float)) else ""
        print(f"the last status vacd wrote follows{when}", file=err)
    if arguments.json:
        out.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    else:
        out.write(status_report(document, now))
    return 0 if liveness.running else 1


def wake_factory(paths: Paths) -> bool:
    """Ask a running vacd for a pass now (SIGUSR1 to the pid in its pid file); False if none runs.

    vacd reads the drain file at every pass, so creation stops or resumes at once.
    """
    pid = read_pid(paths)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
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
    settings = load_settings(paths)
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
    settings = load_settings(paths)
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


LOCAL_RUNNERS: dict[str, LocalRunner] = {
    "status": run_status,
    "drain": run_drain,
    "undrain": run_undrain,
    "apel-sync": run_apel_sync,
    "squid-conf": run_squid_conf,
    "proxy-init": run_proxy_init,
    "scan": run_scan,
}
