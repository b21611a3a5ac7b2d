"""What vacd refuses, and mends, at start-up, before its first pass touches the host.

Rules (issue 10 items 1, 2 and 7; issue 13; §1.11, §2.1; Appendix A):
- Refusals come before the guest network, interfaces, /etc/hosts or any domain is touched,
  so vacd stops with the host as it found it: a Vac 03 daemon still running or a port
  vacd listens on taken (two factories on one state directory destroy each other's
  machines as zombies), a volume_group not on this host. Each raises StartupError saying
  what to fix.
- The guest network is made as wanted at start, and replaced only if no guest is on it;
  libvirt being down is no refusal (the loop retries every pass and shows the fault).
- At start nothing is being created, so this factory's logical volumes that no live
  record has are left-overs, and are removed.
- A factory name that differs from the last start's is a loud warning (a rename strands
  machines), and the new one is remembered in the state directory.
"""

from __future__ import annotations

import logging

from vacd.config import Settings
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.store import Store

log = logging.getLogger(__name__)

# Where vacd remembers the factory name it last ran as (a rename strands machines, item 7).
FACTORY_NAME_FILE = "factory-name"


class StartupError(VacError):
    """vacd cannot start: the message says what to fix."""


def refuse_busy_ports(paths: Paths, settings: Settings) -> None:
    """Stop start-up, naming each port and its holder, if any port vacd listens on is taken.

    A Vac 03 daemon still running is refused too, whatever its ports: two factories on one
    state directory destroy each other's machines as zombies (issue 10 item 1).
    """
    from vacd.hostcheck import vac03_daemons_running
    from vacd.hostports import busy_ports

    problems = vac03_daemons_running(paths) + busy_ports(settings)
    if problems:
        raise StartupError("; ".join(problems) + " (vacd stopped before touching the guest network, "
                           "/etc/hosts or any domain)")


def refuse_missing_volume_group(settings: Settings) -> None:
    """Stop start-up naming the volume_group if it is not on this host (§2.1, issue 13)."""
    from vacd.lvm import LogicalVolumes
    from vacd.startupcheck import volume_group_problem

    problem = volume_group_problem(settings, LogicalVolumes())
    if problem is not None:
        raise StartupError(problem + " (vacd stopped before touching the guest network, /etc/hosts or any domain)")
    if settings.volume_group is not None:
        log.info("machines' disks are logical volumes in volume_group=%s", settings.volume_group)


def remove_leftover_volumes(settings: Settings, store: Store) -> None:
    """Remove this factory's machines' volumes that no live record has (Appendix A's zombie sweep).

    At start nothing is being created, so a volume without a live record is left by a
    vacd killed between lvcreate and the domain's start, or by a machine finalised while
    its removal failed. One still open (a Vac 03 machine left running) is kept by lvm2.
    """
    from vacd.lvm import LogicalVolumes, LvmError
    from vacd.startup_cleanup import live_machine_names

    if settings.volume_group is None:
        return
    try:
        removed = LogicalVolumes().remove_leftovers(settings.volume_group, settings.factory_name,
                                                    live_machine_names(store))
    except LvmError as error:
        log.warning("left-over logical volumes not looked for error=%s: each slot's next creation replaces its own",
                    error)
        return
    if removed:
        log.info("removed left-over logical volumes vg=%s names=%s", settings.volume_group, ",".join(removed))


def ensure_network_at_start(paths: Paths, settings: Settings) -> None:
    """Make the guest network as wanted, replacing it only if no guest is on it.

    Raises:
        StartupError: it must be replaced to serve the slots and guests are on it
            (vacd.network.NetworkRefused): the message says why and what to do.
    """
    from vacd.network import NetworkRefused, ensure_network

    try:
        ensure_network(settings.libvirt_uri, paths, settings, may_replace=True)
    except NetworkRefused as error:
        raise StartupError(str(error)) from error
    except VacError as error:
        # libvirt down at boot, say: the loop retries every pass and shows the fault meanwhile.
        log.error("guest network unusable, no machine created until it is error=%s", error)


def warn_if_factory_renamed(paths: Paths, factory_name: str) -> None:
    """A factory name that differs from last start is a loud warning (item 7), then remembered."""
    from vacd.atomicfile import read_text_or_none, write_atomic

    remembered = paths.state_dir / FACTORY_NAME_FILE
    try:
        previous = (read_text_or_none(remembered) or "").strip()
        if previous and previous != factory_name:
            log.warning("factory name changed from %s to %s since the last start: machines named for %s are "
                        "policed, finalised and accounted until they are gone, and their slots are not refilled",
                        previous, factory_name, previous)
        if previous != factory_name:
            write_atomic(remembered, factory_name + "\n")
    except OSError as error:
        log.warning("cannot remember the factory name in %s error=%s", remembered, error)
