"""Authenticated requests have a reply budget too: per request and per source per second (issue 9 item 6).

Before, a request with a valid tag was answered in full however often it came: only
unauthenticated sources were charged to the token buckets.
"""

from __future__ import annotations

import os
from collections import Counter

from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.auth import AuthMode, Authenticator, Scope
from vacquery.codec import encode, encode_snapshot
from vacquery.messages import FactoryQuery, MachinesQuery
from vacquery.responder import AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST, ReplyBudget, TokenBuckets, respond

KEY = b"0123456789abcdef0123456789abcdef"
FACTORY = "f1.example.com"
NOW = 1_700_000_000.0
COOKIE = "ab" * 32
PUBLISHED = encode_snapshot(snapshot(FACTORY, slots=16))
SOURCE = "192.0.2.10"


def site_authenticator() -> Authenticator:
    return Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)


CLIENT = site_authenticator()


def signed(now: float = NOW) -> bytes:
    return CLIENT.sign(encode(MachinesQuery(SPACE, COOKIE)), now, Scope.query_to(FACTORY, SPACE))


def drawn(replies: list[bytes]) -> int:
    return sum(len(reply) for reply in statuses(replies))


def statuses(replies: list[bytes]) -> list[bytes]:
    """The replies that carry a status: an answer limited to nothing is one small notice."""
    return [reply for reply in replies if b'"message_type": "replies_limited"' not in reply]


def test_an_authenticated_source_that_asks_too_often_is_capped_by_its_bucket() -> None:
    budget = ReplyBudget(authenticated=TokenBuckets(rate_per_second=1000, burst=40_000))
    server, counters = site_authenticator(), Counter[str]()
    answers = [respond(signed(), SOURCE, PUBLISHED, NOW, authenticator=server, budget=budget, counters=counters)
               for _ in range(10)]
    assert len(answers[0]) == 16  # the first is answered in full
    assert sum(drawn(answer) for answer in answers) <= 40_000
    assert statuses(answers[-1]) == [] and counters["replies_capped"] >= 1
    # The bucket refills at its rate: 20 s later the source is answered in full again.
    later = respond(signed(now=NOW + 20), SOURCE, PUBLISHED, NOW + 20, authenticator=server, budget=budget)
    assert len(later) == 16


def test_the_bucket_is_per_source_so_other_factories_are_still_answered() -> None:
    budget = ReplyBudget(authenticated=TokenBuckets(rate_per_second=0, burst=20_000))
    server = site_authenticator()
    while statuses(respond(signed(), SOURCE, PUBLISHED, NOW, authenticator=server, budget=budget)):
        pass
    assert len(respond(signed(), "192.0.2.11", PUBLISHED, NOW, authenticator=server, budget=budget)) == 16


def test_one_authenticated_request_draws_at_most_the_per_request_bytes() -> None:
    budget = ReplyBudget(authenticated_per_request_bytes=5_000)
    counters: Counter[str] = Counter()
    replies = respond(signed(), SOURCE, PUBLISHED, NOW, authenticator=site_authenticator(), budget=budget,
                      counters=counters)
    assert 0 < drawn(replies) <= 5_000 and len(replies) < 16 and counters["replies_capped"] == 1


def test_without_a_budget_object_the_default_per_request_bound_still_holds() -> None:
    # 9,000 slots of about 600 bytes: more than the 4 MiB one request may draw.
    big = encode_snapshot(snapshot(FACTORY, slots=9000, machinetypes=("lhcb",)))
    counters: Counter[str] = Counter()
    replies = respond(signed(), SOURCE, big, NOW, authenticator=site_authenticator(), counters=counters)
    assert AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST - 10_240 < drawn(replies) <= AUTHENTICATED_MAX_REPLY_BYTES_PER_REQUEST
    assert counters["replies_capped"] == 1


def test_unsigned_flood_does_not_spend_the_budget_of_the_sites_own_census() -> None:
    budget = ReplyBudget(total=TokenBuckets(rate_per_second=0, burst=10_000))
    server = site_authenticator()
    server.mode = AuthMode.OPTIONAL
    unsigned = encode(FactoryQuery(SPACE, COOKIE))
    for index in range(100):
        respond(unsigned, f"198.51.100.{index}", PUBLISHED, NOW, authenticator=server, budget=budget)
    assert statuses(respond(unsigned, "198.51.100.200", PUBLISHED, NOW, authenticator=server, budget=budget)) == []
    assert len(respond(signed(), SOURCE, PUBLISHED, NOW, authenticator=server, budget=budget)) == 16
