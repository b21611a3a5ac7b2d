"""Vac 03's census and pass timing, replayed in the simulator as the baseline.

Vac 03's client (behaviour reference §3.7): send to every incomplete factory, then read
until `udp_timeout_seconds / 5` (2 s) pass without a datagram; up to 6 such rounds; no
overall deadline. Its factory made at most one creation per cycle and slept 60 s after
each cycle (§1.3, Appendix C); it had no probe stagger (§4.3).

`VacCensus` offers the driving interface of `vacquery.client.Census` so the simulator
runs both alike, and applies the same acceptance checks (space, factory, cookie, keys).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from vacquery.client import MAX_EXPECTED_PER_FACTORY, CensusResult, cookie_for, expected_count, reply_key
from vacquery.codec import MalformedDatagram, decode_reply, encode_query
from vacquery.messages import QUERY_CLASSES, REPLY_TYPE, MessageType, Reply

VAC_ROUNDS = 6
VAC_SILENCE_SECONDS = 2.0
VAC_SLEEP_SECONDS = 60.0
VAC_CREATIONS_PER_CYCLE = 1


class VacCensus:
    """Vac 03's round-based census: the same interface as `Census`, Vac's timing."""

    def __init__(
        self,
        kind: MessageType,
        space: str,
        factories: Sequence[str],
        now: float,
        *,
        salt: str,
        rounds: int = VAC_ROUNDS,
        silence_seconds: float = VAC_SILENCE_SECONDS,
    ) -> None:
        self.kind = kind
        self.space = space
        self.started = now
        self.rounds = rounds
        self.silence_seconds = silence_seconds
        self.datagrams_sent = 0
        self.drops: Counter[str] = Counter()
        self._reply_type = REPLY_TYPE[kind]
        self._round = 0
        self._round_quiet_after = now  # Vac's recv() timeout restarts on every datagram
        self._finished: Optional[float] = None
        self._cookies: dict[str, str] = {}
        self._queries: dict[str, bytes] = {}
        self._replies: dict[str, dict[str, Reply]] = {}
        self._expected: dict[str, Optional[int]] = {}
        for name in factories:
            canonical = name.lower()
            cookie = cookie_for(salt, canonical)
            self._cookies[canonical] = cookie
            self._queries[canonical] = encode_query(QUERY_CLASSES[kind](space=space, cookie=cookie))
            self._replies[canonical] = {}
            self._expected[canonical] = None

    def _is_complete(self, name: str) -> bool:
        expected = self._expected[name]
        return expected is not None and len(self._replies[name]) >= expected

    @property
    def done(self) -> bool:
        return self._finished is not None

    @property
    def next_wakeup(self) -> float:
        return self._round_quiet_after

    def datagrams_to_send(self, now: float) -> list[tuple[str, bytes]]:
        if self.done or now < self._round_quiet_after:
            return []
        incomplete = [name for name in self._queries if not self._is_complete(name)]
        if self._round >= self.rounds or not incomplete:
            self._finished = now
            return []
        self._round += 1
        self._round_quiet_after = now + self.silence_seconds
        self.datagrams_sent += len(incomplete)
        return [(name, self._queries[name]) for name in incomplete]

    def receive(self, data: bytes, source: str, now: float) -> None:
        if self.done:
            self.drops["late"] += 1
            return
        self._round_quiet_after = now + self.silence_seconds
        try:
            reply = decode_reply(data, source)
        except MalformedDatagram:
            self.drops["malformed"] += 1
            return
        status = reply.status
        name = status.factory.lower()
        if status.message_type is not self._reply_type or status.space != self.space or name not in self._cookies:
            self.drops["rejected"] += 1
            return
        if reply.cookie != self._cookies[name]:
            self.drops["wrong_cookie"] += 1
            return
        replies = self._replies[name]
        key = reply_key(status)
        if key in replies or len(replies) < MAX_EXPECTED_PER_FACTORY:
            replies[key] = reply
            self._expected[name] = expected_count(status)

    @property
    def result(self) -> CensusResult:
        return CensusResult(
            kind=self.kind,
            replies={name: tuple(replies.values()) for name, replies in self._replies.items()},
            expected=dict(self._expected),
            complete=frozenset(name for name in self._replies if self._is_complete(name)),
            started=self.started,
            finished=self._finished,
            datagrams_sent=self.datagrams_sent,
            smoothed_rtt_seconds=None,
            drops=dict(self.drops),
        )
