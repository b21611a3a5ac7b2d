"""One census of many factories on the simulated network: the census benchmark's engine.

A single factory asks `factories` peers for their machinetypes with the real census
(`vacquery.client.Census`) or Vac 03's (`vac03.VacCensus`); every peer answers with the
real `vacquery.responder.respond`; datagrams cross `events.SimNetwork`. Completeness is
recorded at checkpoints of simulated time.

The client is one thread: with `client_seconds_per_datagram` each datagram it sends or
handles takes that long, and a reply arriving while it is busy waits in the socket (a
burst of 1,600 replies at 100 us each is handled over 160 ms). `stamp` says which time
the census is given with a reply: "arrival" (the kernel's stamp, as vacquery.transport
does now) or "handled" (the clock read when the reply's turn came, as it did before
issue 15 item 4, which counted the handling of a burst into its round trips).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Union

from vacd.sim.events import EventLoop, NetworkConditions, SimNetwork
from vacd.sim.scenario import SPACE
from vacd.sim.vac03 import VacCensus
from vacquery.client import Census, CensusResult
from vacquery.codec import EncodedSnapshot, encode_snapshot
from vacquery.messages import FactoryStatus, MachinetypeStatus, MessageType, Snapshot
from vacquery.responder import respond


@dataclass(frozen=True)
class CensusRun:
    """One census of many factories on the simulated network: completeness at checkpoints."""

    policy: str
    factories: int
    loss: float
    completeness_at: dict[float, float]
    finished_seconds: Optional[float]
    final_completeness: float
    datagrams_sent: int


def simulate_census(
    factories: int,
    conditions: NetworkConditions,
    policy: str = "vacd",
    *,
    machinetypes: int = 4,
    deadline_seconds: float = 2.0,
    checkpoints: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0),
    seed: int = 1,
    client_seconds_per_datagram: float = 0.0,
    stamp: str = "arrival",
) -> CensusRun:
    """One factory's machinetypes census of `factories` peers, real datagrams on the sim network."""
    rng = random.Random(seed)
    loop = EventLoop()
    network = SimNetwork(loop, conditions, random.Random(seed + 1))
    names = [f"f{index:04d}.{SPACE}" for index in range(factories)]
    encoded: dict[str, EncodedSnapshot] = {}
    for name in names:
        statuses = tuple(
            MachinetypeStatus(space=SPACE, factory=name, num_machinetypes=machinetypes, machinetype=f"type-{number}",
                              running_hs06=float(number), num_before_fizzle=0, shutdown_message=None,
                              shutdown_time=None, shutdown_machine=None)
            for number in range(machinetypes)
        )
        encoded[name] = encode_snapshot(Snapshot((), statuses, FactoryStatus(space=SPACE, factory=name)))
    salt = f"{rng.getrandbits(128):032x}"
    census: Union[Census, VacCensus]
    if policy == "vac03":
        census = VacCensus(MessageType.MACHINETYPES_QUERY, SPACE, names, 0.0, salt=salt)
    else:
        census = Census(MessageType.MACHINETYPES_QUERY, SPACE, names, 0.0, deadline_seconds=deadline_seconds, salt=salt)
    trusted = frozenset(["client"])
    completeness_at: dict[float, float] = {}

    if stamp not in ("arrival", "handled"):
        raise ValueError(f"stamp must be arrival or handled, got {stamp!r}")
    busy_until = 0.0  # when the client's one thread has handled what it has taken on

    def take_on(datagrams: int) -> float:
        """Queue `datagrams` of work on the client thread; when that work starts."""
        nonlocal busy_until
        start = max(loop.now, busy_until)
        busy_until = start + datagrams * client_seconds_per_datagram
        return start

    def deliver_reply(reply: bytes, source: str) -> None:
        loop.at(take_on(1), handle_reply, reply, source, loop.now)

    def handle_reply(reply: bytes, source: str, arrival: float) -> None:
        census.receive(reply, source, arrival if stamp == "arrival" else loop.now)

    def deliver_query(name: str, datagram: bytes) -> None:
        for reply in respond(datagram, "client", encoded[name], loop.now, trusted_sources=trusted):
            network.send(deliver_reply, reply, name)

    def pump() -> None:
        if busy_until > loop.now:  # the thread is still handling replies: it wakes after them
            loop.at(busy_until, pump)
            return
        due = census.datagrams_to_send(loop.now)
        take_on(len(due))
        for name, datagram in due:
            network.send(deliver_query, name, datagram)
        if not census.done:
            loop.at(max(census.next_wakeup, busy_until), pump)

    def checkpoint(when: float) -> None:
        completeness_at[when] = _true_completeness(census.result, factories * machinetypes)

    loop.at(0.0, pump)
    for when in checkpoints:
        loop.at(when, checkpoint, when)
    loop.run_until(max(checkpoints + (deadline_seconds,)) + (60.0 if policy == "vac03" else 0.0))
    result = census.result
    return CensusRun(policy, factories, conditions.loss, completeness_at, result.finished,
                     _true_completeness(result, factories * machinetypes), network.sent)


def _true_completeness(result: CensusResult, statuses: int) -> float:
    return result.statuses_heard / statuses if statuses else 1.0
