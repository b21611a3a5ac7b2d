"""Whole-site benchmark: the real vacd factory on every simulated factory, beside Vac 03's loop.

Run: `.venv/bin/python bench/site.py --factories 100 --processors 32 --hours 3` (the issue's
size; docs/benchmarks.md says which size each table was measured at).

Machinetypes vo-a..vo-d with shares 4:3:2:1; vo-a has no work (its payloads end
`300 No more work` after 1-3 min), the others work 1-3 h and end `200`. Scenarios:
0, 20 and 50 % datagram loss; 5 % of working payloads ending `700 Payload failed` after
10-60 min; max_wallclock_seconds 5400 (half the payloads reach it and the factory stops
them); a step change in demand (vo-a gets work after `--hours / 3`). Reported: time to
useful fill, share error of the working types once useful-filled (|busy fraction of
capacity - target|, mean and max over 10 s samples), census completeness, and for the
step how long until the share error is within 5 % for good.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
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


HEADER = ("| scenario | policy | useful fill (s) | share error mean | share error max | census heard | "
          "step: back within 5 % after (s / cycles) | aborts | wall (s) |\n"
          "|---|---|---|---|---|---|---|---|---|")


def row(label: str, run: SiteRun, wall: float) -> str:
    recovery = run.step_recovery_seconds()
    step = "-" if run.step_seconds is None else (
        "not within the run" if recovery is None else f"{recovery:.0f} / {recovery / run.scenario.cycle_seconds:.1f}")
    aborts = sum(sample.aborts for sample in run.samples)
    return (f"| {label} | {run.scenario.policy} | {_seconds(run.time_to_useful_fill())} | "
            f"{_percent(run.mean_share_error_after_fill())} | {_percent(run.max_share_error_after_fill())} | "
            f"{_percent(run.mean_census_completeness())} | {step} | {aborts} | {wall:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, default=100)
    parser.add_argument("--processors", type=int, default=32)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--census", default="real", choices=["real", "model"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", default="vacd,vac03")
    parser.add_argument("--scenarios", default="loss0,loss20,loss50,fail5,wallclock,step")
    options = parser.parse_args()
    seconds = options.hours * 3600
    base = Scenario(standard_machinetypes(), factories=options.factories, processors=options.processors,
                    duration_seconds=seconds, census=options.census, seed=options.seed)
    scenarios = {
        "loss0": ("0 % loss", base),
        "loss20": ("20 % loss", replace(base, network=NetworkConditions(loss=0.2))),
        "loss50": ("50 % loss", replace(base, network=NetworkConditions(loss=0.5))),
        "fail5": ("5 % failing payloads (700)", replace(base, machinetypes=standard_machinetypes(failure_rate=0.05))),
        "fail5vac03": ("5 % failing payloads (700), abort_rule = vac03",
                       replace(base, machinetypes=standard_machinetypes(failure_rate=0.05), abort_rule="vac03")),
        "wallclock": ("max_wallclock_seconds 5400",
                      replace(base, machinetypes=standard_machinetypes(max_wallclock_seconds=5400))),
        "step": (f"demand step at {seconds / 3:.0f} s",
                 replace(base, machinetypes=standard_machinetypes(step_seconds=seconds / 3))),
    }
    print(f"{options.factories} factories x {options.processors} processors, {options.hours:g} h, "
          f"census {options.census}, seed {options.seed}\n")
    print(HEADER, flush=True)
    for key in options.scenarios.split(","):
        label, scenario = scenarios[key]
        for policy in options.policies.split(","):
            started = time.monotonic()
            run = run_scenario(replace(scenario, policy=policy))
            print(row(label, run, time.monotonic() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
