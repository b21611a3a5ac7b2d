"""The amplification bounds of issue 11 item 5, one test per bound, on a 64-slot factory.

- An unsigned query from a source that is not a listed factory draws at most its own
  size (bytes out / bytes in <= 1), for the factory, machinetypes and machines queries,
  bare (Vac 03's size) or padded (ours).
- A listed factory, unsigned, is answered in full (Vac 03 peers and Vac 03's `vac` keep
  working), and a spoofed listed address draws at most the per-source bucket.
- With `vacquery_auth = required`, every unsigned query draws nothing; a signed one is
  answered in full.
- A limited answer is visible: marked replies, a notice when nothing fits, one log line
  per source per interval, the replies_capped counter, and `vac` saying so on stderr.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.auth import AuthMode, Authenticator, Scope
from vacquery.cli import PeerAddress, SpaceSettings, run_listing
from vacquery.client import Census, cookie_for
from vacquery.codec import (
    QUERY_PAD_BYTES,
    MalformedDatagram,
    decode_limit_notice,
    decode_reply,
    encode_limit_notice,
    encode_query,
    encode_reply,
    encode_snapshot,
)
from vacquery.messages import QUERY_CLASSES, REPLY_TYPE, LimitNotice, LimitReason, MessageType
from vacquery.responder import (
    PER_SOURCE_BURST_BYTES,
    PER_SOURCE_BYTES_PER_SECOND,
    LimitedSources,
    ReplyBudget,
    respond,
)

FACTORY = "f1.example.com"
SLOTS = 64
MACHINETYPES = ("lhcb", "atlas", "cms", "alice")
PUBLISHED = encode_snapshot(snapshot(FACTORY, slots=SLOTS, machinetypes=MACHINETYPES))
COOKIE = cookie_for("salt", FACTORY)
NOW = 1_700_000_000.0
LISTED = "192.0.2.10"
UNLISTED = "203.0.113.9"
KEY = b"0123456789abcdef0123456789abcdef"
KINDS = (MessageType.FACTORY_QUERY, MessageType.MACHINETYPES_QUERY, MessageType.MACHINES_QUERY)
FULL_COUNT = {MessageType.FACTORY_QUERY: 1, MessageType.MACHINETYPES_QUERY: len(MACHINETYPES),
              MessageType.MACHINES_QUERY: SLOTS}
VAC03_REQUIRED_KEYS = {
    MessageType.MACHINE_STATUS: "cookie space factory num_machines machine state uuid created_time started_time "
                                "heartbeat_time cpu_seconds cpu_percentage hs06 machinetype shutdown_message "
                                "shutdown_time".split(),
    MessageType.MACHINETYPE_STATUS: "cookie space factory num_machinetypes machinetype running_hs06 "
                                    "num_before_fizzle shutdown_message shutdown_time shutdown_machine".split(),
    MessageType.FACTORY_STATUS: "cookie space factory".split(),
}


def query(kind: MessageType, pad_to: int = 0, cookie: str = COOKIE) -> bytes:
    """Vac 03's query (pad_to=0, about 225 bytes), or ours padded to `pad_to` bytes."""
    return encode_query(QUERY_CLASSES[kind](space=SPACE, cookie=cookie), pad_to)


def is_notice(datagram: bytes) -> bool:
    try:
        decode_limit_notice(datagram)
    except MalformedDatagram:
        return False
    return True


def statuses(replies: list[bytes]) -> list[bytes]:
    return [reply for reply in replies if not is_notice(reply)]


def vac03_accepts(datagram: bytes, kind: MessageType, cookie: str = COOKIE) -> bool:
    """Vac 03's client's test for a reply (§3.7): type, space, cookie and its required keys."""
    try:
        document: dict[str, Any] = json.loads(datagram)
    except ValueError:
        return False
    reply_type = REPLY_TYPE[kind]
    return (document.get("message_type") == reply_type.value and document.get("space") == SPACE
            and document.get("cookie") == cookie and all(key in document for key in VAC03_REQUIRED_KEYS[reply_type]))


def signing_authenticator(mode: AuthMode = AuthMode.REQUIRED) -> Authenticator:
    return Authenticator(KEY, mode, nonce_source=os.urandom)


# ---------------------------------------------------------------------- unlisted, unsigned: <= 1x


@pytest.mark.parametrize("pad_to", [0, QUERY_PAD_BYTES], ids=["vac03-size", "padded"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.value)
def test_an_unlisted_unsigned_query_draws_at_most_its_own_size(kind: MessageType, pad_to: int) -> None:
    request = query(kind, pad_to)
    counters: Counter[str] = Counter()
    replies = respond(request, UNLISTED, PUBLISHED, NOW, budget=ReplyBudget(), counters=counters)
    assert sum(map(len, replies)) <= len(request)
    assert replies and counters["replies_capped"] == 1  # the limit is never silent


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.value)
def test_the_bound_holds_with_a_key_in_optional_mode_too(kind: MessageType) -> None:
    # The replies are signed (about 135 bytes more each): the bound counts the signed bytes.
    request = query(kind, QUERY_PAD_BYTES)
    replies = respond(request, UNLISTED, PUBLISHED, NOW, authenticator=signing_authenticator(AuthMode.OPTIONAL),
                      budget=ReplyBudget())
    assert 0 < sum(map(len, replies)) <= len(request)


def test_a_padded_query_draws_one_marked_status_that_vac03_still_accepts() -> None:
    replies = respond(query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES), UNLISTED, PUBLISHED, NOW)
    assert len(replies) == 1
    assert decode_reply(replies[0]).limited == LimitReason.UNLISTED.value
    assert vac03_accepts(replies[0], MessageType.MACHINES_QUERY)


def test_when_no_status_fits_a_notice_is_sent_that_vac03_ignores() -> None:
    request = query(MessageType.FACTORY_QUERY, QUERY_PAD_BYTES)  # a factory_status is ~1.1 KB
    replies = respond(request, UNLISTED, PUBLISHED, NOW)
    assert len(replies) == 1 and len(replies[0]) <= len(request)
    notice = decode_limit_notice(replies[0])
    assert (notice.cookie, notice.factory, notice.space, notice.reason) == (COOKIE, FACTORY, SPACE, "unlisted")
    assert not vac03_accepts(replies[0], MessageType.FACTORY_QUERY)


def test_a_notice_is_not_sent_when_it_would_be_larger_than_the_query() -> None:
    tiny = json.dumps({"space": SPACE, "cookie": "c", "method": "machines"}).encode()
    assert len(tiny) < 100
    assert respond(tiny, UNLISTED, PUBLISHED, NOW) == []


def test_asking_again_with_the_same_cookie_brings_the_next_statuses() -> None:
    budget = ReplyBudget()
    request = query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES)
    machines = []
    for _ in range(SLOTS):
        (reply,) = respond(request, UNLISTED, PUBLISHED, NOW, budget=budget)
        assert len(reply) <= len(request)
        machines.append(decode_reply(reply).status.machine)  # type: ignore[union-attr]
    assert len(set(machines)) == SLOTS
    # The rotation is per source: another source starts at the first slot.
    (other,) = respond(request, "203.0.113.10", PUBLISHED, NOW, budget=budget)
    assert decode_reply(other).status.machine == machines[0]  # type: ignore[union-attr]


def test_an_unlisted_census_gathers_every_slot_at_one_status_per_query() -> None:
    census = Census(MessageType.MACHINES_QUERY, SPACE, [FACTORY], 0.0, deadline_seconds=10.0, salt="salt")
    budget = ReplyBudget()
    bytes_in = bytes_out = 0
    now = 0.0
    while not census.done:
        for _, datagram in census.datagrams_to_send(now):
            bytes_in += len(datagram)
            for reply in respond(datagram, UNLISTED, PUBLISHED, NOW + now, budget=budget):
                bytes_out += len(reply)
                census.receive(reply, "192.0.2.1", now + 0.0005)
        now = max(census.next_wakeup, now + 0.0005)
    result = census.result
    assert len(result.statuses(FACTORY)) == SLOTS and FACTORY in result.complete
    assert result.limited == {FACTORY: "unlisted"}
    assert bytes_out <= bytes_in


def test_a_census_stops_asking_a_factory_that_sent_a_notice() -> None:
    census = Census(MessageType.FACTORY_QUERY, SPACE, [FACTORY], 0.0, deadline_seconds=10.0, salt="salt")
    for _, datagram in census.datagrams_to_send(0.0):
        for reply in respond(datagram, UNLISTED, PUBLISHED, NOW):
            census.receive(reply, "192.0.2.1", 0.001)
    assert census.done and census.datagrams_to_send(0.1) == []
    result = census.result
    assert result.limited == {FACTORY: "unlisted"} and result.refused == {FACTORY} and result.silent == ()


# ---------------------------------------------------------------------- listed, unsigned


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.value)
def test_a_listed_factory_unsigned_gets_the_whole_answer_as_vac03_did(kind: MessageType) -> None:
    replies = respond(query(kind), LISTED, PUBLISHED, NOW, budget=ReplyBudget(), trusted_sources={LISTED})
    assert len(replies) == FULL_COUNT[kind]
    assert all(vac03_accepts(reply, kind) for reply in replies)
    assert all(decode_reply(reply).limited is None for reply in replies)


def test_a_spoofed_listed_address_draws_at_most_the_per_source_burst_at_once() -> None:
    budget = ReplyBudget()
    request = query(MessageType.MACHINES_QUERY)
    drawn = sum(len(reply) for _ in range(100)
                for reply in statuses(respond(request, LISTED, PUBLISHED, NOW, budget=budget,
                                              trusted_sources={LISTED})))
    assert PER_SOURCE_BURST_BYTES - 10_240 < drawn <= PER_SOURCE_BURST_BYTES


def test_a_spoofed_listed_address_draws_at_most_burst_plus_rate_times_time() -> None:
    budget = ReplyBudget()
    request = query(MessageType.MACHINES_QUERY)
    seconds, per_second = 120, 20
    drawn = 0
    for tick in range(seconds * per_second):
        replies = respond(request, LISTED, PUBLISHED, NOW + tick / per_second, budget=budget,
                          trusted_sources={LISTED})
        drawn += sum(len(reply) for reply in statuses(replies))
    bound = PER_SOURCE_BURST_BYTES + seconds * PER_SOURCE_BYTES_PER_SECOND
    assert bound - 10_240 < drawn <= bound


def test_a_listed_factory_over_its_budget_is_told_why_and_other_sources_are_not_affected() -> None:
    budget = ReplyBudget()
    request = query(MessageType.MACHINES_QUERY)
    while statuses(respond(request, LISTED, PUBLISHED, NOW, budget=budget, trusted_sources={LISTED})):
        pass
    (notice,) = respond(request, LISTED, PUBLISHED, NOW, budget=budget, trusted_sources={LISTED})
    assert decode_limit_notice(notice).reason == "budget"
    assert len(respond(request, "192.0.2.11", PUBLISHED, NOW, budget=budget,
                       trusted_sources={LISTED, "192.0.2.11"})) == SLOTS


# ---------------------------------------------------------------------- vacquery_auth = required


@pytest.mark.parametrize("source", [LISTED, UNLISTED], ids=["listed", "unlisted"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.value)
def test_with_auth_required_an_unsigned_query_draws_nothing(kind: MessageType, source: str) -> None:
    counters: Counter[str] = Counter()
    replies = respond(query(kind, QUERY_PAD_BYTES), source, PUBLISHED, NOW, authenticator=signing_authenticator(),
                      budget=ReplyBudget(), trusted_sources={LISTED}, counters=counters)
    assert replies == [] and counters == {"auth_unauthenticated": 1}


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.value)
def test_with_auth_required_a_signed_query_from_anywhere_gets_the_whole_answer(kind: MessageType) -> None:
    request = signing_authenticator().sign(query(kind, QUERY_PAD_BYTES), NOW, Scope.query_to(FACTORY, SPACE))
    replies = respond(request, UNLISTED, PUBLISHED, NOW, authenticator=signing_authenticator(), budget=ReplyBudget())
    assert len(replies) == FULL_COUNT[kind]


# ---------------------------------------------------------------------- the limit is visible


def test_a_limited_source_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    budget = ReplyBudget(limited=LimitedSources(log_interval_seconds=600))
    request = query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES)
    caplog.set_level(logging.INFO, logger="vacquery.responder")
    for offset in (0, 1, 599):
        respond(request, UNLISTED, PUBLISHED, NOW + offset, budget=budget)
    respond(request, "203.0.113.10", PUBLISHED, NOW + 2, budget=budget)
    respond(request, UNLISTED, PUBLISHED, NOW + 600, budget=budget)
    lines = [record.getMessage() for record in caplog.records if "answer limited" in record.getMessage()]
    assert [line.split()[3] for line in lines] == [f"source={UNLISTED}", "source=203.0.113.10", f"source={UNLISTED}"]
    assert "reason=unlisted statuses_sent=1 of=64" in lines[0] and "vacquery_key_file" in lines[0]


def test_a_spray_of_spoofed_sources_logs_at_most_so_many_lines_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    budget = ReplyBudget(limited=LimitedSources(log_lines_per_interval=5))
    caplog.set_level(logging.INFO, logger="vacquery.responder")
    for index in range(200):
        respond(query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES), f"198.51.100.{index}", PUBLISHED, NOW,
                budget=budget)
    assert len([record for record in caplog.records if "answer limited" in record.getMessage()]) == 5
    assert budget.limited.unlogged == 195


def listing(kind: str, trusted: Optional[set[str]] = None) -> tuple[int, str, str]:
    """`vac KIND` from 127.0.0.1 against a real responder that does not count loopback as listed."""
    responders = LoopbackResponders()
    try:
        _, port = responders.start(FACTORY, "127.0.0.1", published=PUBLISHED.snapshot, trust_loopback=False,
                                   trusted_sources=frozenset(trusted or ()))
        settings = SpaceSettings(space=SPACE, factory_name=FACTORY, factories=(PeerAddress(FACTORY, "127.0.0.1"),),
                                 port=port, timeout_seconds=10.0)
        out, err = io.StringIO(), io.StringIO()
        code = run_listing(kind, [], settings, None, client_version="Vac 04.00.00a1 vac-command", now=NOW,
                           out=out, err=err)
    finally:
        responders.close()
    return code, out.getvalue(), err.getvalue()


def test_vac_machines_from_an_unlisted_host_lists_every_slot_and_says_it_was_limited() -> None:
    code, out, err = listing("machines")
    assert code == 0
    assert len(out.splitlines()) == 1 + SLOTS  # header and one line per slot
    assert err == (f"replies limited by {FACTORY}: {SLOTS} of {SLOTS} statuses sent (this host is not one of its "
                   "factories and did not sign its queries; set vacquery_key_file to the site key here, or run vac "
                   "on a factory)\n")


def test_vac_factories_from_an_unlisted_host_says_why_it_heard_nothing() -> None:
    code, out, err = listing("factories")
    assert code == 1 and out == ""
    assert err.startswith(f"replies limited by {FACTORY}: 0 statuses sent (this host is not one of its factories")


def test_vac_machines_from_a_listed_host_prints_no_limit() -> None:
    code, out, err = listing("machines", trusted={"127.0.0.1"})
    assert (code, err) == (0, "") and len(out.splitlines()) == 1 + SLOTS


# ---------------------------------------------------------------------- the marker and the notice on the wire


def test_the_marker_and_the_notice_survive_encoding_and_decoding() -> None:
    (marked,) = respond(query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES), UNLISTED, PUBLISHED, NOW)
    reply = decode_reply(marked)
    assert encode_reply(reply) == marked
    notice = LimitNotice(COOKIE, SPACE, FACTORY, "budget")
    assert decode_limit_notice(encode_limit_notice(notice)) == notice


@given(garbage=st.binary(max_size=2000))
def test_any_datagram_is_a_notice_or_raises_malformed(garbage: bytes) -> None:
    try:
        decode_limit_notice(garbage)
    except MalformedDatagram:
        pass


def test_a_status_is_not_taken_for_a_notice_nor_a_notice_for_a_status() -> None:
    (status,) = respond(query(MessageType.MACHINES_QUERY, QUERY_PAD_BYTES), UNLISTED, PUBLISHED, NOW)
    (notice,) = respond(query(MessageType.FACTORY_QUERY, QUERY_PAD_BYTES), UNLISTED, PUBLISHED, NOW)
    with pytest.raises(MalformedDatagram):
        decode_limit_notice(status)
    with pytest.raises(MalformedDatagram):
        decode_reply(notice)
