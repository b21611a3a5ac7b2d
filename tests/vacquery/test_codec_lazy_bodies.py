"""A published snapshot's statuses are encoded per query type when first asked for (issue 15 item 2).

The factory publishes a snapshot every pass; most are never asked for machines. The
answers must be the bytes eager encoding gave, and each type is encoded at most once.
"""

from __future__ import annotations

import pytest

import vacquery.codec
from tests.vacquery.sample_statuses import SPACE, snapshot
from vacquery.codec import decode_reply, encode, encode_snapshot, encode_status_body
from vacquery.messages import FactoryQuery, MachinesQuery, MachinetypesQuery, MessageType, Status
from vacquery.responder import respond

FACTORY = "f1.example.com"
PEER = "192.0.2.10"
NOW = 1_700_000_000.0
COOKIE = "cd" * 32


class EncodeCounter:
    """Counts the statuses encoded, by wrapping the codec's body encoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.encoded: list[str] = []
        real = vacquery.codec.encode_status_body

        def counting(status: Status) -> bytes:
            self.encoded.append(status.message_type.value)
            return real(status)

        monkeypatch.setattr(vacquery.codec, "encode_status_body", counting)


def test_publishing_a_snapshot_encodes_no_status_until_one_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EncodeCounter(monkeypatch)
    published = encode_snapshot(snapshot(FACTORY, slots=64))
    assert counter.encoded == []
    respond(encode(FactoryQuery(SPACE, COOKIE)), PEER, published, NOW, trusted_sources=frozenset([PEER]))
    assert counter.encoded == ["factory_status"]  # one factory status; the 64 machines still not encoded


def test_each_query_type_is_encoded_once_per_snapshot_however_often_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = EncodeCounter(monkeypatch)
    published = encode_snapshot(snapshot(FACTORY, slots=16))
    for _ in range(3):
        replies = respond(encode(MachinesQuery(SPACE, COOKIE)), PEER, published, NOW, trusted_sources=frozenset([PEER]))
        assert len(replies) == 16
    assert counter.encoded == ["machine_status"] * 16


def test_answers_from_lazily_encoded_bodies_are_the_statuses_encoded() -> None:
    source = snapshot(FACTORY, slots=8, machinetypes=("lhcb", "atlas"))
    published = encode_snapshot(source)
    for query_type in (MessageType.MACHINES_QUERY, MessageType.MACHINETYPES_QUERY, MessageType.FACTORY_QUERY):
        assert published.bodies[query_type] == tuple(
            encode_status_body(status) for status in source.statuses_for(query_type))
    assert sorted(published.bodies) == sorted(
        [MessageType.MACHINES_QUERY, MessageType.MACHINETYPES_QUERY, MessageType.FACTORY_QUERY], key=str)
    replies = respond(encode(MachinetypesQuery(SPACE, COOKIE)), PEER, published, NOW, trusted_sources=frozenset([PEER]))
    assert sorted(decode_reply(reply).status.machinetype for reply in replies) == ["atlas", "lhcb"]  # type: ignore[union-attr]


def test_a_reply_type_is_no_query_type_of_the_bodies() -> None:
    with pytest.raises(KeyError):
        encode_snapshot(snapshot(FACTORY)).bodies[MessageType.MACHINE_STATUS]
