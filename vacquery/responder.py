"""Answer one VacQuery request from a factory's published snapshot: a pure function.

`respond(request, source, snapshot, now)` returns the reply datagrams to send back to the
source. It reads no clock and touches no socket; the token buckets, the authenticator,
the memory of limited sources and the counters it is given hold the only state.

Kept from Vac 03 (§3.3, acceptance 38): a datagram that is not JSON, has no cookie or a
different space gets no reply; `machines_query` (or method `machines`) gets one
`machine_status` per slot, `machinetypes_query` one `machinetype_status` per machinetype,
`factory_query` one `factory_status`; each reply echoes the cookie; all replies to one
request carry the same time_sent; an unknown message type is ignored.

Amplification bound (fixing §11: a 223-byte spoofable machines query drew 64 x ~770
bytes from a 64-slot factory, 222 x its size; issue 11 item 5). The rule, per request,
by who is asking:
1. Authenticated (a valid site-key tag made for this factory and space, see
   `vacquery.auth`): answered in full up to AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST
   (4 MiB, all a census can use: it reads at most 4,096 statuses of under 1 KiB from one
   factory), charged to a per-source bucket of its own (`ReplyBudget.authenticated`,
   default 8 MiB burst and 512 KiB/s). The tag cannot be made without the key, so the
   source cannot be spoofed; the bucket is apart from the unauthenticated ones, so a
   flood of unsigned requests cannot starve the site's own census.
2. `vacquery_auth = required` and unauthenticated: no reply at all (0 bytes).
3. Otherwise unauthenticated (no key configured, or `optional`):
   a. from an unlisted source (an address that is not one of the space's factories):
      at most UNAUTHENTICATED_AMPLIFICATION_RATIO (1) x the request's bytes, cut at whole
      datagrams, so the reply is never larger than the query. Vac 03's 223-byte query
      fits no status; our 880-byte padded one fits one machine or machinetype status
      (a factory_status, about 1.2 KB, fits none);
   b. from a listed factory (`trusted_sources`), or from a loopback address (which only
      this host can send from: the kernel drops loopback sources arriving from a
      network): answered in full, so Vac 03 peers and Vac 03's `vac` on a factory keep
      working (acceptance 38);
   c. in both cases the bytes are charged to a per-source token bucket and a
      responder-wide one (`ReplyBudget`, defaults: PER_SOURCE_BURST_BYTES (256 KiB) burst
      and PER_SOURCE_BYTES_PER_SECOND (8 KiB/s) per source, 8 MiB burst and 2 MiB/s in
      total); what the buckets cannot cover is not sent.
   A listed address is easy to spoof. What a spoofed one can draw from one responder is
   the per-source bucket: at most 256 KiB at once and 8 KiB/s after that, and the
   replies go to the listed factory whose address was forged, never elsewhere; all
   sources together draw at most the responder-wide bucket. `vacquery_auth = required`
   removes even that (rule 2).

An answer cut short by 3a or by a budget is still useful: each reply sent carries the
member `"replies_limited": "<reason>"` (a LimitReason; Vac 03's client ignores unknown
keys), and the statuses sent rotate per (source, cookie), so a client that asks again
with the same cookie (every census retransmits to an incomplete factory) is given the
next ones; an unlisted `vac machines` that pads its queries gathers every slot, paying a
query's bytes for each status. When not one status fits, a `LimitNotice` (about 200
bytes) is sent instead if it is no larger than the request, so our client can say why it
heard nothing. Every limited answer is counted (`replies_capped`, the metric
`vac_vacquery_replies_capped_total`) and logged once per source per
LIMIT_LOG_INTERVAL_SECONDS.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Optional, Sequence, Union

from vacquery.auth import AuthRejected, Authenticator, Scope
from vacquery.codec import (
    EncodedSnapshot,
    MalformedDatagram,
    decode_query,
    encode_limit_notice,
    encode_snapshot,
    stamp_all,
)
from vacquery.messages import REPLY_TYPE, LimitNotice, LimitReason, MessageType, Snapshot

log = logging.getLogger(__name__)

# Vac's responder read at most 1024 bytes (§3.1); signed queries are ~1,015 bytes (ours are
# padded to 880), and a client may pad to 1024. Twice that leaves room without inviting
# large requests.
MAX_REQUEST_BYTES = 2048
# Rule 3a: an unlisted, unsigned source draws at most this many times its request's bytes.
UNAUTHENTICATED_AMPLIFICATION_RATIO = 1
# Rule 1 of the docstring: what a census can read from one factory (client.py's
# MAX_EXPECTED_PER_FACTORY statuses, each well under 1 KiB).
AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST = 4 * 1024 * 1024
# Rule 3c. The burst holds a full unsigned machines answer of a 256-slot factory (~200 KB;
# a 64-slot one is 52 KB), so Vac 03's `vac machines` on a listed factory is answered in
# full; the rate is about 10 times what a peer's census draws from a 30-machinetype
# factory at the default cycle_seconds (30 x ~800 bytes each 30 s), and lets `vac
# machines` of a 64-slot factory run again every 6 s.
PER_SOURCE_BURST_BYTES = 256 * 1024
PER_SOURCE_BYTES_PER_SECOND = 8 * 1024
TOTAL_BURST_BYTES = 8 * 1024 * 1024
TOTAL_BYTES_PER_SECOND = 2 * 1024 * 1024
# A limited source is logged at most once in this long, and at most LIMIT_LOG_LINES
# sources a interval in all (a spray of spoofed sources must not fill the log).
LIMIT_LOG_INTERVAL_SECONDS = 600.0
LIMIT_LOG_LINES = 20


_LIMIT_HINTS = {
    LimitReason.UNLISTED: "an admin host is answered in full if vac there signs with the site key, vacquery_key_file",
    LimitReason.BUDGET: "the source asks more than the per-source reply budget: a loop, or a forged address",
}


class TokenBuckets:
    """One token bucket per key (source address), time passed in, with bounded memory.

    When more than `max_keys` sources are tracked the least recently used is forgotten,
    which gives that source a full bucket again; the responder-wide bucket still bounds
    the total an attacker spraying spoofed sources can draw.
    """

    def __init__(self, rate_per_second: float, burst: float, max_keys: int = 65536) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def available(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - last) * self.rate_per_second)

    def take(self, key: str, amount: float, now: float) -> None:
        tokens = self.available(key, now) - amount
        self._buckets.pop(key, None)  # re-insert: dict order is the recency order
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]


class LimitedSources:
    """What the responder remembers of the sources whose answers it cut short.

    - The rotation: for each (source, cookie), the index of the status to send first next
      time, so that asking again brings the statuses not yet sent.
    - When each source was last logged, so a limited source is logged once per interval.
    Both are bounded (least recently used forgotten first): forgetting costs a repeat, not
    a wrong answer.
    """

    def __init__(self, max_keys: int = 4096, log_interval_seconds: float = LIMIT_LOG_INTERVAL_SECONDS,
                 log_lines_per_interval: int = LIMIT_LOG_LINES) -> None:
        self.max_keys = max_keys
        self.log_interval_seconds = log_interval_seconds
        self.log_lines_per_interval = log_lines_per_interval
        self._next_start: OrderedDict[tuple[str, str, MessageType], int] = OrderedDict()
        self._logged_at: OrderedDict[str, float] = OrderedDict()
        self._interval_started = float("-inf")
        self._lines_this_interval = 0
        self.unlogged = 0  # limited answers not logged because of the per-interval cap

    def first_index(self, source: str, cookie: str, kind: MessageType, count: int) -> int:
        start = self._next_start.get((source, cookie, kind), 0)
        return start % count if count else 0

    def advance(self, source: str, cookie: str, kind: MessageType, next_start: int) -> None:
        key = (source, cookie, kind)
        self._next_start.pop(key, None)
        self._next_start[key] = next_start
        while len(self._next_start) > self.max_keys:
            self._next_start.popitem(last=False)

    def should_log(self, source: str, now: float) -> bool:
        """True at most once per source per interval, and for at most so many sources an interval."""
        if now - self._interval_started >= self.log_interval_seconds:
            self._interval_started, self._lines_this_interval = now, 0
        last = self._logged_at.get(source)
        if last is not None and now - last < self.log_interval_seconds:
            return False
        if self._lines_this_interval >= self.log_lines_per_interval:
            self.unlogged += 1
            return False
        self._lines_this_interval += 1
        self._logged_at.pop(source, None)
        self._logged_at[source] = now
        while len(self._logged_at) > self.max_keys:
            self._logged_at.popitem(last=False)
        return True


@dataclass
class ReplyBudget:
    """The bytes requests may draw: unauthenticated per source and responder-wide, authenticated per source.

    `limited` remembers the sources whose answers were cut short (rotation, logging).
    """

    per_source: TokenBuckets = field(
        default_factory=lambda: TokenBuckets(PER_SOURCE_BYTES_PER_SECOND, PER_SOURCE_BURST_BYTES))
    total: TokenBuckets = field(default_factory=lambda: TokenBuckets(TOTAL_BYTES_PER_SECOND, TOTAL_BURST_BYTES))
    # A census asks each peer once per pass for a few KB; `vac machines` draws a 64-slot
    # factory's 53 KB: 512 KiB/s leaves room for both many times over.
    authenticated: TokenBuckets = field(default_factory=lambda: TokenBuckets(512 * 1024, 8 * 1024 * 1024))
    authenticated_per_request_bytes: int = AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST
    limited: LimitedSources = field(default_factory=LimitedSources)

    def grant(self, source: str, wanted: int, now: float) -> float:
        """How many of `wanted` bytes an unauthenticated request may be sent now (not yet charged)."""
        return max(0.0, min(wanted, self.per_source.available(source, now), self.total.available("*", now)))

    def charge(self, source: str, spent: int, now: float) -> None:
        self.per_source.take(source, spent, now)
        self.total.take("*", spent, now)

    def grant_authenticated(self, source: str, wanted: int, now: float) -> float:
        """How many of `wanted` bytes an authenticated request may be sent now (not yet charged)."""
        return max(0.0, min(wanted, self.authenticated_per_request_bytes, self.authenticated.available(source, now)))

    def charge_authenticated(self, source: str, spent: int, now: float) -> None:
        self.authenticated.take(source, spent, now)


def respond(
    request: bytes,
    source: str,
    snapshot: Union[Snapshot, EncodedSnapshot],
    now: float,
    *,
    authenticator: Optional[Authenticator] = None,
    budget: Optional[ReplyBudget] = None,
    trusted_sources: AbstractSet[str] = frozenset(),
    counters: Optional[Counter[str]] = None,
    trust_loopback: bool = True,
) -> list[bytes]:
    """The datagrams that answer `request` from `source` (a host address), possibly none.

    Pass an `EncodedSnapshot` (from `codec.encode_snapshot`, once per published snapshot)
    to answer without re-encoding. Drops are counted in `counters` by reason; an answer
    cut short is counted as `answered` and `replies_capped`. `trust_loopback=False` treats
    loopback sources like any other (benchmarks and tests measure unlisted sources on
    loopback with it).
    """
    tally: Counter[str] = counters if counters is not None else Counter()
    request_bytes = len(request)
    if request_bytes > MAX_REQUEST_BYTES:
        tally["oversized_request"] += 1
        return []
    is_authenticated = False
    encoded = snapshot if isinstance(snapshot, EncodedSnapshot) else encode_snapshot(snapshot)
    if authenticator is not None:
        try:
            # A tag counts only if it was made for this factory and space (issue 9 item 6).
            verified = authenticator.verify(request, now, Scope.query_to(encoded.factory, encoded.space), source)
        except AuthRejected as rejection:
            tally[f"auth_{rejection.reason}"] += 1
            return []
        request, is_authenticated = verified.body, verified.is_authenticated
    try:
        query = decode_query(request, source)
    except MalformedDatagram as error:
        tally["malformed"] += 1
        log.debug("dropped request peer=%s reason=%s", source, error.reason)
        return []
    if query.space != encoded.space:
        tally["wrong_space"] += 1
        return []

    time_sent = int(now)
    reply_type = REPLY_TYPE[query.message_type]
    bodies = encoded.bodies[query.message_type]

    def marked(chosen: Sequence[bytes], reason: LimitReason) -> list[bytes]:
        """The replies of a limited answer carrying `chosen` status bodies: marked, and signed with a key."""
        replies = stamp_all(reply_type, chosen, query.cookie, time_sent, reason.value)
        if authenticator is not None:
            replies = authenticator.sign_all(replies, now, Scope.reply_in(encoded.space))
        return replies

    unsigned = stamp_all(reply_type, bodies, query.cookie, time_sent)
    # Sized before signing: signing every status of an answer that is then cut would cost
    # a stranger's flood 64 HMACs a datagram. A tag adds the same bytes to every datagram.
    tag_bytes = 0
    if authenticator is not None:
        tag_bytes = len(authenticator.sign(b'{"": 0}', now, Scope.reply_in(encoded.space))) - len(b'{"": 0}')
    wanted = sum(len(reply) for reply in unsigned) + tag_bytes * len(unsigned)
    # In required mode verify() has already refused unauthenticated requests (rule 2).
    is_listed = is_authenticated or source in trusted_sources or (trust_loopback and is_loopback(source))
    reason = LimitReason.BUDGET
    if is_authenticated:
        limit = float(min(wanted, AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST))
        if budget is not None:
            limit = budget.grant_authenticated(source, int(limit), now)
    else:
        limit = float(wanted)
        if not is_listed and UNAUTHENTICATED_AMPLIFICATION_RATIO * request_bytes < wanted:
            limit, reason = float(UNAUTHENTICATED_AMPLIFICATION_RATIO * request_bytes), LimitReason.UNLISTED
        if budget is not None:
            granted = budget.grant(source, int(limit), now)
            if granted < limit:
                limit, reason = granted, LimitReason.BUDGET

    charged = wanted
    if wanted <= limit:
        replies = unsigned if authenticator is None else authenticator.sign_all(unsigned, now,
                                                                                 Scope.reply_in(encoded.space))
    else:
        replies = _limited_answer(bodies, lambda chosen: marked(chosen, reason), limit, source, query.cookie,
                                  query.message_type, budget)
        charged = sum(len(reply) for reply in replies)
        statuses_sent = len(replies)
        if not replies:
            # Not charged: it is no larger than the request, so it amplifies nothing.
            notice = encode_limit_notice(LimitNotice(query.cookie, encoded.space, encoded.factory, reason.value))
            if authenticator is not None:
                notice = authenticator.sign(notice, now, Scope.reply_in(encoded.space))
            if len(notice) <= request_bytes:
                replies = [notice]
        tally["replies_capped"] += 1
        if budget is None or budget.limited.should_log(source, now):
            # A listed factory over its budget is worth a warning (looping, or its address
            # forged); an unlisted source is most often a scanner, or an admin host to let in.
            log.log(logging.WARNING if is_listed else logging.INFO,
                    "VacQuery answer limited source=%s listed=%s query=%s reason=%s statuses_sent=%d of=%d "
                    "bytes_in=%d bytes_out=%d (logged once per source per %.0fs; %s)",
                    source, "yes" if is_listed else "no", query.message_type.value, reason.value, statuses_sent,
                    len(bodies), request_bytes, sum(len(reply) for reply in replies),
                    LIMIT_LOG_INTERVAL_SECONDS if budget is None else budget.limited.log_interval_seconds,
                    _LIMIT_HINTS[reason])
    if budget is not None and charged:
        if is_authenticated:
            budget.charge_authenticated(source, charged, now)
        else:
            budget.charge(source, charged, now)
    tally["answered"] += 1
    return replies


def _limited_answer(
    bodies: Sequence[bytes],
    datagrams: Callable[[Sequence[bytes]], list[bytes]],
    limit: float,
    source: str,
    cookie: str,
    kind: MessageType,
    budget: Optional[ReplyBudget],
) -> list[bytes]:
    """As many replies as fit in `limit` bytes, starting where the last answer to this cookie stopped."""
    count = len(bodies)
    start = budget.limited.first_index(source, cookie, kind, count) if budget is not None else 0
    chosen: list[bytes] = []
    total = 0
    for offset in range(count):
        reply = datagrams((bodies[(start + offset) % count],))[0]
        if total + len(reply) > limit:
            break
        chosen.append(reply)
        total += len(reply)
    if budget is not None and chosen:
        budget.limited.advance(source, cookie, kind, start + len(chosen))
    return chosen


def is_loopback(source: str) -> bool:
    """127.0.0.0/8 or ::1 (an IPv4-mapped loopback too): traffic that cannot come from elsewhere."""
    try:
        address = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))
