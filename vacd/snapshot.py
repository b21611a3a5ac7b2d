"""What this factory tells its peers, the `vac` command and VacMon: a VacQuery Snapshot.

`build_snapshot` turns one pass's report into the statuses of §3.4-§3.6 (pure: the host's
facts are an argument). `read_host_facts` is the edge that reads them (load, disks, memory,
kernel, boot time). The factory publishes a new snapshot after every pass, so the responder
answers from memory and never re-reads configuration or files (Vac 03 re-read its whole
configuration for every datagram, §11).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Mapping, Optional

import psutil

from vacd import MANAGER_VERSION
from vacd.factory import PassReport, RunningTotals, SlotStatus
from vacd.outcomes import is_factory_ending
from vacd.paths import Paths
from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Snapshot

# States outside Vac's vocabulary are reported as the nearest Vac state (§1.5).
_STATES = {
    "Shut down": MachineState.SHUT_DOWN,
    "Starting": MachineState.STARTING,
    "Running": MachineState.RUNNING,
    "Paused": MachineState.PAUSED,
    "Stopping": MachineState.RUNNING,
}


@dataclass(frozen=True)
class HostFacts:
    load_average: float
    kernel_version: str
    os_issue: str
    boot_time: int
    root_disk_avail_kb: int
    root_disk_avail_inodes: int
    state_disk_avail_kb: int
    state_disk_avail_inodes: int
    swap_used_kb: int
    swap_free_kb: int
    mem_used_kb: int
    mem_total_kb: int


def read_host_facts(paths: Paths) -> HostFacts:
    """This host's facts for factory_status (§3.6), read now."""
    # Vac measured /tmp for the "root" disk and /var/lib/vac for its own (§3.6).
    root = os.statvfs("/tmp")
    state = os.statvfs(paths.state_dir)
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    kernel = platform.release()
    return HostFacts(
        load_average=os.getloadavg()[2],
        kernel_version=kernel,
        os_issue=_os_issue(paths) or kernel,
        boot_time=int(psutil.boot_time()),
        root_disk_avail_kb=root.f_bavail * root.f_frsize // 1024,
        root_disk_avail_inodes=root.f_favail,
        state_disk_avail_kb=state.f_bavail * state.f_frsize // 1024,
        state_disk_avail_inodes=state.f_favail,
        swap_used_kb=swap.used // 1024,
        swap_free_kb=swap.free // 1024,
        mem_used_kb=(memory.total - memory.free) // 1024,
        mem_total_kb=memory.total // 1024,
    )


def _os_issue(paths: Paths) -> Optional[str]:
    for name in ("/etc/redhat-release.vac", "/etc/redhat-release", "/etc/os-release"):
        try:
            with open(paths.under_prefix(name) if name.endswith(".vac") else name) as release:
                first = release.readline().strip()
        except OSError:
            continue
        if first:
            return first
    return None


def _first_line(message: Optional[str]) -> Optional[str]:
    if not message:
        return None
    return message.strip().splitlines()[0][:255] if message.strip() else None


def machine_status(report: PassReport, slot: SlotStatus, daemon_version: str) -> MachineStatus:
    settings = report.settings
    assert settings is not None
    stored = slot.machine
    record = stored.record if stored is not None else None
    is_shut_down = slot.state == "Shut down"
    heartbeat = stored.heartbeat if stored is not None else None
    processors = record.processors if record is not None and not is_shut_down else 0
    finish_time = None
    if is_shut_down and stored is not None and stored.finish is not None:
        finish_time = stored.finish.shutdown_message_time or stored.finish.finished_time
    return MachineStatus(
        space=settings.vac_space,
        factory=settings.factory_name,
        site=settings.gocdb_sitename,
        daemon_version=daemon_version,
        num_machines=len(report.slots),
        machine=slot.identity.machine_name,
        state=_STATES.get(slot.state, MachineState.UNKNOWN),
        uuid=record.uuid if record is not None else None,
        created_time=record.created_time if record is not None else None,
        started_time=stored.started_time if stored is not None else None,
        # A live slot's CPU time was observed in this pass; the stored heartbeat is one pass older.
        heartbeat_time=report.now if not is_shut_down and stored is not None else (heartbeat.time if heartbeat else None),
        cpu_seconds=slot.cpu_seconds if not is_shut_down else (heartbeat.cpu_seconds if heartbeat else 0.0),
        cpu_percentage=(heartbeat.cpu_percentage if heartbeat is not None else None) if not is_shut_down else 0.0,
        hs06=record.hs06 if record is not None and not is_shut_down else 0.0,
        machinetype=record.machinetype if record is not None else None,
        shutdown_message=_first_line(slot.shutdown_message) if is_shut_down else None,
        shutdown_time=finish_time if is_shut_down else None,
        processors=processors,
        machine_model=record.machine_model if record is not None else None,
        fqan=report.machinetypes[record.machinetype].accounting_fqan
        if record is not None and record.machinetype in report.machinetypes
        else None,
    )


def build_snapshot(report: PassReport, host: HostFacts, heartbeats: Mapping[str, int],
                   client_name: str = "vacd-responder") -> Snapshot:
    """The statuses of one pass (§3.4-§3.6)."""
    settings = report.settings
    assert settings is not None, "a pass without a valid configuration has nothing to publish"
    daemon_version = f"{MANAGER_VERSION} {client_name}"
    machines = tuple(machine_status(report, slot, daemon_version) for slot in report.slots)
    running = report.running_by_machinetype()
    idle = RunningTotals()
    machinetypes = tuple(
        MachinetypeStatus(
            space=settings.vac_space,
            factory=settings.factory_name,
            site=settings.gocdb_sitename,
            daemon_version=daemon_version,
            num_machinetypes=len(report.local_reports),
            machinetype=local.machinetype,
            running_hs06=local.running_hs06,
            num_before_fizzle=local.num_before_fizzle,
            # Peers running Vac 03 back off on any code >= 300: an ending the factory caused is
            # published as Vac 03 published it, with no message (issue 9 item 2).
            shutdown_message=None if is_factory_ending(local.shutdown_message) else _first_line(local.shutdown_message),
            shutdown_time=local.shutdown_time,
            shutdown_machine=local.shutdown_machine,
            running_machines=running.get(local.machinetype, idle).machines,
            running_processors=float(running.get(local.machinetype, idle).processors),
            bytes_per_processor=settings.mb_per_processor * 1048576,
            max_wallclock_seconds=report.machinetypes[local.machinetype].max_wallclock_seconds,
            max_processors=report.machinetypes[local.machinetype].max_processors,
            fqan=report.machinetypes[local.machinetype].accounting_fqan,
        )
        for local in report.local_reports
    )
    total_processors = settings.total_processors
    factory = FactoryStatus(
        space=settings.vac_space,
        factory=settings.factory_name,
        site=settings.gocdb_sitename,
        daemon_version=daemon_version,
        running_processors=sum(totals.processors for totals in running.values()),
        running_machines=sum(totals.machines for totals in running.values()),
        running_hs06=sum(local.running_hs06 for local in report.local_reports),
        max_processors=total_processors,
        max_machines=total_processors,
        max_hs06=total_processors * (settings.hs06_per_processor or 1.0),
        root_disk_avail_kb=host.root_disk_avail_kb,
        root_disk_avail_inodes=host.root_disk_avail_inodes,
        daemon_disk_avail_kb=host.state_disk_avail_kb,
        daemon_disk_avail_inodes=host.state_disk_avail_inodes,
        load_average=host.load_average,
        kernel_version=host.kernel_version,
        os_issue=host.os_issue,
        boot_time=host.boot_time,
        factory_heartbeat_time=heartbeats.get("factory", 0),
        responder_heartbeat_time=heartbeats.get("responder", 0),
        mjf_heartbeat_time=heartbeats.get("mjf", 0),
        metadata_heartbeat_time=heartbeats.get("metadata", 0),
        swap_used_kb=host.swap_used_kb,
        swap_free_kb=host.swap_free_kb,
        mem_used_kb=host.mem_used_kb,
        mem_total_kb=host.mem_total_kb,
    )
    return Snapshot(machines, machinetypes, factory)
