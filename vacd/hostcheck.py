"""`vacd --check-host`: what starting vacd on this host would do, said before anything is done (issue 10).

It is the check an admin runs before switching a node from Vac 03, and the one the RPM's
%posttrans runs before it starts vacd. It changes nothing: it reads the configuration, the
state directory and libvirt's domain list (read-only connection), and prints

- whether Vac 03's daemons still run (their pid files under the state directory, §1.2):
  two factories on one state directory destroy each other's machines as zombies;
- what vacd would do with every machine Vac 03 left (vacd.vac03state): adopt it, finalise
  and account it, or leave it running and why;
- whether what start-up needs is there: key files, free ports, the log (vacd.startupcheck,
  the checks of `vacd --check-config`).

It exits 0 if vacd can start, 1 if it cannot (a configuration error, Vac 03 running, a port
taken, libvirt unreachable). A machine left running unadopted is said but is no reason to
refuse: vacd leaves it alone.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, TextIO

import psutil

from vacd.backends.base import ObservedMachine
from vacd.config import Settings
from vacd.paths import Paths
from vacd.vac03state import TakeOver, Vac03Plan, plan_take_over

log = logging.getLogger(__name__)

# Vac 03's four daemons and the pid files that name them (§1.2), under the state directory.
VAC03_DAEMONS = ("factory", "responder", "mjf", "metadata")


@dataclass
class HostCheck:
    """What the check found: reasons vacd cannot start, and what it would do with Vac 03's machines."""

    problems: list[str] = field(default_factory=list)
    plans: list[Vac03Plan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def can_start(self) -> bool:
        return not self.problems


def vac03_daemons_running(paths: Paths) -> list[str]:
    """One line for each Vac 03 daemon whose pid file names a live process other than this one."""
    found = []
    for part in VAC03_DAEMONS:
        pid_file = paths.state_dir / f"{part}.pid"
        try:
            pid_text = pid_file.read_text(errors="replace").strip()[:20]
        except OSError:
            continue
        if not (pid_text.isascii() and pid_text.isdigit()) or int(pid_text) in (0, os.getpid()):
            continue
        pid = int(pid_text)
        try:
            process = psutil.Process(pid)
            name = process.name()
        except psutil.NoSuchProcess:
            continue  # a stale pid file of a Vac 03 that has stopped
        except psutil.AccessDenied:
            name = "?"
        found.append(f"Vac 03's vacd-{part} runs as pid {pid} ({name}, named in {pid_file}): stop and disable "
                     "it first (service vacd stop; chkconfig vacd off), or Vac 03 and vacd destroy each "
                     "other's machines")
    return found


def list_domains_read_only(libvirt_uri: str) -> list[ObservedMachine]:
    """The running domains, over a read-only connection (nothing can be changed through it)."""
    import libvirt  # type: ignore[import-untyped,unused-ignore]  # no stubs or py.typed

    from vacd.backends.libvirt import observed_state

    connection = libvirt.openReadOnly(libvirt_uri)
    try:
        machines = []
        for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                info = domain.info()
            except libvirt.libvirtError:
                continue  # gone between the listing and the look
            machines.append(ObservedMachine(domain.name(), domain.UUIDString(), observed_state(info[0]), info[4] / 1e9))
        return machines
    finally:
        connection.close()


def check_host(
    paths: Paths,
    settings: Settings,
    *,
    list_domains: Callable[[str], list[ObservedMachine]] = list_domains_read_only,
) -> HostCheck:
    """Everything `vacd --check-host` reports, found without changing anything."""
    from vacd.startupcheck import startup_findings

    result = HostCheck()
    result.problems.extend(vac03_daemons_running(paths))
    findings = startup_findings(paths, settings, logs_to_stderr=False)
    result.problems.extend(findings.errors)
    result.notes.extend(findings.warnings)
    try:
        observed = {machine.name: machine for machine in list_domains(settings.libvirt_uri)}
    except Exception as error:  # libvirt's errors and a missing daemon alike: said, not raised
        result.problems.append(f"cannot list libvirt domains at {settings.libvirt_uri}: {error}")
        observed = None
    if observed is not None:
        result.plans = plan_take_over(paths, settings, observed)
    return result


def print_host_check(result: HostCheck, settings: Settings, out: TextIO = sys.stdout) -> None:
    print(f"factory {settings.factory_name} in space {settings.vac_space}, {settings.num_machine_slots} slots",
          file=out)
    adopt = [plan for plan in result.plans if plan.action is TakeOver.ADOPT]
    hold = [plan for plan in result.plans if plan.action is TakeOver.HOLD]
    print(f"Vac 03 machines: {len(result.plans)} ({len(adopt)} to take over, {len(hold)} to leave running)",
          file=out)
    for plan in result.plans:
        print(f"  {plan.describe()}", file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    for problem in result.problems:
        print(f"problem: {problem}", file=out)
    print("vacd can start" if result.can_start else "vacd must not start yet: fix the problems above", file=out)
