"""Run a site scenario from the command line: `python -m vacd.sim --factories 100 --loss 0.5`.

Policy "vacd" runs the real vacd.factory.Factory on every simulated factory (vacd/sim/site.py);
"vac03" replays Vac 03's loop (vacd/sim/vac03_site.py). Prints one summary line per policy and can write the time series (fill, share error,
workless fraction, census completeness, creations, aborts, backoff events, busy
processors per machinetype) as CSV and the summaries and series as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, TextIO

from vacd.config import ABORT_RULES
from vacd.sim.events import NetworkConditions
from vacd.sim.scenario import CENSUS_MODES, POLICIES, Scenario, SiteRun, standard_machinetypes
from vacd.sim.site import run_scenario


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vacd.sim", description=__doc__)
    parser.add_argument("--factories", type=int, default=10)
    parser.add_argument("--processors", type=int, default=32, help="per factory")
    parser.add_argument("--hours", type=float, default=1.0, help="simulated site time")
    parser.add_argument("--policy", choices=[*POLICIES, "both"], default="both")
    parser.add_argument("--loss", type=float, default=0.0, help="probability each datagram is lost")
    parser.add_argument("--duplication", type=float, default=0.0)
    parser.add_argument("--delay-min", type=float, default=0.0002, help="one-way delay, seconds")
    parser.add_argument("--delay-max", type=float, default=0.001)
    parser.add_argument("--census", choices=CENSUS_MODES, default="auto")
    parser.add_argument("--census-deadline", type=float, default=2.0)
    parser.add_argument("--cycle-seconds", type=float, default=30.0)
    parser.add_argument("--creation-seconds", type=float, default=5.0)
    parser.add_argument("--max-creations", type=int, default=4, help="max_creations_per_cycle (vacd policy)")
    parser.add_argument("--workless", default="vo-a", help="machinetype whose payloads find no work (300)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of working payloads ending 700")
    parser.add_argument("--abort-rule", choices=ABORT_RULES, default="failure_rate",
                        help="[settings] abort_rule of every factory (vac03: any code >= 300 backs off)")
    parser.add_argument("--max-wallclock-seconds", type=int, default=86400,
                        help="machinetypes' max_wallclock_seconds; under 10800 some payloads (1-3 h) reach it "
                             "and the factory stops them")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="a step change in demand: the --workless type gets work from this site time on")
    parser.add_argument("--preemption-grace-seconds", type=int, default=0,
                        help="[settings] preemption_grace_seconds of every factory (0: no pre-emption)")
    parser.add_argument("--preemption-margin-percent", type=float, default=2.0,
                        help="[settings] preemption_margin_percent")
    parser.add_argument("--max-preemptions", type=int, default=4, help="[settings] max_preemptions_per_cycle")
    parser.add_argument("--min-wallclock-seconds", type=int, default=None,
                        help="machinetypes' min_wallclock_seconds (default: max_wallclock_seconds, as in "
                             "vac.conf, which makes no machine pre-emptable); machines are pre-empted only "
                             "once older than this and fizzle_seconds")
    parser.add_argument("--state-dir", help="where the factories' stores go (default: a fresh directory on "
                        "/dev/shm, removed after the run)")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--csv", help="write the time series here")
    parser.add_argument("--json", help="write summaries and time series here")
    return parser


def _write_csv(runs: Sequence[SiteRun], out: TextIO) -> None:
    names = [machinetype.name for machinetype in runs[0].scenario.machinetypes]
    writer = csv.writer(out)
    writer.writerow(["policy", "time", "fill", "useful_fill", "share_error", "workless_fraction",
                     "census_completeness", "censuses", "creations", "aborts", "backoff_events",
                     *[f"busy_{name}" for name in names]])
    for run in runs:
        for sample in run.samples:
            writer.writerow([run.scenario.policy, f"{sample.time:.0f}", f"{sample.fill:.4f}",
                             f"{sample.useful_fill:.4f}", f"{sample.share_error:.4f}",
                             f"{sample.workless_fraction:.4f}",
                             "" if sample.census_completeness is None else f"{sample.census_completeness:.5f}",
                             sample.censuses, sample.creations, sample.aborts, sample.backoff_events,
                             *[sample.busy_processors[name] for name in names]])


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = _parser().parse_args(argv)
    policies = POLICIES if options.policy == "both" else (options.policy,)
    runs = []
    for policy in policies:
        scenario = Scenario(
            machinetypes=standard_machinetypes(options.workless, options.failure_rate,
                                               max_wallclock_seconds=options.max_wallclock_seconds,
                                               step_seconds=options.step_seconds,
                                               min_wallclock_seconds=options.min_wallclock_seconds),
            factories=options.factories,
            processors=options.processors,
            duration_seconds=options.hours * 3600,
            policy=policy,
            abort_rule=options.abort_rule,
            preemption_grace_seconds=options.preemption_grace_seconds,
            preemption_margin_percent=options.preemption_margin_percent,
            max_preemptions_per_cycle=options.max_preemptions,
            network=NetworkConditions(options.loss, options.duplication, options.delay_min, options.delay_max),
            census=options.census,
            census_deadline_seconds=options.census_deadline,
            cycle_seconds=options.cycle_seconds,
            creation_seconds=options.creation_seconds,
            max_creations_per_cycle=options.max_creations,
            sample_seconds=options.sample_seconds,
            seed=options.seed,
            state_dir=Path(options.state_dir) / policy if options.state_dir else None,
        )
        started = time.monotonic()
        run = run_scenario(scenario)
        summary = {**run.summary(), "wall_seconds": round(time.monotonic() - started, 1)}
        print(" ".join(f"{key}={_show(value)}" for key, value in summary.items()))
        runs.append((run, summary))
    if options.csv:
        with open(options.csv, "w", newline="") as out:
            _write_csv([run for run, _ in runs], out)
    if options.json:
        with open(options.json, "w") as out:
            json.dump([{"summary": summary, "samples": [asdict(sample) for sample in run.samples]}
                       for run, summary in runs], out, indent=1)
    return 0


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
