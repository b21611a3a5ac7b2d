"""vacd with its loop thread under cProfile between two SIGUSR2s (bench/pass_cost.py --profile).

The profile's clock is the thread's CPU time (time.thread_time), so waiting between passes
costs nothing in it, as in vac_pass_cpu_seconds_total. The first SIGUSR2 starts profiling
the main thread (the reconcile loop: signal handlers run there); the second stops it and
writes the stats to $VAC_BENCH_PROFILE (pstats format).

Usage: VAC_BENCH_PROFILE=FILE python bench/profiled_vacd.py [vacd arguments]
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import time
from typing import Any

from vacd import daemoncli

PROFILE_ENVIRONMENT_VARIABLE = "VAC_BENCH_PROFILE"


def main() -> int:
    output = os.environ[PROFILE_ENVIRONMENT_VARIABLE]
    profile = cProfile.Profile(time.thread_time)
    profiling = [False]

    def toggle(*_: Any) -> None:
        if not profiling[0]:
            profile.enable()
            profiling[0] = True
            return
        profile.disable()
        profiling[0] = False
        profile.dump_stats(output)

    signal.signal(signal.SIGUSR2, toggle)
    return daemoncli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
