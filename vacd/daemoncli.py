"""The vacd command line: a one-shot check (--check-config, --check-host), or the daemon started.

Rules (design.md rule 6; §10.2):
- `vacd.daemon:main` stays the entry point (setup.cfg, the packaged /usr/sbin/vacd,
  `python -m vacd.daemon`): it runs this module's `main`.
- The one-shot checks change nothing and exit 0 when vacd can start, 1 with every problem
  printed otherwise. vacd.service runs `--check-config` as ExecStartPre=.
- Starting: the configuration is read before anything else (errors printed, exit 1), then
  logging is configured, the descriptor limit raised, and the pid file taken (a second
  vacd on the same state directory refuses to start), before vacd.daemon.Daemon runs.
- Only this module installs signal handlers. Stopping vacd (SIGTERM, SIGINT) never stops
  machines: they keep running and the next start adopts them (§10.2). SIGHUP re-opens the
  log file and re-reads the configuration at once; SIGUSR1 only wakes the loop (`vac
  drain` uses it).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional, TextIO

from vacd import VERSION
from vacd.config import effective_config_text, host_name, load_config
from vacd.errors import ConfigErrors, VacError, VacqueryError
from vacd.fdlimit import raise_fd_limit
from vacd.paths import Paths
from vacd.sdnotify import ServiceNotifier

log = logging.getLogger(__name__)


class PidFile:
    """An flock'ed pid file: a second vacd on the same state directory refuses to start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Optional[TextIO] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip()
            handle.close()
            raise SystemExit(f"vacd: another vacd (pid {other or 'unknown'}) holds {self.path}")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.handle.close()
            self.handle = None


def check_config(paths: Paths, *, logs_to_stderr: bool = False) -> int:
    """`vacd --check-config`: print the effective configuration and exit 0, or every error and exit 1.

    Besides the configuration, what start-up needs is checked (vacd.startupcheck): key files,
    the VacQuery and metrics ports, the log file. vacd.service runs this as ExecStartPre=.
    """
    try:
        config = load_config(paths)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        return 1
    from vacd.pipefetch import PipeFetcher

    # Pipe machinetypes as the factory last cached them; --check-config never fetches.
    config = PipeFetcher(paths).apply(config, may_fetch=False)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from vacd.qemuaccess import config_access_warnings, host_qemu_identity

    # A file QEMU cannot open fails every creation of its machinetype (issue 8 item 12).
    identity = host_qemu_identity()
    for warning in config_access_warnings(config, identity) if identity is not None else []:
        print(f"warning: {warning}", file=sys.stderr)
    from vacd.startupcheck import startup_findings

    findings = startup_findings(paths, config.settings, logs_to_stderr=logs_to_stderr)
    for warning in findings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if findings.errors:
        for startup_problem in findings.errors:
            print(startup_problem, file=sys.stderr)
        print("vacd: the configuration is valid but vacd cannot start: fix the above", file=sys.stderr)
        return 1
    sys.stdout.write(effective_config_text(config))
    return 0


def check_host_command(paths: Paths) -> int:
    """`vacd --check-host`: what starting here would do (Vac 03's machines, ports); exit 0 if vacd can start."""
    try:
        config = load_config(paths)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        print("vacd must not start yet: the configuration has errors", file=sys.stderr)
        return 1
    from vacd.hostcheck import check_host, print_host_check

    result = check_host(paths, config.settings)
    print_host_check(result, config.settings)
    return 0 if result.can_start else 1


def parse_arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vacd", description="The vac factory daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--prefix", help="re-root every path vacd reads or writes under this directory "
                        "(default: $VAC_PREFIX or /)")
    parser.add_argument("--check-config", "-t", action="store_true",
                        help="check the configuration and what start-up needs (key files, ports, log file); "
                        "print the effective configuration and exit 0, or the errors and exit 1")
    parser.add_argument("--check-host", action="store_true",
                        help="say what starting vacd on this host would do, changing nothing: Vac 03's daemons "
                        "and machines (adopted, or left running and why), the ports vacd needs; exit 0 if vacd "
                        "can start, 1 if not")
    parser.add_argument("--config", metavar="FILE",
                        help="with --check-config: read FILE instead of /etc/vac.conf, to check a new vac.conf "
                        "with the rest of the configuration before it is put in place")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--stderr", action="store_true", help="log to standard error instead of the configured log")
    arguments = parser.parse_args(argv)
    if arguments.config is not None and not arguments.check_config:
        # A running vacd always reads /etc/vac.conf, like `vac` and check-vacd do.
        parser.error("--config is only for --check-config")
    return arguments


def main(argv: Optional[list[str]] = None) -> int:
    arguments = parse_arguments(argv)
    paths = Paths.from_prefix(arguments.prefix)
    if arguments.check_config:
        if arguments.config is not None:
            paths = dataclasses.replace(paths, main_config_file=Path(arguments.config).absolute())
        return check_config(paths, logs_to_stderr=arguments.stderr)
    if arguments.check_host:
        return check_host_command(paths)
    host_fqdn, host_cpu_count = host_name(), os.cpu_count() or 1
    try:
        config = load_config(paths, host_fqdn=host_fqdn, host_cpu_count=host_cpu_count)
    except ConfigErrors as errors:
        for problem in errors.problems:
            print(problem, file=sys.stderr)
        print("vacd: not started: the configuration has errors", file=sys.stderr)
        return 1
    # Here, not at the top: vacd.daemon imports this module for its entry point `main`.
    from vacd.daemon import Daemon
    from vacd.logconfig import configure_logging, reopen_logs

    paths.ensure_state_dirs()
    destination = "stderr" if arguments.stderr else config.settings.log_destination
    configure_logging(destination, paths.log_file, getattr(logging, arguments.log_level))
    # Before any part opens sockets: the guest API's connection cap is derived from the
    # limit (issue 8 item 11: 1,100 idle guests exhausted 1,024 descriptors).
    raise_fd_limit()
    pid_file = PidFile(paths.pid_file)
    pid_file.acquire()
    # systemd's $NOTIFY_SOCKET (Type=notify, WatchdogSec=); without it the notifier is silent.
    notifier = ServiceNotifier.from_environment()
    daemon = Daemon(paths, config, host_fqdn, host_cpu_count, notifier=notifier, log_destination=destination)

    def on_hangup(*_: object) -> None:
        reopen_logs()
        daemon.reopen_logs()
        if daemon.factory is not None:
            daemon.factory.wake("SIGHUP")

    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGUSR1, lambda *_: daemon.factory.wake("SIGUSR1") if daemon.factory else None)
    try:
        return daemon.run()
    except (VacError, VacqueryError) as error:  # VacqueryError: an unreadable vacquery_key_file
        log.error("vacd stopped: %s", error)
        print(f"vacd: {error}", file=sys.stderr)
        notifier.status(f"not started: {error}")
        return 1
    finally:
        pid_file.release()
