"""A signed query is good for one factory of one space, once (issue 9 item 6).

Before, the tag covered only the bytes, time and nonce: a signed query captured on its
way to one factory drew the full answer from every factory of the site (measured: 64
replies, 53 KB, from each of 3). Now the tag covers the destination factory and the space,
and each responder checks it against its own; a replay to the same factory within the
30 s window is refused by the nonce cache.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections import Counter
from typing import Callable, Iterator

import pytest

from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.auth import AuthMode, AuthRejected, Authenticator, Scope
from vacquery.client import Census
from vacquery.codec import decode_reply, encode, encode_snapshot
from vacquery.messages import MachinesQuery, MachinetypesQuery, MessageType
from vacquery.responder import respond
from vacquery.transport import CensusSockets, run_census

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0
COOKIE = "ab" * 32
NAMES = ("f1.example.com", "f2.example.com", "f3.example.com")
PEER = "192.0.2.10"


def nonces(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda size: bytes(rng.getrandbits(8) for _ in range(size))


def authenticator(seed: int, mode: AuthMode = AuthMode.REQUIRED) -> Authenticator:
    return Authenticator(KEY, mode, nonce_source=nonces(seed))


def test_signed_query_captured_on_its_way_to_one_factory_draws_nothing_from_the_others() -> None:
    captured = authenticator(1).sign(encode(MachinesQuery(SPACE, COOKIE)), NOW, Scope.query_to(NAMES[0], SPACE))
    answers = {}
    counters: dict[str, Counter[str]] = {}
    for seed, name in enumerate(NAMES, start=2):
        counters[name] = Counter()
        answers[name] = respond(captured, PEER, encode_snapshot(snapshot(name, slots=64)), NOW + 1,
                                authenticator=authenticator(seed), counters=counters[name])
    assert len(answers[NAMES[0]]) == 64
    assert answers[NAMES[1]] == [] and answers[NAMES[2]] == []
    assert counters[NAMES[1]] == {"auth_bad_tag": 1} and counters[NAMES[2]] == {"auth_bad_tag": 1}


def test_signed_query_replayed_to_the_same_factory_within_the_window_is_refused() -> None:
    captured = authenticator(1).sign(encode(MachinesQuery(SPACE, COOKIE)), NOW, Scope.query_to(NAMES[0], SPACE))
    responder, counters = authenticator(2), Counter[str]()
    published = encode_snapshot(snapshot(NAMES[0], slots=64))
    assert len(respond(captured, PEER, published, NOW, authenticator=responder, counters=counters)) == 64
    for replay_time in (NOW + 1, NOW + 30):
        assert respond(captured, "198.51.100.1", published, replay_time, authenticator=responder,
                       counters=counters) == []
    # Past the window the nonce is forgotten, but the time in the tag is then stale.
    assert respond(captured, PEER, published, NOW + 31, authenticator=responder, counters=counters) == []
    assert counters == {"answered": 1, "auth_replayed": 2, "auth_stale": 1}


def test_destination_is_compared_in_lower_case_as_vac_lower_cases_factories() -> None:
    signed = authenticator(1).sign(encode(MachinetypesQuery(SPACE, COOKIE)), NOW,
                                   Scope.query_to("F1.Example.COM", SPACE))
    assert len(respond(signed, PEER, encode_snapshot(snapshot(NAMES[0])), NOW, authenticator=authenticator(2))) == 3


def test_query_signed_for_another_space_is_refused_even_by_a_factory_of_the_same_name() -> None:
    # Two spaces that share a key (one site, two spaces) must not answer each other's queries.
    other_space = "vac02.example.com"
    signed = authenticator(1).sign(encode(MachinetypesQuery(other_space, COOKIE)), NOW,
                                   Scope.query_to(NAMES[0], other_space))
    counters: Counter[str] = Counter()
    assert respond(signed, PEER, encode_snapshot(snapshot(NAMES[0])), NOW, authenticator=authenticator(2),
                   counters=counters) == []
    assert counters == {"auth_bad_tag": 1}


def test_a_signed_reply_cannot_pass_as_a_query_nor_a_query_as_a_reply() -> None:
    signer, verifier = authenticator(1), authenticator(2)
    query = encode(MachinetypesQuery(SPACE, COOKIE))
    with pytest.raises(AuthRejected, match="bad_tag"):
        verifier.verify(signer.sign(query, NOW, Scope.reply_in(SPACE)), NOW, Scope.query_to(NAMES[0], SPACE))
    with pytest.raises(AuthRejected, match="bad_tag"):
        verifier.verify(signer.sign(query, NOW, Scope.query_to(NAMES[0], SPACE)), NOW, Scope.reply_in(SPACE))


def test_version_1_tags_are_refused_in_both_modes_as_they_name_no_factory() -> None:
    signed = authenticator(1).sign(encode(MachinetypesQuery(SPACE, COOKIE)), NOW, Scope.query_to(NAMES[0], SPACE))
    as_version_1 = signed.replace(b'"vacquery_auth": "2.', b'"vacquery_auth": "1.')
    for mode in AuthMode:
        with pytest.raises(AuthRejected, match="unsupported_auth_version"):
            authenticator(2, mode).verify(as_version_1, NOW, Scope.query_to(NAMES[0], SPACE))


def test_optional_mode_still_answers_an_unsigned_vac03_query_and_signs_its_replies_for_the_space() -> None:
    client = authenticator(1)
    replies = respond(encode(MachinetypesQuery(SPACE, COOKIE)), PEER, encode_snapshot(snapshot(NAMES[0])), NOW,
                      authenticator=authenticator(2, AuthMode.OPTIONAL), trusted_sources=frozenset([PEER]))
    assert len(replies) == 3
    assert all(client.verify(reply, NOW, Scope.reply_in(SPACE)).is_authenticated for reply in replies)
    assert json.loads(replies[0])["space"] == SPACE  # Vac 03 reads the reply as before


@pytest.fixture
def responders() -> Iterator[LoopbackResponders]:
    started = LoopbackResponders()
    try:
        yield started
    finally:
        started.close()


def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_query_captured_from_a_real_census_and_replayed_over_udp_draws_one_answer_in_all(
    responders: LoopbackResponders,
) -> None:
    """The measured attack, on loopback: capture the census's query to f1, replay it to f1, f2, f3."""
    def site_authenticator() -> Authenticator:
        return Authenticator(KEY, AuthMode.REQUIRED, nonce_source=os.urandom)

    protocols = {}
    f1, port = responders.start(NAMES[0], "127.0.0.1", 0, published=snapshot(NAMES[0], slots=64),
                                authenticator=site_authenticator())
    protocols[NAMES[0]] = f1
    for index, name in enumerate(NAMES[1:], start=2):
        protocols[name], _ = responders.start(name, f"127.0.0.{index}", port, published=snapshot(name, slots=64),
                                              authenticator=site_authenticator())
    # The eavesdropper sits where the census believes f1 is, and keeps what arrives.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as eavesdropper, CensusSockets() as sockets:
        eavesdropper.bind(("127.0.0.4", port))
        census = Census(MessageType.MACHINES_QUERY, SPACE, NAMES[:1], time.monotonic(), deadline_seconds=0.05,
                        salt="capture")
        run_census(census, sockets, {NAMES[0]: ["127.0.0.4"]}, port=port, authenticator=site_authenticator())
        captured, _ = eavesdropper.recvfrom(4096)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.1", 0))
        attacker.setblocking(False)
        for index in (1, 2, 3):
            attacker.sendto(captured, (f"127.0.0.{index}", port))
        assert wait_for(lambda: all(sum(protocol.counters.values()) >= 1 for protocol in protocols.values()))
        attacker.sendto(captured, ("127.0.0.1", port))  # the same factory again, within the window
        assert wait_for(lambda: protocols[NAMES[0]].counters["auth_replayed"] == 1)
        replies: list[bytes] = []

        def heard_all() -> bool:
            replies.extend(_drain(attacker))
            return len(replies) >= 64

        assert wait_for(heard_all)
        replies.extend(_drain(attacker))  # anything more (there should be nothing) counts below
    assert protocols[NAMES[0]].counters == {"answered": 1, "auth_replayed": 1}
    assert protocols[NAMES[1]].counters == {"auth_bad_tag": 1} == protocols[NAMES[2]].counters
    assert {decode_reply(reply[:reply.rfind(b', "vacquery_auth"')] + b"}").status.factory
            for reply in replies} == {NAMES[0]}
    assert len(replies) == 64


def _drain(sock: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(sock.recvfrom(20000)[0])
        except BlockingIOError:
            return received
