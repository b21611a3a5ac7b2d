"""Gather one kind of status from a set of factories: the census, as a sans-I/O state machine.

Theory of operation. The driver (the transport's `run_census`, the site simulator, a
test) owns time and sockets:

    census = Census(MessageType.MACHINETYPES_QUERY, space, factories, now, deadline_seconds=2, salt=salt)
    while not census.done:
        for factory, datagram in census.datagrams_to_send(now): send it to the factory
        wait until census.next_wakeup, feeding each arriving datagram to
        census.receive(data, source, arrival time)
    census.result

Kept from Vac 03 (§3.7, acceptance 39): one query per factory, cookie =
sha256hex(salt + factory name); a reply counts only if its type answers the query, its
space matches, its `factory` is one we asked, its cookie is that factory's, and it has
every required key; replies are keyed by (factory, machine or machinetype), duplicates
overwrite; only incomplete factories are asked again (machines: fewer than num_machines
distinct replies; machinetypes: fewer than num_machinetypes; factory: none).

Changed from Vac 03:
- a hard overall deadline (Vac could run on indefinitely, §3.7, §11);
- retransmission is timed from the measured round-trip time instead of 2 s of silence:
  after max(4 x smoothed RTT, 20 ms), growing 1.5x per attempt to at most
  max(30 ms, smoothed RTT) (the first wait is never cut short). A loss-free LAN census
  ends after one round trip; at 50 % loss about 60 attempts fit in 2 s, so a status is
  missed with probability 0.75^60 < 10^-7 (Vac: 6 rounds of 2 s of silence, 0.75^6 =
  18 %). The ceiling costs a peer that answers nothing: a factory that completes needs
  as many queries whatever their spacing (4 a status at 50 % loss on average), but a
  silent one is asked about 33 times a second until the deadline, in the one census
  that finds it silent (afterwards it is asked Vac's 6 times). With a 60 ms ceiling
  about 24 attempts landed in 2 s on loopback (the timers fire late behind reply
  bursts), and 400 factories at 50 % loss missed 1 or 2 of 1,600 statuses in 2 to 4
  censuses of 10, on a quiet host (issue 15 item 4);
  The smoothed RTT uses only replies to a factory asked once (Karn's rule: a reply to a
  repeated query cannot say which query it answers) and can be carried from the previous
  census (`initial_rtt_seconds`), capped at `max_carried_rtt_seconds` so that one slow
  census does not slow the next. `receive` takes the datagram's arrival time, not the
  time it was handled: a driver that handles a burst of replies one after another must
  not count the handling of the earlier ones into the later ones' round trips (issue 15
  item 4: on loopback that inflated the estimate to 20-190 ms and cut 400 factories at
  50 % loss to 96 % heard);
- retransmissions stay within Vac's own rounds for a peer not known to be fast: the
  driver passes `fast_peers`, the factories an earlier census heard answer within
  `fast_reply_seconds` (60 ms), and every other factory (never heard, silent last
  time, or measured slow, like a Vac 03 responder that forks and re-reads its
  configuration per datagram) is asked at most VAC_ROUNDS (6) times per census, as Vac
  asked it (issue 9 item 5). Only known-fast peers get the extra retransmissions that
  carry a census through 50 % loss; a dead or slow peer costs at most what Vac sent it,
  once two censuses in a row have found it so (`next_fast_peers`: one late census, a
  responder descheduled under load, must not cost a peer its retransmissions). A peer
  whose replies say it runs Vac 03 or earlier is kept to Vac's rounds from its first
  reply on, whatever its timing: its responder forks for every datagram, and with
  queries every 30 ms its replies always come soon after one, so it never looks slow.
  `fast_peers=None` (a one-shot census that knows nothing: the `vac` command, benches)
  treats every factory as fast;
- queries are padded to 880 bytes (a signed one still fits the 1024 bytes a Vac 03
  responder reads): a responder that does not know us (no site key, not one of its
  factories) lets an unsigned request draw no more bytes than it carried
  (vacquery/responder.py), which is one machine or machinetype status for a padded
  query and none for a bare one. Such a responder marks what it sends
  (`Reply.limited`) and rotates the statuses it picks, so asking again brings the next
  ones; when none fits it sends a `LimitNotice`, after which the census stops asking
  that factory. `CensusResult.limited` says which factories limited their answers.

Rules: no clock, no randomness (the salt is an argument), no sockets. Names of factories
are compared in lower case, as Vac lower-cases `factories` (§2.2).
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import AbstractSet, Mapping, Optional, Sequence

from vacquery.codec import QUERY_PAD_BYTES, MalformedDatagram, decode_limit_notice, decode_reply, encode_query
from vacquery.messages import QUERY_CLASSES, REPLY_TYPE, MachineStatus, MachinetypeStatus, MessageType, Reply, Status

# A peer claiming more slots or machinetypes than this is lying (Vac slots = processors).
MAX_EXPECTED_PER_FACTORY = 4096
# Vac 03 asked an incomplete factory at most 6 times per census (§3.7, acceptance 39).
VAC_ROUNDS = 6
# "Vac <version> <client>": Vac 03 and earlier are "Vac 03.01.xx ..."; vacd is "Vac 4...".
_DAEMON_VERSION = re.compile(r"Vac 0*(\d+)[.\s]")
FIRST_MAJOR_WITHOUT_FORKING_RESPONDER = 4


@dataclass(frozen=True)
class RetransmitPolicy:
    """When to ask an incomplete factory again."""

    initial_rtt_seconds: float = 0.025
    rtt_multiple: float = 4.0
    min_timeout_seconds: float = 0.02
    backoff: float = 1.5
    # The retransmission ceiling: after the first wait, an incomplete factory is asked
    # again every max(this, smoothed RTT).
    max_timeout_seconds: float = 0.03
    smoothing: float = 0.125  # RFC 6298 alpha
    # A first reply within this of the first query proves a peer fast; one later than this
    # after the last query sent before it proves it slow. Kept apart from the ceiling: a
    # peer answering in 30-60 ms (a loaded LAN, a responder handling a burst) is not slow.
    fast_reply_seconds: float = 0.06
    # Queries per census to a factory not known to answer within fast_reply_seconds.
    max_attempts_unless_fast: int = VAC_ROUNDS
    # The most an RTT carried from the previous census may count for, until this census
    # measures its own: one slow census (a loaded host, a burst handled late) must not
    # stretch the next one's first retransmissions (issue 15 item 4). At 15 ms the first
    # timeout is at most 60 ms (4 x 15 ms).
    max_carried_rtt_seconds: float = 0.015

    def timeout(self, smoothed_rtt: float, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th query before sending the next.

        The first wait is 4 RTTs (a reply later than that is lost, not late); after it the
        question is only whether the query or a reply was lost again, so the wait grows to
        the ceiling, which is one RTT where that is longer than `max_timeout_seconds`. A
        burst of hundreds of replies stretches the RTTs measured in it (the last factory's
        answer waits behind the others'); re-asking every 4 of those left 400 factories at
        50 % loss about 16 attempts in 2 s, 97.6 % heard (issue 15 item 4).
        """
        base = max(self.rtt_multiple * smoothed_rtt, self.min_timeout_seconds)
        if attempts <= 1:
            return base
        return min(base * self.backoff ** (attempts - 1), max(self.max_timeout_seconds, smoothed_rtt))

    def earliest_timeout(self, attempts: int) -> float:
        """A lower bound of `timeout` whatever the RTT, for scheduling before the RTT is known."""
        return min(self.min_timeout_seconds * self.backoff ** (attempts - 1), self.max_timeout_seconds)


def is_forking_responder(daemon_version: Optional[str]) -> bool:
    """Whether a status's `daemon_version` names Vac 03 or earlier, whose responder forks and
    re-reads its configuration for every datagram (behaviour reference §1.2, §3.3): every
    query beyond Vac's own rounds costs that node a process, however fast it answers."""
    match = _DAEMON_VERSION.match(daemon_version or "")
    return match is not None and int(match.group(1)) < FIRST_MAJOR_WITHOUT_FORKING_RESPONDER


def cookie_for(salt: str, factory: str) -> str:
    """Vac's request/reply correlator: SHA-256 hex of salt + factory name (§3.2)."""
    return hashlib.sha256((salt + factory).encode("utf-8")).hexdigest()


def reply_key(status: Status) -> str:
    """What makes a reply distinct within one factory's answer (§3.7)."""
    if isinstance(status, MachineStatus):
        return status.machine
    if isinstance(status, MachinetypeStatus):
        return status.machinetype
    return ""


def expected_count(status: Status) -> int:
    """How many replies the factory that sent `status` will send in all."""
    if isinstance(status, MachineStatus):
        return min(status.num_machines, MAX_EXPECTED_PER_FACTORY)
    if isinstance(status, MachinetypeStatus):
        return min(status.num_machinetypes, MAX_EXPECTED_PER_FACTORY)
    return 1


@dataclass(frozen=True)
class CensusResult:
    """What a census heard: replies per factory, and how complete that is.

    `statuses_expected` counts, for a factory that never answered, as many statuses as
    the largest count any factory announced (1 if none did).
    """

    kind: MessageType
    replies: Mapping[str, tuple[Reply, ...]]
    expected: Mapping[str, Optional[int]]
    complete: frozenset[str]
    started: float
    finished: Optional[float]
    datagrams_sent: int
    smoothed_rtt_seconds: Optional[float]
    drops: Mapping[str, int] = field(default_factory=dict)
    # Factories whose first reply came within `fast_reply_seconds` of the first query
    # (fast), or later than that after the last query sent before it (slow, for
    # certain). Neither: not heard, or not telling (a late reply just after a resend).
    answered_fast: frozenset[str] = frozenset()
    answered_slow: frozenset[str] = frozenset()
    # Factories whose replies say they run Vac 03 or earlier (`is_forking_responder`).
    forking_responders: frozenset[str] = frozenset()
    # Factories that said they cut their answer short, and why (a LimitReason value):
    # marked replies, or a LimitNotice when not one status could be sent.
    limited: Mapping[str, str] = field(default_factory=dict)
    # Of those, the ones that sent a LimitNotice (and so were asked no more).
    refused: frozenset[str] = frozenset()

    @property
    def factories(self) -> tuple[str, ...]:
        return tuple(self.expected)

    @property
    def silent(self) -> tuple[str, ...]:
        """Factories from which nothing valid was heard (a LimitNotice is something)."""
        return tuple(name for name in self.expected if not self.replies.get(name) and name not in self.refused)

    def statuses(self, factory: str) -> tuple[Status, ...]:
        return tuple(reply.status for reply in self.replies.get(factory, ()))

    @property
    def statuses_heard(self) -> int:
        return sum(len(replies) for replies in self.replies.values())

    @property
    def statuses_expected(self) -> int:
        known = [count for count in self.expected.values() if count is not None]
        fallback = max(known, default=1)
        return sum(fallback if count is None else count for count in self.expected.values())

    @property
    def completeness(self) -> float:
        """statuses heard / statuses expected, 1.0 for an empty census."""
        expected = self.statuses_expected
        return 1.0 if expected == 0 else self.statuses_heard / expected


@dataclass(frozen=True)
class FastPeers:
    """The peers a census gives the fast retransmissions, carried from census to census.

    `doubted` are those of them the last census found silent or certainly slow: one such
    census is not enough to lose them (a responder descheduled for 60 ms under load, a
    burst of late replies, issue 15 item 4), two in a row are.
    """

    names: frozenset[str] = frozenset()
    doubted: frozenset[str] = frozenset()


def next_fast_peers(previous: AbstractSet[str], result: CensusResult,
                    doubted: AbstractSet[str] = frozenset()) -> FastPeers:
    """The `fast_peers` for the next census, from the last one and what this one measured.

    A peer stays fast until two censuses in a row find it silent or certainly slow; a
    reply that cannot tell (it came just after a resend) changes nothing. A peer whose
    replies say it runs Vac 03 or earlier loses them at once, whatever its timing: with
    queries every 30 ms its replies always come soon after one, so it never looks slow,
    but each query costs it a fork (issue 9 item 5).
    """
    asked = set(result.factories)
    kept = {name.lower() for name in previous} & asked
    wanting = result.answered_slow | set(result.silent)
    demoted = wanting & {name.lower() for name in doubted}
    names = frozenset((kept | result.answered_fast) - demoted - result.forking_responders)
    return FastPeers(names=names, doubted=frozenset(wanting & names))


class _FactoryState:
    """The census's bookkeeping for one factory (mutable, private)."""

    __slots__ = ("name", "cookie", "query", "expected", "replies", "attempts", "first_sent", "last_sent",
                 "is_complete", "is_known_fast", "first_reply_bounds", "limited", "is_refused", "is_forking")

    def __init__(self, name: str, cookie: str, query: bytes, is_known_fast: bool) -> None:
        self.name = name
        self.cookie = cookie
        self.query = query
        self.expected: Optional[int] = None
        self.replies: dict[str, Reply] = {}
        self.attempts = 0
        self.first_sent = 0.0
        self.last_sent = 0.0
        self.is_complete = False
        self.is_known_fast = is_known_fast
        # (since the last query before it, since the first query): bounds of its response time.
        self.first_reply_bounds: Optional[tuple[float, float]] = None
        self.limited: Optional[str] = None  # the reason the factory gave for cutting its answer
        self.is_refused = False  # it sent a LimitNotice: asking again would bring the same
        self.is_forking = False  # its replies say Vac 03 or earlier (is_forking_responder)

    @property
    def is_settled(self) -> bool:
        """Nothing more to ask this factory: complete, or it said no status may be sent."""
        return self.is_complete or self.is_refused


class Census:
    """Ask every factory in `factories` for `kind` statuses until all answered or the deadline."""

    def __init__(
        self,
        kind: MessageType,
        space: str,
        factories: Sequence[str],
        now: float,
        *,
        deadline_seconds: float,
        salt: str,
        daemon_version: Optional[str] = None,
        policy: RetransmitPolicy = RetransmitPolicy(),
        initial_rtt_seconds: Optional[float] = None,
        pad_queries_to: int = QUERY_PAD_BYTES,
        fast_peers: Optional[AbstractSet[str]] = None,
    ) -> None:
        if kind not in QUERY_CLASSES:
            raise ValueError(f"{kind} is not a query type")
        self.kind = kind
        self.space = space
        self.started = now
        self.deadline = now + deadline_seconds
        self.policy = policy
        self.drops: Counter[str] = Counter()
        self.datagrams_sent = 0
        self._reply_type = REPLY_TYPE[kind]
        self._smoothed_rtt: Optional[float] = None
        self._rtt_guess = (policy.initial_rtt_seconds if initial_rtt_seconds is None
                           else min(initial_rtt_seconds, policy.max_carried_rtt_seconds))
        self._now = now
        self._finished: Optional[float] = None
        self._factories: dict[str, _FactoryState] = {}
        query_class = QUERY_CLASSES[kind]
        fast = None if fast_peers is None else {name.lower() for name in fast_peers}
        for name in factories:
            canonical = name.lower()
            if canonical in self._factories:
                continue
            cookie = cookie_for(salt, canonical)
            query = query_class(space=space, cookie=cookie, daemon_version=daemon_version)
            self._factories[canonical] = _FactoryState(canonical, cookie, encode_query(query, pad_queries_to),
                                                       is_known_fast=fast is None or canonical in fast)
        self._incomplete = len(self._factories)
        # (due time, sequence, factory); an entry may be early or stale, and is re-checked.
        self._timers: list[tuple[float, int, str]] = [(now, index, name) for index, name in enumerate(self._factories)]
        self._sequence = len(self._timers)
        if not self._factories:
            self._finished = now

    @property
    def done(self) -> bool:
        """Every factory complete, or the deadline reached at the latest time we were told."""
        return self._finished is not None or self._now >= self.deadline

    @property
    def next_wakeup(self) -> float:
        """When `datagrams_to_send` may next have something to send (at most the deadline)."""
        if self.done:
            return self._now
        if self._timers:
            return min(self._timers[0][0], self.deadline)
        return self.deadline

    @property
    def smoothed_rtt_seconds(self) -> Optional[float]:
        return self._smoothed_rtt

    def datagrams_to_send(self, now: float) -> list[tuple[str, bytes]]:
        """The queries due at `now`, as (factory name, datagram) pairs; [] once done."""
        self._now = max(self._now, now)
        if self.done:
            return []
        rtt = self._smoothed_rtt if self._smoothed_rtt is not None else self._rtt_guess
        due: list[tuple[str, bytes]] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, name = heapq.heappop(timers)
            state = self._factories[name]
            if state.is_settled:
                continue
            if not state.is_known_fast and state.attempts >= self.policy.max_attempts_unless_fast:
                continue  # Vac's rounds are spent: wait for late replies until the deadline
            if state.attempts:
                actual_due = state.last_sent + self.policy.timeout(rtt, state.attempts)
                if actual_due > now:
                    self._schedule(actual_due, name)
                    continue
            state.attempts += 1
            if state.attempts == 1:
                state.first_sent = now
            state.last_sent = now
            due.append((name, state.query))
            self._schedule(now + self.policy.earliest_timeout(state.attempts), name)
        self.datagrams_sent += len(due)
        return due

    def _schedule(self, when: float, name: str) -> None:
        self._sequence += 1
        heapq.heappush(self._timers, (when, self._sequence, name))

    def receive(self, data: bytes, source: str, now: float) -> None:
        """Take one datagram that arrived from `source` at `now`; invalid ones are counted and dropped.

        `now` is when the datagram arrived (the kernel's stamp, or the wake-up that found
        it), which may be earlier than a time this census was given before: round trips
        are measured to it.
        """
        self._now = max(self._now, now)
        if self.done:
            self.drops["late"] += 1
            return
        try:
            reply = decode_reply(data, source)
        except MalformedDatagram:
            if not self._took_notice(data, source):
                self.drops["malformed"] += 1
            return
        status = reply.status
        if status.message_type is not self._reply_type:
            self.drops["wrong_type"] += 1
            return
        if status.space != self.space:
            self.drops["wrong_space"] += 1
            return
        state = self._factories.get(status.factory.lower())
        if state is None:
            # Vac: a reply whose factory differs from the name queried is ignored (§3.7).
            self.drops["unknown_factory"] += 1
            return
        if reply.cookie != state.cookie:
            self.drops["wrong_cookie"] += 1
            return
        key = reply_key(status)
        if key not in state.replies and len(state.replies) >= MAX_EXPECTED_PER_FACTORY:
            self.drops["too_many"] += 1
            return
        if not state.replies:
            state.first_reply_bounds = (now - state.last_sent, now - state.first_sent)
            if state.attempts == 1:
                self._sample_rtt(now - state.last_sent)
            if is_forking_responder(status.daemon_version):
                # From now on within Vac's rounds, in this census too.
                state.is_forking = True
                state.is_known_fast = False
        state.replies[key] = reply
        state.expected = expected_count(status)
        if reply.limited is not None:
            state.limited = reply.limited
        if not state.is_complete and len(state.replies) >= state.expected:
            was_settled = state.is_settled
            state.is_complete = True
            if not was_settled:
                self._settled(now)

    def _took_notice(self, data: bytes, source: str) -> bool:
        """Whether `data` is a LimitNotice for this census; if so, stop asking its factory."""
        try:
            notice = decode_limit_notice(data, source)
        except MalformedDatagram:
            return False
        state = self._factories.get(notice.factory.lower())
        if notice.space != self.space or state is None or notice.cookie != state.cookie:
            self.drops["stray_limit_notice"] += 1
            return True
        state.limited = notice.reason
        if not state.is_settled:
            state.is_refused = True
            self._settled(self._now)
        return True

    def _settled(self, now: float) -> None:
        self._incomplete -= 1
        if self._incomplete == 0:
            self._finished = now

    def _sample_rtt(self, sample: float) -> None:
        if sample < 0:
            return
        if self._smoothed_rtt is None:
            self._smoothed_rtt = sample
        else:
            alpha = self.policy.smoothing
            self._smoothed_rtt = (1 - alpha) * self._smoothed_rtt + alpha * sample

    @property
    def result(self) -> CensusResult:
        """What has been heard so far (final once `done`)."""
        finished = self._finished
        if finished is None and self.done:
            finished = self.deadline
        return CensusResult(
            kind=self.kind,
            replies={name: tuple(state.replies.values()) for name, state in self._factories.items()},
            expected={name: state.expected for name, state in self._factories.items()},
            complete=frozenset(name for name, state in self._factories.items() if state.is_complete),
            started=self.started,
            finished=finished,
            datagrams_sent=self.datagrams_sent,
            smoothed_rtt_seconds=self._smoothed_rtt,
            drops=dict(self.drops),
            answered_fast=frozenset(name for name, state in self._factories.items()
                                    if state.first_reply_bounds is not None
                                    and state.first_reply_bounds[1] <= self.policy.fast_reply_seconds),
            answered_slow=frozenset(name for name, state in self._factories.items()
                                    if state.first_reply_bounds is not None
                                    and state.first_reply_bounds[0] > self.policy.fast_reply_seconds),
            forking_responders=frozenset(name for name, state in self._factories.items() if state.is_forking),
            limited={name: state.limited for name, state in self._factories.items() if state.limited is not None},
            refused=frozenset(name for name, state in self._factories.items() if state.is_refused),
        )

