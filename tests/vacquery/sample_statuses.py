"""Statuses and snapshots for tests: one factory's slots and machinetypes, built the long way."""

from __future__ import annotations

from typing import Optional, Sequence

from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Snapshot

SPACE = "vac01.example.com"


def machine_status(factory: str, ordinal: int, slots: int, *, space: str = SPACE,
                   machinetype: Optional[str] = None) -> MachineStatus:
    short, _, domain = factory.partition(".")
    running = machinetype is not None
    return MachineStatus(
        space=space,
        factory=factory,
        num_machines=slots,
        machine=f"{short}-{ordinal:02d}.{domain}",
        state=MachineState.RUNNING if running else MachineState.SHUT_DOWN,
        uuid="6f1c0c62-0000-4000-8000-%012d" % ordinal if running else None,
        created_time=1_700_000_000 if running else None,
        started_time=1_700_000_010 if running else None,
        heartbeat_time=1_700_000_600 if running else None,
        cpu_seconds=590.5 if running else 0.0,
        cpu_percentage=98.25 if running else 0.0,
        hs06=10.0 if running else 0.0,
        machinetype=machinetype,
        shutdown_message=None,
        shutdown_time=None,
        processors=1 if running else 0,
        machine_model="cernvm3" if running else None,
        site="example.com",
        daemon_version="Vac 04.00.00a1 vacd-responder",
    )


def machinetype_status(factory: str, name: str, count: int, *, space: str = SPACE, running_hs06: float = 20.0,
                       shutdown_message: Optional[str] = None, shutdown_time: Optional[int] = None,
                       num_before_fizzle: int = 0) -> MachinetypeStatus:
    return MachinetypeStatus(
        space=space,
        factory=factory,
        num_machinetypes=count,
        machinetype=name,
        running_hs06=running_hs06,
        num_before_fizzle=num_before_fizzle,
        shutdown_message=shutdown_message,
        shutdown_time=shutdown_time,
        shutdown_machine=None if shutdown_message is None else factory.replace(".", "-00.", 1),
        running_machines=2,
        running_processors=2.0,
        bytes_per_processor=2048 * 1048576,
        max_wallclock_seconds=86400,
        max_processors=1,
        fqan="/lhcb/Role=pilot",
        site="example.com",
        daemon_version="Vac 04.00.00a1 vacd-responder",
    )


def factory_status(factory: str, *, space: str = SPACE) -> FactoryStatus:
    return FactoryStatus(
        space=space, factory=factory, running_processors=2, running_machines=2, running_hs06=20.0,
        max_processors=8, max_machines=8, max_hs06=80.0, root_disk_avail_kb=1_000_000,
        root_disk_avail_inodes=50_000, daemon_disk_avail_kb=2_000_000, daemon_disk_avail_inodes=60_000,
        load_average=1.25, kernel_version="6.1.0-13-amd64", os_issue="Debian GNU/Linux 12", boot_time=1_699_000_000,
        factory_heartbeat_time=1_700_000_600, responder_heartbeat_time=1_700_000_601, mjf_heartbeat_time=0,
        metadata_heartbeat_time=0, swap_used_kb=0, swap_free_kb=1024, mem_used_kb=4096, mem_total_kb=16384,
        site="example.com", daemon_version="Vac 04.00.00a1 vacd-responder",
    )


def snapshot(factory: str, *, slots: int = 4, machinetypes: Sequence[str] = ("lhcb", "atlas", "cms"),
             space: str = SPACE) -> Snapshot:
    """A factory with `slots` slots (the first two running `machinetypes[0]`) and the machinetypes given."""
    first = machinetypes[0] if machinetypes else None
    return Snapshot(
        machines=tuple(machine_status(factory, ordinal, slots, space=space,
                                      machinetype=first if ordinal < 2 else None) for ordinal in range(slots)),
        machinetypes=tuple(machinetype_status(factory, name, len(machinetypes), space=space)
                           for name in machinetypes),
        factory=factory_status(factory, space=space),
    )
