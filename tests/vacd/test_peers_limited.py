"""vacd.peers: a peer that does not list this factory limits its answers, and the factory says so.

A peer answers an unsigned query from an address it does not list with no more bytes
than the query carried (vacquery/responder.py, issue 11 item 5): one machinetype status
per padded query. The census still hears something, and the log names the peer once.
"""

from __future__ import annotations

import logging

import pytest

from tests.vacd.test_peers import settings_for
from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import snapshot
from vacd.config import FactoryAddress
from vacd.peers import PeerCensus, PeerResolver

MACHINETYPES = ("lhcb", "atlas", "cms", "alice")


def test_a_peer_that_does_not_list_us_is_named_once_and_still_heard(caplog: pytest.LogCaptureFixture) -> None:
    responders = LoopbackResponders()
    caplog.set_level(logging.INFO, logger="vacd.peers")
    try:
        # The peer counts loopback as any other host and lists nobody: we are unlisted to it.
        _, port = responders.start("f2.example.com", "127.0.0.2", 0, trust_loopback=False,
                                   published=snapshot("f2.example.com", machinetypes=MACHINETYPES))
        factories = (FactoryAddress("f1.example.com", "127.0.0.1"), FactoryAddress("f2.example.com", "127.0.0.2"))
        peer_census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)))
        first = peer_census.run(settings_for(port, factories))
        second = peer_census.run(settings_for(port, factories))
    finally:
        responders.close()
    assert first.result.limited == {"f2.example.com": "unlisted"} == second.result.limited
    assert first.reports and {report.machinetype for report in first.reports} <= set(MACHINETYPES)
    warnings = [record.getMessage() for record in caplog.records if "limited their answers" in record.getMessage()]
    assert len(warnings) == 1 and "names=f2.example.com reasons=unlisted" in warnings[0]
