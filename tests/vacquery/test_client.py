"""vacquery.client: the census state machine against real responders on an in-memory network."""

from __future__ import annotations

import hashlib
import heapq
import json
from typing import Callable, Iterator, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.client import (VAC_ROUNDS, Census, FastPeers, RetransmitPolicy, cookie_for, is_forking_responder,
                             next_fast_peers)
from vacquery.codec import EncodedSnapshot, encode, encode_snapshot
from vacquery.messages import MachinetypesQuery, MessageType
from vacquery.responder import respond

FACTORIES = ("f1.example.com", "f2.example.com", "f3.example.com")
SNAPSHOTS = {name: encode_snapshot(snapshot(name, slots=4, machinetypes=("lhcb", "atlas", "cms")))
             for name in FACTORIES}
ONE_WAY = 0.0005  # seconds

# (copies delivered, delay of each) for one datagram
Fate = Callable[[str, bytes], list[float]]


def lossless(_direction: str, _datagram: bytes) -> list[float]:
    return [ONE_WAY]


class InMemoryNetwork:
    """Census on one side, real `respond()` per factory on the other; time only advances here."""

    def __init__(self, fate: Fate = lossless, snapshots: Optional[dict[str, EncodedSnapshot]] = None,
                 tamper: Optional[Callable[[bytes], list[bytes]]] = None) -> None:
        self.fate = fate
        self.snapshots = SNAPSHOTS if snapshots is None else snapshots
        self.tamper = tamper
        self.sent: list[tuple[float, str]] = []
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._sequence = 0

    def _schedule(self, when: float, kind: str, peer: str, datagram: bytes) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (when, self._sequence, kind, peer, datagram))

    def run(self, census: Census, start: float = 0.0, max_steps: int = 100_000) -> float:
        now = start
        for _ in range(max_steps):
            for name, datagram in census.datagrams_to_send(now):
                self.sent.append((now, name))
                for delay in self.fate("query", datagram):
                    self._schedule(now + delay, "query", name, datagram)
            if census.done:
                return now
            wake = census.next_wakeup
            if self._queue and self._queue[0][0] <= wake:
                now, _, kind, peer, datagram = heapq.heappop(self._queue)
                if kind == "query":
                    for reply in self._answers(peer, datagram, now):
                        for delay in self.fate("reply", reply):
                            self._schedule(now + delay, "reply", peer, reply)
                else:
                    census.receive(datagram, peer, now)
            else:
                now = max(now, wake)
        raise AssertionError("census never finished")

    def _answers(self, peer: str, datagram: bytes, now: float) -> Iterator[bytes]:
        if peer not in self.snapshots:
            return
        for reply in respond(datagram, "client", self.snapshots[peer], now, trusted_sources=frozenset(["client"])):
            yield from (self.tamper(reply) if self.tamper else [reply])


def new_census(kind: MessageType = MessageType.MACHINETYPES_QUERY, factories: tuple[str, ...] = FACTORIES,
               deadline: float = 2.0, **options: object) -> Census:
    return Census(kind, SPACE, factories, 0.0, deadline_seconds=deadline, salt="salt", **options)  # type: ignore[arg-type]


def test_loss_free_census_finishes_after_one_round_trip() -> None:
    census = new_census()
    finished = InMemoryNetwork().run(census)
    result = census.result
    assert finished == pytest.approx(2 * ONE_WAY)
    assert result.complete == set(FACTORIES) and result.completeness == 1.0
    assert result.datagrams_sent == 3 and result.statuses_heard == 9
    assert result.smoothed_rtt_seconds == pytest.approx(2 * ONE_WAY)


@pytest.mark.parametrize("kind, per_factory", [(MessageType.MACHINES_QUERY, 4), (MessageType.FACTORY_QUERY, 1)])
def test_every_kind_counts_its_own_replies(kind: MessageType, per_factory: int) -> None:
    census = new_census(kind)
    InMemoryNetwork().run(census)
    assert census.result.statuses_heard == 3 * per_factory and census.result.complete == set(FACTORIES)


def test_factory_that_answered_two_of_three_machinetypes_is_asked_again() -> None:
    dropped: list[bytes] = []

    def lose_one_cms_reply(direction: str, datagram: bytes) -> list[float]:
        if direction == "reply" and not dropped and b'"factory": "f2.example.com"' in datagram \
                and b'"machinetype": "cms"' in datagram:
            dropped.append(datagram)
            return []
        return [ONE_WAY]

    network = InMemoryNetwork(lose_one_cms_reply)
    census = new_census()
    network.run(census)
    assert [name for _, name in network.sent].count("f2.example.com") == 2
    assert all([name for _, name in network.sent].count(name) == 1 for name in ("f1.example.com", "f3.example.com"))
    assert census.result.complete == set(FACTORIES)


def _rewrite(change: dict[str, object], remove: Optional[str] = None) -> Callable[[bytes], list[bytes]]:
    def tamper(reply: bytes) -> list[bytes]:
        document = json.loads(reply)
        if document["factory"] != "f2.example.com":
            return [reply]
        document.update(change)
        if remove:
            del document[remove]
        return [json.dumps(document).encode()]
    return tamper


@pytest.mark.parametrize(
    "tamper, drop_reason",
    [
        (_rewrite({"cookie": "0" * 64}), "wrong_cookie"),
        (_rewrite({"space": "other.example.com"}), "wrong_space"),
        (_rewrite({}, remove="num_before_fizzle"), "malformed"),
        # f2 answers under another name: Vac's "factory differs from the name queried" (§3.7).
        (_rewrite({"factory": "f2.other.example.com"}), "unknown_factory"),
        (_rewrite({"factory": "f3.example.com"}), "wrong_cookie"),
        (_rewrite({"message_type": "machine_status", "machine": "x", "state": "Running"}), "malformed"),
    ],
)
def test_replies_failing_vac_acceptance_are_discarded(tamper: Callable[[bytes], list[bytes]], drop_reason: str) -> None:
    census = new_census()
    InMemoryNetwork(tamper=tamper).run(census)
    result = census.result
    assert "f2.example.com" in result.silent
    assert result.complete == {"f1.example.com", "f3.example.com"}
    assert result.drops[drop_reason] >= 3
    assert {status.factory for name in result.replies for status in result.statuses(name)} == {
        "f1.example.com", "f3.example.com"}


def test_census_gives_up_on_silent_peer_at_deadline() -> None:
    snapshots = {name: SNAPSHOTS[name] for name in FACTORIES[:2]}
    network = InMemoryNetwork(snapshots=snapshots)
    census = new_census(deadline=1.5)
    finished = network.run(census)
    assert finished == 1.5 and census.done
    assert census.result.silent == ("f3.example.com",) and census.result.finished == 1.5
    assert census.result.completeness == pytest.approx(6 / 9)


def test_retransmissions_back_off_from_measured_rtt_to_a_cap() -> None:
    policy = RetransmitPolicy()
    snapshots = {name: SNAPSHOTS[name] for name in FACTORIES[:2]}
    network = InMemoryNetwork(snapshots=snapshots)
    network.run(new_census(deadline=1.0))
    times = [when for when, name in network.sent if name == "f3.example.com"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert gaps[0] == pytest.approx(policy.min_timeout_seconds)  # 4 x 1 ms RTT is under the floor
    assert gaps[1] == pytest.approx(policy.min_timeout_seconds * policy.backoff)
    assert max(gaps) == pytest.approx(policy.max_timeout_seconds)
    assert all(later >= earlier - 1e-12 for earlier, later in zip(gaps, gaps[1:]))


def test_slow_network_retransmits_after_four_smoothed_rtts() -> None:
    snapshots = {name: SNAPSHOTS[name] for name in FACTORIES[:2]}
    network = InMemoryNetwork(fate=lambda direction, datagram: [0.05], snapshots=snapshots)
    network.run(new_census(deadline=2.0))
    times = [when for when, name in network.sent if name == "f3.example.com"]
    assert times[1] - times[0] == pytest.approx(4 * 0.1)


def test_after_the_first_wait_a_silent_factory_is_asked_again_every_round_trip() -> None:
    # A 100 ms RTT: the first re-ask waits 4 RTTs (a later reply is lost, not late); the
    # next ones each wait one, so loss is retried as often as the path allows.
    snapshots = {name: SNAPSHOTS[name] for name in FACTORIES[:2]}
    network = InMemoryNetwork(fate=lambda direction, datagram: [0.05], snapshots=snapshots)
    network.run(new_census(deadline=2.0))
    times = [when for when, name in network.sent if name == "f3.example.com"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert gaps[0] == pytest.approx(0.4)
    assert gaps[1:] == pytest.approx([0.1] * len(gaps[1:])) and len(gaps) > 10


def test_carried_rtt_sets_the_first_retransmission() -> None:
    network = InMemoryNetwork(snapshots={})
    network.run(new_census(factories=("f9.example.com",), deadline=1.0, initial_rtt_seconds=0.01))
    assert network.sent[1][0] - network.sent[0][0] == pytest.approx(0.04)


def test_a_slow_census_carries_no_more_than_the_cap_into_the_next() -> None:
    policy = RetransmitPolicy()
    network = InMemoryNetwork(snapshots={})
    network.run(new_census(factories=("f9.example.com",), deadline=1.0, initial_rtt_seconds=0.19))
    first_gap = network.sent[1][0] - network.sent[0][0]
    assert first_gap == pytest.approx(policy.rtt_multiple * policy.max_carried_rtt_seconds)
    assert first_gap == pytest.approx(0.06)  # 4 x the 15 ms cap, not 4 x 190 ms


def test_round_trips_are_measured_to_arrival_not_to_when_a_reply_was_handled() -> None:
    census = new_census(factories=FACTORIES[:1])
    (name, query), = census.datagrams_to_send(0.0)
    replies = list(respond(query, "client", SNAPSHOTS[name], 0.0, trusted_sources=frozenset(["client"])))
    # Arrived 2 ms after the query; handled by a driver busy with a burst at 15 ms, after
    # the census was last woken at 15 ms (nothing due: the first timeout is 20 ms).
    assert census.datagrams_to_send(0.015) == []
    for reply in replies:
        census.receive(reply, name, 0.002)
    assert census.result.smoothed_rtt_seconds == pytest.approx(0.002)
    assert census.result.finished == pytest.approx(0.002)
    assert name in census.result.answered_fast


def test_duplicated_replies_are_counted_once() -> None:
    census = new_census()
    InMemoryNetwork(fate=lambda direction, datagram: [ONE_WAY, 2 * ONE_WAY]).run(census)
    assert census.result.statuses_heard == 9 and census.result.datagrams_sent == 3


def test_factory_names_are_compared_in_lower_case() -> None:
    census = new_census(factories=("F1.Example.COM",))
    InMemoryNetwork().run(census)
    assert census.result.complete == {"f1.example.com"}


def test_cookie_is_vac_sha256_of_salt_and_factory() -> None:
    assert cookie_for("c2FsdA==", "f1.example.com") == hashlib.sha256(b"c2FsdA==f1.example.com").hexdigest()


def test_empty_census_is_done_at_once() -> None:
    census = new_census(factories=())
    assert census.done and census.datagrams_to_send(0.0) == [] and census.result.completeness == 1.0


def test_late_datagrams_after_the_deadline_are_dropped() -> None:
    census = new_census(deadline=0.1)
    census.datagrams_to_send(0.0)
    census.datagrams_to_send(0.2)
    query = encode(MachinetypesQuery(SPACE, cookie_for("salt", "f1.example.com")))
    reply = respond(query, "client", SNAPSHOTS["f1.example.com"], 0.2, trusted_sources=frozenset(["client"]))[0]
    census.receive(reply, "f1.example.com", 0.2)
    assert census.result.statuses_heard == 0 and census.result.drops == {"late": 1}


fates = st.lists(st.tuples(st.integers(min_value=0, max_value=2), st.floats(min_value=0.0, max_value=0.3)),
                 min_size=1, max_size=64)


@settings(max_examples=150, deadline=None)
@given(fate_table=fates, forged=st.booleans(), deadline=st.floats(min_value=0.05, max_value=3.0))
def test_census_under_loss_duplication_and_reordering_keeps_its_promises(
    fate_table: list[tuple[int, float]], forged: bool, deadline: float
) -> None:
    position = [0]

    def fate(_direction: str, _datagram: bytes) -> list[float]:
        copies, delay = fate_table[position[0] % len(fate_table)]
        position[0] += 1
        return [delay + index * 0.001 for index in range(copies)]

    def forge(reply: bytes) -> list[bytes]:
        # An off-path attacker's copy with a guessed cookie and poisoned numbers.
        document = json.loads(reply)
        document.update(cookie="f" * 64, running_hs06=999999.0)
        return [json.dumps(document).encode(), reply] if forged else [reply]

    census = new_census(deadline=deadline)
    finished = InMemoryNetwork(fate, tamper=forge).run(census)
    result = census.result
    assert finished <= deadline and result.finished is not None and result.finished <= deadline
    assert all(reply.cookie == cookie_for("salt", name) for name in result.replies for reply in result.replies[name])
    assert all(status.running_hs06 == 20.0 for name in result.replies for status in result.statuses(name))  # type: ignore[union-attr]
    assert result.statuses_heard <= 9
    if result.complete == set(FACTORIES):
        assert result.completeness == 1.0


# ------------------------------------------------------------------ a peer that answers as Vac 03 does

SLOW_PEER = "f3.example.com"
VAC03_SECONDS_PER_QUERY = 0.3  # forks and re-reads its configuration for every datagram


class SlowPeerNetwork(InMemoryNetwork):
    """`SLOW_PEER` answers as Vac 03's responder: one query at a time, 300 ms each, every one
    of them answered in full, however many are queued (behaviour reference §1.2, §3.3)."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.busy_until = 0.0

    def _answers(self, peer: str, datagram: bytes, now: float) -> Iterator[bytes]:
        if peer != SLOW_PEER:
            yield from super()._answers(peer, datagram, now)
            return
        self.busy_until = max(now, self.busy_until) + VAC03_SECONDS_PER_QUERY
        for reply in super()._answers(peer, datagram, now):
            self._schedule(self.busy_until + ONE_WAY, "reply", peer, reply)

    def sent_to(self, name: str) -> int:
        return [peer for _, peer in self.sent].count(name)


def test_a_peer_answering_as_vac03_does_gets_no_more_queries_than_vac03_would_send() -> None:
    from vacquery.client import VAC_ROUNDS

    # The previous census measured 1 ms to the others and heard them fast.
    fast = frozenset(name for name in FACTORIES if name != SLOW_PEER)
    network = SlowPeerNetwork()
    census = new_census(initial_rtt_seconds=0.001, fast_peers=fast)
    network.run(census)
    assert network.sent_to(SLOW_PEER) <= VAC_ROUNDS
    assert census.result.complete == set(FACTORIES)  # heard in full all the same
    assert census.result.answered_slow == {SLOW_PEER} and census.result.answered_fast == fast
    # The next census knows it is slow: still within Vac's rounds.
    again = SlowPeerNetwork()
    follow_up = new_census(initial_rtt_seconds=0.001, fast_peers=next_fast_peers(fast, census.result).names)
    again.run(follow_up)
    assert again.sent_to(SLOW_PEER) <= VAC_ROUNDS and follow_up.result.complete == set(FACTORIES)
    # A census told nothing treats every peer as fast and floods the slow one, as vacd did.
    flooded = SlowPeerNetwork()
    flooded.run(new_census(initial_rtt_seconds=0.001))
    assert flooded.sent_to(SLOW_PEER) > VAC_ROUNDS


def test_a_silent_peer_not_known_fast_costs_vac03s_six_queries_and_waits_to_the_deadline() -> None:
    network = InMemoryNetwork(snapshots={name: SNAPSHOTS[name] for name in FACTORIES[:2]})
    census = new_census(fast_peers=frozenset(FACTORIES))
    network.run(census)
    assert [name for _, name in network.sent].count("f3.example.com") > 6  # known fast: keeps asking
    fresh = InMemoryNetwork(snapshots={name: SNAPSHOTS[name] for name in FACTORIES[:2]})
    census = new_census(fast_peers=frozenset(FACTORIES[:2]))
    finished = fresh.run(census)
    assert [name for _, name in fresh.sent].count("f3.example.com") == 6
    assert finished == 2.0 and census.result.silent == ("f3.example.com",)
    assert next_fast_peers(frozenset(FACTORIES[:2]), census.result).names == set(FACTORIES[:2])


def test_known_fast_peer_keeps_the_retransmissions_that_carry_a_census_through_loss() -> None:
    lost: list[bytes] = []

    def lose_the_first_ten_queries_to_f2(direction: str, datagram: bytes) -> list[float]:
        cookie = cookie_for("salt", "f2.example.com").encode()
        if direction == "query" and cookie in datagram and len(lost) < 10:
            lost.append(datagram)
            return []
        return [ONE_WAY]

    known = new_census(fast_peers=frozenset(FACTORIES))
    InMemoryNetwork(lose_the_first_ten_queries_to_f2).run(known)
    assert known.result.complete == set(FACTORIES)
    lost.clear()
    unknown = new_census(fast_peers=frozenset())
    InMemoryNetwork(lose_the_first_ten_queries_to_f2).run(unknown)
    assert unknown.result.silent == ("f2.example.com",)


def test_a_reply_just_after_a_resend_neither_makes_nor_unmakes_a_fast_peer() -> None:
    census = new_census(factories=("f2.example.com",), fast_peers=frozenset())
    census.datagrams_to_send(0.0)
    census.datagrams_to_send(0.1)  # the resend
    query = encode(MachinetypesQuery(space=SPACE, cookie=cookie_for("salt", "f2.example.com")))
    reply = respond(query, "client", SNAPSHOTS["f2.example.com"], 0.0, trusted_sources=frozenset(["client"]))[0]
    # 120 ms after the first query (too late to call it fast), 20 ms after the resend
    # (too soon to call it slow): it may answer either.
    census.receive(reply, "f2.example.com", 0.12)
    result = census.result
    assert "f2.example.com" not in result.answered_fast | result.answered_slow
    assert next_fast_peers(frozenset(["f2.example.com"]), result) == FastPeers(frozenset(["f2.example.com"]))
    assert next_fast_peers(frozenset(), result) == FastPeers()


def test_a_first_reply_after_the_retransmission_ceiling_but_within_60_ms_proves_a_peer_fast() -> None:
    # The ceiling (30 ms) says how often to ask again; what proves a peer fast or slow is
    # fast_reply_seconds (60 ms), so a reply at 45 ms (a responder busy with a burst, a
    # loaded LAN) does not cost the peer its retransmissions in the next census.
    policy = RetransmitPolicy()
    assert policy.max_timeout_seconds < 0.045 < policy.fast_reply_seconds
    census = new_census(factories=("f2.example.com",), fast_peers=frozenset())
    census.datagrams_to_send(0.0)
    query = encode(MachinetypesQuery(space=SPACE, cookie=cookie_for("salt", "f2.example.com")))
    reply = respond(query, "client", SNAPSHOTS["f2.example.com"], 0.0, trusted_sources=frozenset(["client"]))[0]
    census.receive(reply, "f2.example.com", 0.045)
    assert census.result.answered_fast == {"f2.example.com"} and not census.result.answered_slow


def test_a_silent_factory_known_fast_is_asked_again_every_30_ms_after_the_first_wait() -> None:
    # 0.75 ** 60 < 1e-7: about 60 attempts in 2 s keep a census of 400 factories x 4
    # statuses at 50 % loss above 99.9 % (docs/benchmarks.md); at 60 ms there were 33.
    network = InMemoryNetwork(snapshots={name: SNAPSHOTS[name] for name in FACTORIES[:2]})
    network.run(new_census(fast_peers=frozenset(FACTORIES), deadline=2.0))
    attempts = [name for _, name in network.sent].count("f3.example.com")
    assert attempts >= 60


def test_a_peer_loses_the_fast_retransmissions_only_when_two_censuses_in_a_row_find_it_silent() -> None:
    # One silent census (a responder descheduled under load, a burst answered late) is
    # not enough: at 50 % loss Vac's 6 queries would then miss 18 % of its statuses.
    alive = {name: SNAPSHOTS[name] for name in FACTORIES[:2]}
    first = new_census(fast_peers=frozenset(FACTORIES))
    InMemoryNetwork(snapshots=alive).run(first)
    after_one = next_fast_peers(frozenset(FACTORIES), first.result)
    assert after_one == FastPeers(frozenset(FACTORIES), doubted=frozenset(["f3.example.com"]))
    # It answers the next census: the doubt goes.
    answered = new_census(fast_peers=after_one.names)
    InMemoryNetwork().run(answered)
    assert next_fast_peers(after_one.names, answered.result, after_one.doubted) == FastPeers(frozenset(FACTORIES))
    # Silent twice in a row: it is asked Vac's 6 times from then on.
    second = new_census(fast_peers=after_one.names)
    InMemoryNetwork(snapshots=alive).run(second)
    after_two = next_fast_peers(after_one.names, second.result, after_one.doubted)
    assert after_two == FastPeers(frozenset(FACTORIES[:2]))
    third = InMemoryNetwork(snapshots=alive)
    third.run(new_census(fast_peers=after_two.names))
    assert [name for _, name in third.sent].count("f3.example.com") == VAC_ROUNDS


@pytest.mark.parametrize(("daemon_version", "forking"), [
    ("Vac 03.01.05 vacd-responder", True),
    ("Vac 00.22 vacd-factory", True),
    ("Vac 4.0.0a1 vacd-responder", False),
    ("Vac 04.00.00a1 vacd-responder", False),
    ("Vac 12.1 vacd-responder", False),
    (None, False),
    ("", False),
    ("vcycle 3.0", False),
    ("Vac", False),
])
def test_a_daemon_version_before_vac_4_names_a_forking_responder(daemon_version: Optional[str], forking: bool) -> None:
    assert is_forking_responder(daemon_version) is forking


class Vac03Network(SlowPeerNetwork):
    """`SLOW_PEER` also says it is Vac 03.01 in its replies, as a Vac 03 node does."""

    def _schedule(self, when: float, kind: str, peer: str, datagram: bytes) -> None:
        if kind == "reply" and peer == SLOW_PEER:
            fields = json.loads(datagram)
            fields["daemon_version"] = fields["vac_version"] = "Vac 03.01.05 vacd-responder"
            datagram = json.dumps(fields).encode()
        super()._schedule(when, kind, peer, datagram)


def test_a_vac03_peer_asked_as_fast_at_first_contact_is_kept_to_vacs_rounds_from_its_first_reply() -> None:
    # Never asked before, so it is given the fast retransmissions; with a query every
    # 30 ms its serial 300 ms answers always come soon after one, so its timing never
    # proves it slow. Its daemon_version does.
    network = Vac03Network()
    census = new_census(initial_rtt_seconds=0.001, fast_peers=frozenset(FACTORIES))
    network.run(census)
    assert census.result.forking_responders == {SLOW_PEER}
    assert SLOW_PEER not in census.result.answered_slow  # its timing alone would not have told
    carried = next_fast_peers(frozenset(FACTORIES), census.result)
    assert SLOW_PEER not in carried.names and SLOW_PEER not in carried.doubted
    again = Vac03Network()
    again.run(new_census(initial_rtt_seconds=0.001, fast_peers=carried.names))
    assert again.sent_to(SLOW_PEER) <= VAC_ROUNDS
