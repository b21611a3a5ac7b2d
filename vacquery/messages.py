"""The VacQuery 01.03 messages as values: three queries, three statuses, and a factory's snapshot.

Rules:
- Every field of VacQuery 01.03 (behaviour reference §3.2-§3.6) is here under a Pythonic
  name; wire names, deprecated duplicates (`num_cpus`, `running_cpus`, `total_*`,
  `vac_disk_*`) and the legacy `method` field live only in `vacquery.codec`.
- Statuses carry no `cookie` or `time_sent`: those belong to one reply, not to the state
  it describes. A factory publishes a `Snapshot` of plain statuses each pass; the
  responder stamps the requester's cookie and the send time on each reply. A received
  status arrives wrapped in a `Reply(cookie, time_sent, status)`.
- Fields that Vac 03 may send as `null` or omit (§3.4-§3.6 beyond the keys its client
  requires) are `Optional`; the keys Vac's client requires are not.
- Values are frozen and validated on construction, so an invalid message cannot exist;
  the codec turns a peer's invalid value into `MalformedDatagram`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union

VACQUERY_VERSION = "VacQuery 01.03"


class MessageType(str, Enum):
    """The `message_type` of every VacQuery datagram (§3.2-§3.6)."""

    MACHINES_QUERY = "machines_query"
    MACHINETYPES_QUERY = "machinetypes_query"
    FACTORY_QUERY = "factory_query"
    MACHINE_STATUS = "machine_status"
    MACHINETYPE_STATUS = "machinetype_status"
    FACTORY_STATUS = "factory_status"


class MachineState(str, Enum):
    """A slot's state as Vac reports it (§1.5); a free slot is `SHUT_DOWN`."""

    UNKNOWN = "Unknown"
    SHUT_DOWN = "Shut down"
    STARTING = "Starting"
    RUNNING = "Running"
    PAUSED = "Paused"
    ZOMBIE = "Zombie"


def _check_finite(message: object) -> None:
    """Reject NaN and infinities in float fields: they have no JSON form (§3.1).

    The instance's own attributes are its fields (these dataclasses have no slots, and the
    class's `message_type` is not one): read at once, not field by field through
    dataclasses.fields, as the factory makes one status per slot every pass (issue 15).
    """
    for name, value in vars(message).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{type(message).__name__}.{name} is not finite: {value!r}")


def _check_not_negative(message: object, *names: str) -> None:
    for name in names:
        value = getattr(message, name)
        if value is not None and value < 0:
            raise ValueError(f"{type(message).__name__}.{name} is negative: {value!r}")


# Queries (§3.2). `daemon_version` is the sender's "Vac <version> <client>" (wire: vac_version).


@dataclass(frozen=True)
class MachinesQuery:
    """Ask for one `machine_status` per slot (legacy method `machines`)."""

    space: str
    cookie: str
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.MACHINES_QUERY


@dataclass(frozen=True)
class MachinetypesQuery:
    """Ask for one `machinetype_status` per configured machinetype (legacy method `machinetypes`)."""

    space: str
    cookie: str
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.MACHINETYPES_QUERY


@dataclass(frozen=True)
class FactoryQuery:
    """Ask for the one `factory_status` (legacy method `factories`)."""

    space: str
    cookie: str
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.FACTORY_QUERY


Query = Union[MachinesQuery, MachinetypesQuery, FactoryQuery]

QUERY_CLASSES: dict[MessageType, type] = {
    MessageType.MACHINES_QUERY: MachinesQuery,
    MessageType.MACHINETYPES_QUERY: MachinetypesQuery,
    MessageType.FACTORY_QUERY: FactoryQuery,
}


# Statuses. Common header: space, factory, site, daemon_version, vacquery_version (§3.4).


@dataclass(frozen=True)
class MachineStatus:
    """One slot of a factory (§3.4). `processors` is 0 for a free slot."""

    space: str
    factory: str
    num_machines: int
    machine: str
    state: MachineState
    uuid: Optional[str]
    created_time: Optional[int]
    started_time: Optional[int]
    heartbeat_time: Optional[int]
    cpu_seconds: Optional[float]
    cpu_percentage: Optional[float]
    hs06: Optional[float]
    machinetype: Optional[str]
    shutdown_message: Optional[str]
    shutdown_time: Optional[int]
    processors: Optional[int] = None
    machine_model: Optional[str] = None
    fqan: Optional[str] = None
    site: Optional[str] = None
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.MACHINE_STATUS

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_not_negative(self, "num_machines", "processors", "cpu_seconds", "hs06")


@dataclass(frozen=True)
class MachinetypeStatus:
    """One machinetype of a factory (§3.5): what runs, what is young, how the last one ended.

    `running_processors` is a float as in Vac (a starting machine counts 1). The last
    outcome (`shutdown_message`, `shutdown_time`, `shutdown_machine`) is that of the most
    recently created finished machine of the type, or None.
    """

    space: str
    factory: str
    num_machinetypes: int
    machinetype: str
    running_hs06: float
    num_before_fizzle: int
    shutdown_message: Optional[str]
    shutdown_time: Optional[int]
    shutdown_machine: Optional[str]
    running_machines: Optional[int] = None
    running_processors: Optional[float] = None
    bytes_per_processor: Optional[int] = None
    max_wallclock_seconds: Optional[int] = None
    max_processors: Optional[int] = None
    fqan: Optional[str] = None
    site: Optional[str] = None
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.MACHINETYPE_STATUS

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_not_negative(
            self, "num_machinetypes", "running_hs06", "num_before_fizzle", "running_machines", "running_processors"
        )


@dataclass(frozen=True)
class FactoryStatus:
    """The factory as a whole (§3.6). Vac sets the max_* values all to total_processors."""

    space: str
    factory: str
    running_processors: Optional[int] = None
    running_machines: Optional[int] = None
    running_hs06: Optional[float] = None
    max_processors: Optional[int] = None
    max_machines: Optional[int] = None
    max_hs06: Optional[float] = None
    root_disk_avail_kb: Optional[int] = None
    root_disk_avail_inodes: Optional[int] = None
    daemon_disk_avail_kb: Optional[int] = None
    daemon_disk_avail_inodes: Optional[int] = None
    load_average: Optional[float] = None
    kernel_version: Optional[str] = None
    os_issue: Optional[str] = None
    boot_time: Optional[int] = None
    factory_heartbeat_time: Optional[int] = None
    responder_heartbeat_time: Optional[int] = None
    mjf_heartbeat_time: Optional[int] = None
    metadata_heartbeat_time: Optional[int] = None
    swap_used_kb: Optional[int] = None
    swap_free_kb: Optional[int] = None
    mem_used_kb: Optional[int] = None
    mem_total_kb: Optional[int] = None
    site: Optional[str] = None
    daemon_version: Optional[str] = None
    vacquery_version: Optional[str] = VACQUERY_VERSION

    message_type = MessageType.FACTORY_STATUS

    def __post_init__(self) -> None:
        _check_finite(self)


Status = Union[MachineStatus, MachinetypeStatus, FactoryStatus]

STATUS_CLASSES: dict[MessageType, type] = {
    MessageType.MACHINE_STATUS: MachineStatus,
    MessageType.MACHINETYPE_STATUS: MachinetypeStatus,
    MessageType.FACTORY_STATUS: FactoryStatus,
}

# Which status answers which query (§3.3).
REPLY_TYPE: dict[MessageType, MessageType] = {
    MessageType.MACHINES_QUERY: MessageType.MACHINE_STATUS,
    MessageType.MACHINETYPES_QUERY: MessageType.MACHINETYPE_STATUS,
    MessageType.FACTORY_QUERY: MessageType.FACTORY_STATUS,
}


@dataclass(frozen=True)
class Reply:
    """A status as it travels: stamped with the cookie it answers and the sender's clock.

    VacMon-style unsolicited statuses use cookie "0" (§1.3 step 6, §7.2).
    """

    cookie: str
    time_sent: Optional[int]
    status: Status
    # Set when the responder cut its answer short (a `LimitReason` value, or what a newer
    # responder says): the reply is real, but not all of the answer was sent.
    limited: Optional[str] = None

    @property
    def message_type(self) -> MessageType:
        return self.status.message_type


class LimitReason(str, Enum):
    """Why a responder sent less than the whole answer (vacquery.responder's amplification rule)."""

    # An unsigned query from an address that is not one of the space's factories: it may
    # draw no more bytes than it carried.
    UNLISTED = "unlisted"
    # The per-source or responder-wide byte budget is spent for now.
    BUDGET = "budget"


@dataclass(frozen=True)
class LimitNotice:
    """What a responder sends instead of statuses when not one of them may be sent.

    Smaller than the query it answers, and of a message type Vac 03's client does not know
    (so it ignores it, §3.7); ours stops asking that factory and says why.
    """

    cookie: str
    space: str
    factory: str
    reason: str


Message = Union[MachinesQuery, MachinetypesQuery, FactoryQuery, Reply]


@dataclass(frozen=True)
class Snapshot:
    """What a factory publishes each pass and its responder answers from.

    `machines` has one status per slot (free slots as `SHUT_DOWN` with processors 0),
    `machinetypes` one per configured machinetype; all carry the same space and factory.
    """

    machines: tuple[MachineStatus, ...]
    machinetypes: tuple[MachinetypeStatus, ...]
    factory: FactoryStatus

    def __post_init__(self) -> None:
        space, name = self.factory.space, self.factory.factory
        statuses: tuple[Union[MachineStatus, MachinetypeStatus], ...] = (*self.machines, *self.machinetypes)
        for status in statuses:
            if status.space != space or status.factory != name:
                raise ValueError(
                    f"snapshot of {name} in {space} holds a status of {status.factory} in {status.space}"
                )
        if any(status.num_machines != len(self.machines) for status in self.machines):
            raise ValueError("every machine_status must report num_machines = number of slots")
        if any(status.num_machinetypes != len(self.machinetypes) for status in self.machinetypes):
            raise ValueError("every machinetype_status must report num_machinetypes = number of machinetypes")

    @property
    def space(self) -> str:
        return self.factory.space

    @property
    def factory_name(self) -> str:
        return self.factory.factory

    def statuses_for(self, query_type: MessageType) -> tuple[Status, ...]:
        """The statuses that answer a query of this type (§3.3)."""
        if query_type is MessageType.MACHINES_QUERY:
            return self.machines
        if query_type is MessageType.MACHINETYPES_QUERY:
            return self.machinetypes
        if query_type is MessageType.FACTORY_QUERY:
            return (self.factory,)
        raise ValueError(f"{query_type} is not a query")
