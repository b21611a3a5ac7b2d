"""Fuzz: hostile VacQuery datagrams over real UDP loopback to a real vacd and to the real responder.

Run (issue 11's full size; loopback only, no root needed):
    .venv/bin/python bench/fuzz_vacquery.py --datagrams 100000 [--seed 11]

Sends the corpus of tests/hostile_datagrams.py twice: to a real `vacd` process (libvirt's
test:///default driver, site key, `vacquery_auth = optional`) from 127.0.0.2, and to the
real ResponderProtocol in this process, which trusts no loopback source, from 127.0.0.3
(unlisted). A probe query after every batch (64 datagrams or 64 KiB) must be answered.
Prints, per target, datagrams and bytes sent, replies and bytes drawn, RSS and open
descriptors after the warm-up (the first tenth) and at the end, the host's UDP receive
buffer drops during the run, and the time taken; exits 1 if vacd died, stopped answering,
logged a traceback, or an unlisted batch drew more bytes than it sent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_datagrams import AFTER_SOURCE, FuzzResult, fuzz_unlisted_responder, fuzz_vacd, probe  # noqa: E402
from tests.vacquery.sample_statuses import snapshot  # noqa: E402

MIB = 1024 * 1024


def row(target: str, result: FuzzResult) -> str:
    return (f"| {target} | {result.datagrams:,} | {result.request_bytes / MIB:.1f} MiB | {result.replies:,} | "
            f"{result.reply_bytes / MIB:.2f} MiB | {result.reply_bytes / max(1, result.request_bytes):.3f} | "
            f"{result.rss_after_warmup / MIB:.1f} → {result.rss_after / MIB:.1f} MiB | "
            f"{result.fds_after_warmup} → {result.fds_after} | {result.receive_buffer_drops} | "
            f"{result.seconds:.1f} s |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datagrams", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    arguments = parser.parse_args()
    failures = []
    print("| target | datagrams | sent | replies | drawn | drawn/sent | RSS after warm-up → end | fds "
          "| UDP receive buffer drops | time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="vac-fuzz-") as scratch:
        result, vacd = fuzz_vacd(Path(scratch) / "prefix", arguments.seed, arguments.datagrams)
        try:
            if vacd.process.poll() is not None or not probe(vacd.port, AFTER_SOURCE, f"after-{time.time()}"):
                failures.append("vacd died or stopped answering")
            log = vacd.log_path.read_text(errors="replace")
            if "Traceback" in log or "failed to answer datagram" in log:
                failures.append("vacd logged a traceback")
        finally:
            vacd.stop()
        if vacd.process.returncode != 0:
            failures.append(f"vacd exited with {vacd.process.returncode}")
        print(row("vacd process, listed (loopback)", result))
    result, responder = fuzz_unlisted_responder(snapshot("f1.example.com", slots=64), arguments.seed,
                                                arguments.datagrams)
    responder.close()
    if result.amplifying_batches:
        failures.append(f"unlisted batches drew more than they sent: {result.amplifying_batches[:5]}")
    if responder.protocol.counters["error"]:
        failures.append(f"responder errors: {responder.protocol.counters['error']}")
    print(row("ResponderProtocol, unlisted, 64 slots", result))
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
