"""Census of many factories on the simulated network: vacd's census beside Vac 03's.

Run: `.venv/bin/python bench/census.py [--factories 1000] [--seeds 5]`. For each loss rate,
one factory asks `--factories` peers for their machinetypes (4 each) over the simulator's
network (one-way delay 0.2-1 ms, independent loss per datagram), with the real
`vacquery.client.Census` (2 s deadline) and with Vac 03's 6 rounds of 2 s silence
(`vacd.sim.vac03.VacCensus`). Prints a Markdown table: statuses heard at 0.1/0.5/1/2 s of
simulated time, when the census ended, and datagrams sent (queries and replies).

`--client-us N` has the census's client take N microseconds per datagram it sends or
handles (one thread: replies wait while it is busy), and adds rows for vacd's census
timed by when each reply was handled ("vacd-handled", the transport before issue 15
item 4) beside vacd timed by arrival ("vacd").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vacd.sim.events import NetworkConditions  # noqa: E402
from vacd.sim.census import simulate_census  # noqa: E402

CHECKPOINTS = (0.1, 0.5, 1.0, 2.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--losses", default="0,0.2,0.5")
    parser.add_argument("--client-us", type=float, default=0.0, help="client time per datagram, microseconds")
    options = parser.parse_args()
    print(f"census of {options.factories} factories x 4 machinetypes, mean of {options.seeds} seeds\n")
    print("| policy | loss | heard @0.1 s | @0.5 s | @1 s | @2 s | final | ended (s) | datagrams | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for loss in (float(value) for value in options.losses.split(",")):
        for label in ("vacd", "vacd-handled", "vac03") if options.client_us else ("vacd", "vac03"):
            policy, _, stamp = label.partition("-")
            started = time.monotonic()
            runs = [simulate_census(options.factories, NetworkConditions(loss=loss), policy, checkpoints=CHECKPOINTS,
                                    seed=seed, client_seconds_per_datagram=options.client_us * 1e-6,
                                    stamp=stamp or "arrival")
                    for seed in range(1, options.seeds + 1)]
            wall = (time.monotonic() - started) / len(runs)
            heard = [statistics.mean(run.completeness_at[point] for run in runs) for point in CHECKPOINTS]
            ended = statistics.mean(run.finished_seconds or float("nan") for run in runs)
            final = statistics.mean(run.final_completeness for run in runs)
            datagrams = statistics.mean(run.datagrams_sent for run in runs)
            cells = " | ".join(f"{100 * value:.3f} %" for value in heard)
            print(f"| {label} | {loss:.0%} | {cells} | {100 * final:.3f} % | {ended:.3f} | {datagrams:.0f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
