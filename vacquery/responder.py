"""Answer one VacQuery request from a factory's published snapshot: a pure function.

`respond(request, source, snapshot, now)` returns the reply datagrams to send back to the
source. It reads no clock and touches no socket; the token buckets, the authenticator
and the counters it is given hold the only state.

Kept from Vac 03 (§3.3, acceptance 38): a datagram that is not JSON, has no cookie or a
different space gets no reply; `machines_query` (or method `machines`) gets one
`machine_status` per slot, `machinetypes_query` one `machinetype_status` per machinetype,
`factory_query` one `factory_status`; each reply echoes the cookie; all replies to one
request carry the same time_sent; an unknown message type is ignored.

Amplification bound (fixing §11: a 200-byte spoofable request drew numMachineSlots x
~900 bytes). The rule, per request, by who is asking:
1. Authenticated (a valid site-key tag made for this factory and space, see
   `vacquery.auth`): answered in full up to AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST
   (4 MiB, all a census can use: it reads at most 4,096 statuses of under 1 KiB from one
   factory), charged to a per-source bucket of its own (`ReplyBudget.authenticated`,
   default 8 MiB burst and 512 KiB/s). A key holder is a site factory, but a looping or
   misconfigured one must not draw without limit either (issue 9 item 6); the bucket is
   apart from the unauthenticated ones, so a flood of unsigned requests cannot starve the
   site's own census.
2. `vacquery_auth = required` and unauthenticated: no reply at all (0 bytes).
3. Otherwise unauthenticated (no key configured, or `optional`):
   a. from a stranger (an address that is not one of the space's factories): the reply
      bytes are at most UNAUTHENTICATED_AMPLIFICATION_RATIO (10) x the request's bytes,
      cut at whole datagrams (a 224-byte Vac query draws at most 2,240 bytes; a client
      that pads its request to 1,024 bytes may draw 10,240);
   b. from a factory of the space (`trusted_sources`), or from a loopback address (which
      only this host can send from: the kernel drops loopback sources arriving from a
      network): answered in full, so Vac 03 peers keep working during a migration
      (acceptance 38 holds for them) and `vac` on the factory itself sees every slot;
   c. in both cases the bytes are charged to a per-source token bucket and a responder-wide
      one (`ReplyBudget`, defaults: 256 KiB burst and 32 KiB/s per source, 8 MiB burst
      and 2 MiB/s in total); what the buckets cannot cover is not sent.
So one unauthenticated request never draws more than max(10 x its size, the per-source
burst) bytes, one authenticated request never more than 4 MiB, and one source never more
than its refill rate, from one responder.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import AbstractSet, Optional, Union

from vacquery.auth import AuthRejected, Authenticator, Scope
from vacquery.codec import EncodedSnapshot, MalformedDatagram, decode_query, encode_snapshot, stamp_all
from vacquery.messages import REPLY_TYPE, Snapshot

log = logging.getLogger(__name__)

# Vac's responder read at most 1024 bytes (§3.1); signed queries are ~380 bytes, and a
# client may pad to 1024. Twice that leaves room without inviting large requests.
MAX_REQUEST_BYTES = 2048
UNAUTHENTICATED_AMPLIFICATION_RATIO = 10
# Rule 1 of the docstring: what a census can read from one factory (client.py's
# MAX_EXPECTED_PER_FACTORY statuses, each well under 1 KiB).
AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST = 4 * 1024 * 1024


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


@dataclass
class ReplyBudget:
    """The bytes requests may draw: unauthenticated per source and responder-wide, authenticated per source."""

    per_source: TokenBuckets = field(default_factory=lambda: TokenBuckets(32 * 1024, 256 * 1024))
    total: TokenBuckets = field(default_factory=lambda: TokenBuckets(2 * 1024 * 1024, 8 * 1024 * 1024))
    # A census asks each peer once per pass for a few KB; `vac machines` draws a 64-slot
    # factory's 53 KB: 512 KiB/s leaves room for both many times over.
    authenticated: TokenBuckets = field(default_factory=lambda: TokenBuckets(512 * 1024, 8 * 1024 * 1024))
    authenticated_per_request_bytes: int = AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST

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
) -> list[bytes]:
    """The datagrams that answer `request` from `source` (a host address), possibly none.

    Pass an `EncodedSnapshot` (from `codec.encode_snapshot`, once per published snapshot)
    to answer without re-encoding. Drops are counted in `counters` by reason.
    """
    tally: Counter[str] = counters if counters is not None else Counter()
    if len(request) > MAX_REQUEST_BYTES:
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
    replies = stamp_all(reply_type, encoded.bodies[query.message_type], query.cookie, time_sent)
    if authenticator is not None:
        replies = authenticator.sign_all(replies, now, Scope.reply_in(encoded.space))

    if is_authenticated:
        limit = float(min(sum(len(reply) for reply in replies), AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST))
        if budget is not None:
            limit = budget.grant_authenticated(source, int(limit), now)
        replies = _within(replies, limit)
        if len(replies) < len(encoded.bodies[query.message_type]):
            tally["replies_capped"] += 1
        if budget is not None and replies:
            budget.charge_authenticated(source, sum(len(reply) for reply in replies), now)
    else:
        # In required mode verify() has already refused unauthenticated requests (rule 2).
        limit = float(sum(len(reply) for reply in replies))
        if source not in trusted_sources and not is_loopback(source):
            limit = min(limit, UNAUTHENTICATED_AMPLIFICATION_RATIO * len(request))
        if budget is not None:
            limit = min(limit, budget.grant(source, int(limit), now))
        replies = _within(replies, limit)
        if len(replies) < len(encoded.bodies[query.message_type]):
            tally["replies_capped"] += 1
        if budget is not None and replies:
            budget.charge(source, sum(len(reply) for reply in replies), now)
    tally["answered"] += 1
    return replies


def is_loopback(source: str) -> bool:
    """127.0.0.0/8 or ::1 (an IPv4-mapped loopback too): traffic that cannot come from elsewhere."""
    try:
        address = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _within(replies: list[bytes], limit: float) -> list[bytes]:
    """The longest prefix of `replies` whose total size is within `limit` bytes."""
    total = 0
    for index, reply in enumerate(replies):
        total += len(reply)
        if total > limit:
            return replies[:index]
    return replies
