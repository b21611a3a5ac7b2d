"""When the loop checks the guest network (issue 15 item 2): not every pass, never too late.

vacd.networkchecks.NetworkCheckSchedule decides; these pin each reason a check is due, with the
steady clock as an argument. That the pass itself runs a due check and clears or sets the
`network` fault is the daemon's few lines around it.
"""

from __future__ import annotations

import dataclasses

from tests.vacd.test_factory import make_settings
from vacd.networkchecks import NETWORK_CHECK_SECONDS, NetworkCheckSchedule

SETTINGS = make_settings()


def checked_once(at: float = 100.0, failures: int = 0) -> NetworkCheckSchedule:
    schedule = NetworkCheckSchedule()
    assert schedule.due(SETTINGS, at, failures)  # the first pass always checks
    schedule.checked(SETTINGS, at, failures, usable=True)
    return schedule


def test_a_usable_network_is_not_checked_again_by_the_passes_of_the_next_minute() -> None:
    schedule = checked_once()
    for offset in (0.0, 1.0, 10.0, NETWORK_CHECK_SECONDS - 0.01):
        assert not schedule.due(SETTINGS, 100.0 + offset, 0)
    assert schedule.due(SETTINGS, 100.0 + NETWORK_CHECK_SECONDS, 0)


def test_an_unusable_network_is_checked_every_pass_until_it_is_usable() -> None:
    schedule = checked_once()
    schedule.checked(SETTINGS, 170.0, 0, usable=False)
    assert schedule.due(SETTINGS, 170.5, 0)
    schedule.checked(SETTINGS, 170.5, 0, usable=False)
    assert schedule.due(SETTINGS, 171.0, 0)
    schedule.checked(SETTINGS, 171.0, 0, usable=True)
    assert not schedule.due(SETTINGS, 172.0, 0)


def test_a_reload_that_changes_what_the_network_serves_is_checked_at_once() -> None:
    schedule = checked_once()
    for changed in (make_settings(host_processors=8, total_processors=8), make_settings(factory_name="f2.example.com"),
                    dataclasses.replace(SETTINGS, forward_dev="eth1"),
                    dataclasses.replace(SETTINGS, libvirt_uri="qemu:///session")):
        assert schedule.due(changed, 101.0, 0)
    assert not schedule.due(dataclasses.replace(SETTINGS, cycle_seconds=5.0), 101.0, 0)  # not the network's


def test_a_failed_creation_since_the_last_check_makes_the_next_pass_check() -> None:
    schedule = checked_once(failures=2)
    assert not schedule.due(SETTINGS, 101.0, 2)
    assert schedule.due(SETTINGS, 101.0, 3)
    schedule.checked(SETTINGS, 101.0, 3, usable=True)
    assert not schedule.due(SETTINGS, 102.0, 3)


def test_a_steady_clock_that_seems_to_go_back_checks_rather_than_trusting_the_last_time() -> None:
    schedule = checked_once(at=100.0)
    assert schedule.due(SETTINGS, 99.0, 0)
