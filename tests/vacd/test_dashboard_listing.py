"""The dashboard's listing of the space: a real census over loopback UDP, run only when wanted."""

from __future__ import annotations

import threading
from typing import Optional

from tests.vacquery.loopback_responders import LoopbackResponders
from tests.vacquery.sample_statuses import SPACE
from vacd.config import FactoryAddress, Settings
from vacd.dashboard.listing import LISTING_KINDS, SpaceListing, heard_from, wire_statuses
from vacd.dashboard.view import Heard
from vacd.peers import PeerCensus, PeerResolver
from vacquery.cli import _gathered

FACTORIES = (FactoryAddress("f1.example.com", "127.0.0.1"), FactoryAddress("f2.example.com", "127.0.0.2"),
             FactoryAddress("f3.example.com", "127.0.0.3"), FactoryAddress("f4.example.com", "127.0.0.4"))


def settings_for(port: int) -> Settings:
    return Settings(vac_space=SPACE, factory_name="f1.example.com", total_processors=8, host_processors=8,
                    gocdb_sitename="example.com", factories=FACTORIES, vacquery_port=port, udp_timeout_seconds=5.0)


def test_a_listing_hears_the_peers_machines_and_factories_as_vac_prints_them() -> None:
    responders = LoopbackResponders()
    try:
        trusted = frozenset(["127.0.0.1"])
        _, port = responders.start("f2.example.com", "127.0.0.2", 0, trusted_sources=trusted)
        responders.start("f3.example.com", "127.0.0.3", port, trusted_sources=trusted)
        census = PeerCensus(PeerResolver(lambda name, record_type: ((), 60)), client_name="vacd-dashboard")
        results = [census.run(settings_for(port), kind).result for kind in LISTING_KINDS]
    finally:
        responders.close()

    heard = heard_from(results, 1234.5)

    assert heard.time == 1234.5 and set(heard.asked) == {"f2.example.com", "f3.example.com", "f4.example.com"}
    assert heard.silent == ("f4.example.com",)
    kinds = {(status["factory"], status["message_type"]) for status in heard.statuses}
    assert kinds == {(factory, kind) for factory in ("f2.example.com", "f3.example.com")
                     for kind in ("machine_status", "factory_status", "machinetype_status")}
    # The same objects `vac machines --json` prints, less the reply's cookie and send time.
    printed = [dict(status) for status in _gathered(results[0]).statuses]
    for status in printed:
        del status["cookie"], status["time_sent"]
    assert wire_statuses(results[0]) == printed


def test_a_listing_runs_when_wanted_and_not_again_until_it_is_old() -> None:
    now = [100.0]
    calls: list[Settings] = []
    gathered = threading.Event()

    def gather(settings: Settings) -> Optional[Heard]:
        calls.append(settings)
        gathered.set()
        return Heard(now[0], ())

    listing = SpaceListing(gather, min_age_seconds=15, monotonic=lambda: now[0])
    settings = settings_for(995)
    listing.follow(settings)
    listing.start()
    try:
        first = listing.want(wait_for_first_seconds=10)
        assert first is not None and first.time == 100.0 and calls == [settings]
        gathered.clear()
        now[0] = 110.0
        assert listing.want() is first  # 10 s old: shown as it is, nobody asked
        now[0] = 116.0
        listing.want()
        assert gathered.wait(10)
    finally:
        listing.stop()
    assert len(calls) == 2


def test_a_failed_listing_keeps_the_last_one_shown() -> None:
    results: list[Optional[Heard]] = [Heard(1.0, ())]
    done = threading.Event()

    def gather(settings: Settings) -> Optional[Heard]:
        done.set()
        if not results:
            raise OSError("network unreachable")
        return results.pop()

    listing = SpaceListing(gather, min_age_seconds=0)
    listing.follow(settings_for(995))
    listing.start()
    try:
        kept = listing.want(wait_for_first_seconds=10)
        done.clear()
        listing.want()
        assert done.wait(10)
        assert listing.latest() is kept and kept is not None and kept.time == 1.0
    finally:
        listing.stop()

