"""vacquery.responder: acceptance 38, garbage, amplification bound, rate limits, auth."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.auth import AuthMode, Authenticator, Scope
from vacquery.codec import QUERY_PAD_BYTES, decode_reply, encode, encode_query, encode_snapshot
from vacquery.messages import FactoryQuery, MachinesQuery, MachinetypesQuery, MachineStatus
from vacquery.responder import (
    UNAUTHENTICATED_AMPLIFICATION_RATIO,
    ReplyBudget,
    TokenBuckets,
    respond,
)

FACTORY = "f1.example.com"
PEER = "192.0.2.10"
NOW = 1_700_000_000.0
SNAPSHOT = snapshot(FACTORY, slots=8, machinetypes=("lhcb", "atlas", "cms"))
ENCODED = encode_snapshot(SNAPSHOT)
COOKIE = "ab" * 32
KEY = b"0123456789abcdef0123456789abcdef"
TO_FACTORY = Scope.query_to(FACTORY, SPACE)
REPLY = Scope.reply_in(SPACE)


def ask(request: bytes, **options: Any) -> list[bytes]:
    options.setdefault("trusted_sources", frozenset([PEER]))
    return respond(request, PEER, ENCODED, NOW, **options)


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def test_machines_query_gets_one_machine_status_per_slot() -> None:
    replies = ask(encode(MachinesQuery(SPACE, COOKIE)))
    statuses = [decode_reply(reply).status for reply in replies]
    assert len(replies) == 8
    assert all(isinstance(status, MachineStatus) and status.num_machines == 8 for status in statuses)
    assert sorted(status.machine for status in statuses if isinstance(status, MachineStatus)) == [
        f"f1-{ordinal:02d}.example.com" for ordinal in range(8)]


def test_machinetypes_query_gets_one_status_per_machinetype() -> None:
    replies = ask(encode(MachinetypesQuery(SPACE, COOKIE)))
    assert len(replies) == 3


def test_factory_query_gets_one_factory_status() -> None:
    assert len(ask(encode(FactoryQuery(SPACE, COOKIE)))) == 1


@pytest.mark.parametrize("method, count", [("machines", 8), ("machinetypes", 3), ("factories", 1)])
def test_legacy_method_field_works_the_same(method: str, count: int) -> None:
    assert len(ask(raw({"space": SPACE, "cookie": COOKIE, "method": method}))) == count


def test_replies_echo_the_cookie_and_share_one_time_sent() -> None:
    replies = [decode_reply(reply) for reply in ask(encode(MachinesQuery(SPACE, COOKIE)))]
    assert {reply.cookie for reply in replies} == {COOKIE}
    assert {reply.time_sent for reply in replies} == {int(NOW)}


@pytest.mark.parametrize(
    "request_bytes, reason",
    [
        (raw({"space": SPACE, "message_type": "machines_query"}), "malformed"),
        (raw({"space": "other.example.com", "cookie": COOKIE, "message_type": "machines_query"}), "wrong_space"),
        (b"machines please", "malformed"),
        (raw({"space": SPACE, "cookie": COOKIE, "message_type": "machines_gossip"}), "malformed"),
        (b"{" + b" " * 3000 + b"}", "oversized_request"),
    ],
)
def test_requests_without_cookie_other_space_or_not_json_get_no_reply(request_bytes: bytes, reason: str) -> None:
    counters: Counter[str] = Counter()
    assert ask(request_bytes, counters=counters) == []
    assert counters == {reason: 1}


def test_a_status_sent_to_the_responder_gets_no_reply() -> None:
    status_datagram = ask(encode(FactoryQuery(SPACE, COOKIE)))[0]
    assert ask(status_datagram) == []


@given(garbage=st.binary(max_size=3000))
def test_garbage_datagrams_never_raise_and_get_no_reply(garbage: bytes) -> None:
    assert respond(garbage, PEER, ENCODED, NOW) == []


def test_responder_answers_from_a_plain_snapshot_too() -> None:
    assert len(respond(encode(MachinetypesQuery(SPACE, COOKIE)), PEER, SNAPSHOT, NOW,
                       trusted_sources=frozenset([PEER]))) == 3


def statuses(replies: list[bytes]) -> list[bytes]:
    """The replies that carry a status (not a replies_limited notice)."""
    return [reply for reply in replies if b'"message_type": "replies_limited"' not in reply]


def test_stranger_draws_at_most_its_request_bytes() -> None:
    request = encode(MachinesQuery(SPACE, COOKIE))
    counters: Counter[str] = Counter()
    replies = respond(request, "203.0.113.9", ENCODED, NOW, counters=counters)
    assert 0 < sum(map(len, replies)) <= UNAUTHENTICATED_AMPLIFICATION_RATIO * len(request) == len(request)
    assert statuses(replies) == [] and counters["replies_capped"] == 1


def test_padded_census_query_from_a_stranger_draws_one_status() -> None:
    padded = encode_query(MachinetypesQuery(SPACE, COOKIE), QUERY_PAD_BYTES)
    replies = respond(padded, "203.0.113.9", ENCODED, NOW)
    assert len(statuses(replies)) == 1 and sum(map(len, replies)) <= len(padded)


def test_stranger_that_pads_its_request_draws_more() -> None:
    small = encode(MachinesQuery(SPACE, COOKIE))
    padded = small[:-1] + b', "padding": "' + b" " * (1000 - len(small) - 15) + b'"}'
    assert len(statuses(respond(padded, "203.0.113.9", ENCODED, NOW))) > len(
        statuses(respond(small, "203.0.113.9", ENCODED, NOW)))


def test_per_source_budget_limits_a_factory_that_asks_too_often() -> None:
    budget = ReplyBudget(per_source=TokenBuckets(rate_per_second=1000, burst=20_000))
    request = encode(MachinesQuery(SPACE, COOKIE))
    sent = [sum(map(len, statuses(ask(request, budget=budget)))) for _ in range(5)]
    assert sum(sent) <= 20_000 and sent[-1] == 0
    refilled = respond(request, PEER, ENCODED, NOW + 20, budget=budget, trusted_sources=frozenset([PEER]))
    assert len(refilled) == 8


def test_responder_wide_budget_bounds_many_spoofed_sources() -> None:
    budget = ReplyBudget(total=TokenBuckets(rate_per_second=0, burst=30_000))
    request = encode(FactoryQuery(SPACE, COOKIE))
    drawn = sum(sum(map(len, respond(request, f"198.51.100.{index}", ENCODED, NOW, budget=budget)))
                for index in range(100))
    assert 0 < drawn <= 30_000


def test_token_buckets_forget_least_recently_used_sources() -> None:
    buckets = TokenBuckets(rate_per_second=0, burst=10, max_keys=2)
    buckets.take("a", 10, 0)
    buckets.take("b", 10, 0)
    buckets.take("c", 10, 0)
    assert buckets.available("a", 0) == 10 and buckets.available("c", 0) == 0


def authenticator(mode: AuthMode, seed: int) -> Authenticator:
    rng = random.Random(seed)
    return Authenticator(KEY, mode, nonce_source=lambda size: bytes(rng.getrandbits(8) for _ in range(size)))


def test_required_auth_gives_unauthenticated_requests_nothing() -> None:
    counters: Counter[str] = Counter()
    replies = ask(encode(MachinesQuery(SPACE, COOKIE)), authenticator=authenticator(AuthMode.REQUIRED, 1),
                  counters=counters)
    assert replies == [] and counters == {"auth_unauthenticated": 1}


def test_authenticated_stranger_gets_every_reply_signed() -> None:
    client = authenticator(AuthMode.REQUIRED, 1)
    server = authenticator(AuthMode.REQUIRED, 2)
    request = client.sign(encode(MachinesQuery(SPACE, COOKIE)), NOW, TO_FACTORY)
    replies = respond(request, "203.0.113.9", ENCODED, NOW, authenticator=server)
    assert len(replies) == 8
    verified = [client.verify(reply, NOW, REPLY) for reply in replies]
    assert all(item.is_authenticated for item in verified)
    assert {decode_reply(item.body).cookie for item in verified} == {COOKIE}


def test_optional_auth_answers_vac03_peers_and_signs_the_replies() -> None:
    server = authenticator(AuthMode.OPTIONAL, 2)
    replies = ask(encode(MachinetypesQuery(SPACE, COOKIE)), authenticator=server)
    assert len(replies) == 3
    assert all(json.loads(reply)["vacquery_auth"].startswith("2.") for reply in replies)


def test_replayed_authenticated_request_gets_no_second_answer() -> None:
    client, server = authenticator(AuthMode.REQUIRED, 1), authenticator(AuthMode.REQUIRED, 2)
    request = client.sign(encode(FactoryQuery(SPACE, COOKIE)), NOW, TO_FACTORY)
    counters: Counter[str] = Counter()
    assert len(respond(request, PEER, ENCODED, NOW, authenticator=server, counters=counters)) == 1
    assert respond(request, PEER, ENCODED, NOW + 1, authenticator=server, counters=counters) == []
    assert counters["auth_replayed"] == 1


def test_loopback_sources_are_answered_in_full_as_only_this_host_can_send_from_them() -> None:
    request = encode(MachinesQuery(SPACE, COOKIE))
    full = respond(request, PEER, ENCODED, NOW, trusted_sources=frozenset([PEER]))
    for loopback in ("127.0.0.1", "127.0.0.23", "::1", "::ffff:127.0.0.1"):
        assert len(respond(request, loopback, ENCODED, NOW, trusted_sources=frozenset())) == len(full)
    assert len(respond(request, "198.51.100.7", ENCODED, NOW, trusted_sources=frozenset())) < len(full)
