"""A real vacd fills several slots with real guests at once and accounts each creation's phases.

The short version of bench/factory_fill.py (issue 15 items 1 and 5): six test guests under
QEMU, max_creations_per_cycle = 6, and vac_creation_phase_seconds read from vacd's own
/metrics. Counts, not times, are asserted (the figures are the benchmark's).
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.integration.conftest import TestGuest
from tests.integration.test_vacd_real_vms import RunningFactory, factory, slot_name  # noqa: F401 (fixture)

pytestmark = pytest.mark.vm

SLOTS = 6
METRICS_ADDRESS = "127.0.0.1:19981"


def phase_counts(metrics_text: str) -> dict[str, float]:
    return {match.group(1): float(match.group(2))
            for match in re.finditer(r'^vac_creation_phase_seconds_count\{phase="([^"]+)"\} (\S+)$', metrics_text, re.M)}


def test_six_slots_are_created_in_one_pass_and_every_phase_of_each_is_counted(
    factory: RunningFactory, test_guest: TestGuest  # noqa: F811 (the fixture)
) -> None:
    factory.configure(test_guest, total_processors=SLOTS, machinetypes={"long": {"payload": "sleep 600"}},
                      extra_settings=f"max_creations_per_cycle = {SLOTS}\noverload_per_processor = 100\n"
                                     f"metrics_address = {METRICS_ADDRESS}\n")
    factory.start()

    every_slot = {slot_name(ordinal) for ordinal in range(SLOTS)}
    factory.wait_for(f"{SLOTS} running guests", lambda: set(factory.running_domains()) == every_slot, timeout=180)

    def every_phase_counted() -> bool:
        with urllib.request.urlopen(f"http://{METRICS_ADDRESS}/metrics", timeout=10) as response:
            counts = phase_counts(response.read().decode())
        return all(counts.get(phase) == SLOTS
                   for phase in ("queue", "contextualise", "machine_spec", "xml", "createXML", "started_event", "record"))

    factory.wait_for("each creation's phases on /metrics", every_phase_counted, timeout=30)
    # Each slot was created once: no creation failed and was retried.
    creating = [line for line in factory.log_text().splitlines() if "creating machine name=" in line]
    assert len(creating) == SLOTS
    assert len(factory.records()) == SLOTS
