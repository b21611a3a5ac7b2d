"""vacquery.messages: values that cannot be invalid, and what a snapshot answers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.vacquery.sample_statuses import SPACE, factory_status, machinetype_status, snapshot
from vacquery.messages import REPLY_TYPE, MachinetypeStatus, MessageType, Snapshot


def test_snapshot_answers_each_query_with_its_statuses() -> None:
    published = snapshot("f1.example.com", slots=4, machinetypes=("lhcb", "atlas"))
    assert len(published.statuses_for(MessageType.MACHINES_QUERY)) == 4
    assert [status.machinetype for status in published.statuses_for(MessageType.MACHINETYPES_QUERY)] == [  # type: ignore[union-attr]
        "lhcb", "atlas"]
    assert published.statuses_for(MessageType.FACTORY_QUERY) == (published.factory,)
    assert published.space == SPACE and published.factory_name == "f1.example.com"
    with pytest.raises(ValueError):
        published.statuses_for(MessageType.FACTORY_STATUS)


def test_every_query_has_its_reply_type() -> None:
    assert REPLY_TYPE == {MessageType.MACHINES_QUERY: MessageType.MACHINE_STATUS,
                          MessageType.MACHINETYPES_QUERY: MessageType.MACHINETYPE_STATUS,
                          MessageType.FACTORY_QUERY: MessageType.FACTORY_STATUS}


def test_snapshot_refuses_statuses_of_another_factory_or_space() -> None:
    with pytest.raises(ValueError, match="f2.example.com"):
        Snapshot((), (machinetype_status("f2.example.com", "lhcb", 1),), factory_status("f1.example.com"))
    with pytest.raises(ValueError, match="other.example.com"):
        Snapshot((), (machinetype_status("f1.example.com", "lhcb", 1, space="other.example.com"),),
                 factory_status("f1.example.com"))


def test_snapshot_counts_must_match_what_it_holds() -> None:
    with pytest.raises(ValueError, match="num_machinetypes"):
        Snapshot((), (machinetype_status("f1.example.com", "lhcb", 2),), factory_status("f1.example.com"))
    published = snapshot("f1.example.com", slots=3)
    with pytest.raises(ValueError, match="num_machines"):
        replace(published, machines=published.machines[:2])


@pytest.mark.parametrize("change", [{"running_hs06": float("nan")}, {"running_hs06": -1.0},
                                    {"num_before_fizzle": -2}, {"running_processors": float("inf")}])
def test_statuses_with_impossible_numbers_cannot_exist(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(machinetype_status("f1.example.com", "lhcb", 1), **change)


def test_status_kind_is_known_from_its_class() -> None:
    assert MachinetypeStatus.message_type is MessageType.MACHINETYPE_STATUS
