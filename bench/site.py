"""Whole-site benchmark in the simulator: vacd's scheduler and census beside Vac 03's policy.

Run: `.venv/bin/python bench/site.py [--hours 3] [--big-factories 5000]`.

1. 100 factories x 32 processors, machinetypes vo-a..vo-d with shares 4:3:2:1; vo-a has
   no work (its payloads end `300 No more work` after 1-3 min), the others work 1-3 h
   and end `200`. At 0 % and 50 % datagram loss, real census datagrams. Reported: time
   until 98 % of the processors are busy (any type) and until 98 % are busy with types
   that have work ("useful"), the share error of the working types once useful-filled
   (|busy fraction of capacity - share / 6|, mean and max over 10 s samples), the
   capacity held by the workless type once filled, census completeness.
2. 5,000 factories x 32 processors for one hour of site time with the statistical
   census (vacd/sim/model.py): the simulator's wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vacd.sim.events import NetworkConditions  # noqa: E402
from vacd.sim.scenario import Scenario, SiteRun, standard_machinetypes  # noqa: E402
from vacd.sim.site import run_scenario  # noqa: E402


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def row(run: SiteRun, wall: float) -> str:
    return (f"| {run.scenario.policy} | {run.scenario.factories} | {run.scenario.network.loss:.0%} | "
            f"{_seconds(run.time_to_fill())} | {_seconds(run.time_to_useful_fill())} | "
            f"{_percent(run.mean_share_error_after_fill())} | {_percent(run.max_share_error_after_fill())} | "
            f"{_percent(run.mean_workless_fraction_after_fill())} | {_percent(run.mean_workless_fraction())} | "
            f"{_percent(run.mean_census_completeness())} | {run.censuses} | {run.datagrams_sent:,} | {wall:.0f} |")


HEADER = ("| policy | factories | loss | fill (s) | useful fill (s) | share error mean | share error max | "
          "workless after fill | workless whole run | census heard | censuses | datagrams | wall (s) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, default=100)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--big-factories", type=int, default=5000)
    parser.add_argument("--big-hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-big", action="store_true")
    options = parser.parse_args()

    print(HEADER)
    fills: dict[tuple[str, float], tuple[Optional[float], Optional[float]]] = {}
    for loss in (0.0, 0.5):
        for policy in ("vacd", "vac03"):
            scenario = Scenario(standard_machinetypes(), factories=options.factories, processors=32,
                                duration_seconds=options.hours * 3600, policy=policy,
                                network=NetworkConditions(loss=loss), census="real", seed=options.seed)
            started = time.monotonic()
            run = run_scenario(scenario)
            print(row(run, time.monotonic() - started), flush=True)
            fills[(policy, loss)] = (run.time_to_fill(), run.time_to_useful_fill())
    print()
    for loss in (0.0, 0.5):
        for index, what in enumerate(("fill", "useful fill")):
            ours, theirs = fills[("vacd", loss)][index], fills[("vac03", loss)][index]
            if ours and theirs:
                print(f"{what} at {loss:.0%} loss: vacd {theirs / ours:.1f}x faster than Vac 03's policy")

    if not options.skip_big:
        print("\n" + HEADER)
        for policy in ("vacd", "vac03"):
            scenario = Scenario(standard_machinetypes(), factories=options.big_factories, processors=32,
                                duration_seconds=options.big_hours * 3600, policy=policy,
                                network=NetworkConditions(loss=0.5), census="model", seed=options.seed)
            started = time.monotonic()
            run = run_scenario(scenario)
            print(row(run, time.monotonic() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
