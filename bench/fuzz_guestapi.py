"""Fuzz: malformed HTTP requests over real TCP loopback to the real guest API server.

Run (issue 11's full size; loopback only, no root needed):
    .venv/bin/python bench/fuzz_guestapi.py --requests 10000 [--seed 11] [--head-timeout 10]

Starts vacd's GuestApiServer, unchanged and with its default limits (head timeout 10 s)
except the per-slot request rate, opened wide so that the fuzz reaches the parsers behind
it rather than drawing held 429s, in a process of its own (tests/hostile_http.py), over a real Store with machines in slots
2-9, and sends it the seeded corpus of tests/hostile_http.py, 16 connections at a time.
Prints the statuses answered, the server's RSS and open descriptors at start, after the
warm-up (the first tenth) and at the end (each once the server has closed what the cases
left open), whether it still answers a GET and a PUT, and anything written outside the
machines' joboutputs/. Exits 1 on a crash, a 500, a traceback, a descriptor leak or a
write outside joboutputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_http import (  # noqa: E402
    GuestApiProcess,
    changed_outside_joboutputs,
    file_state,
    run_http_fuzz,
    valid_exchange,
)

MIB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--head-timeout", type=float, default=10.0)
    arguments = parser.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="vac-fuzz-") as scratch:
        prefix = Path(scratch) / "prefix"
        server = GuestApiProcess(prefix, arguments.head_timeout)
        try:
            before = file_state(prefix)
            result = run_http_fuzz(server, arguments.seed, arguments.requests,
                                   settle_seconds=arguments.head_timeout + 15)
            alive = server.process.poll() is None
            after = valid_exchange(server)
            outside = changed_outside_joboutputs(before, file_state(prefix))
        finally:
            farewell = server.stop()
        log = server.log_path.read_text(errors="replace")
    print(f"| connections | {result.requests:,} ({result.request_bytes / MIB:.1f} MiB) |")
    print(f"| statuses | {', '.join(f'{status}: {count:,}' for status, count in sorted(result.statuses.items()))} |")
    print(f"| left quiet by the server (kept alive, slow heads) | {result.unfinished:,} |")
    print(f"| RSS after warm-up → end | {result.rss_after_warmup / MIB:.1f} → {result.rss_after / MIB:.1f} MiB |")
    print(f"| open descriptors: start, after warm-up, end | {result.fds_at_start}, {result.fds_after_warmup}, "
          f"{result.fds_after} |")
    print(f"| alive, GET and PUT after | {alive}, {after[0]}, {after[1]} |")
    print(f"| written outside joboutputs | {outside or 'nothing'} |")
    print(f"| time | {result.seconds:.1f} s |")
    if not alive or after != (200, 201):
        failures.append("the server died or stopped answering")
    if 500 in result.statuses or 500 in farewell or "Traceback" in log:
        failures.append("a handler raised (500 or traceback)")
    if not result.fds_after == result.fds_after_warmup == result.fds_at_start:
        failures.append("descriptors leaked")
    if outside:
        failures.append("written outside joboutputs")
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
