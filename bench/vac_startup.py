"""Benchmark: start-up of `vac machines`, before and after vacquery stood alone (issue 9 item 1).

Before the split the listing imported vacd.proxy (cryptography) and vacd.accounting
(vacd.store) although it never uses them. This runs `vac machines` as a new process each
time, as an admin would, against one loopback responder (127.0.0.1, an ephemeral port)
that answers at once, so the wall time is start-up plus one round trip. It also reports
the time from the process's start (just before it is spawned) to its query's arrival at
the responder (issue 15 item 4: target <= 100 ms), and
what the process imported (module count, whether cryptography was loaded) and the
cumulative import time of the command's module from `python -X importtime`.

Usage (from the repository; TREE defaults to it, and may be another checkout of vac,
for example `git worktree add /tmp/vac-before <commit>`):

    .venv/bin/python bench/vac_startup.py [--runs 30] [--tree TREE]

The command module is `vacd.cli` where TREE has it, else `vacquery.cli` (the old entry point).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder import FACTORY, SPACE, site_snapshot  # noqa: E402  (bench/responder.py)

from vacquery.responder_transport import ResponderProtocol, start_responder  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
SLOTS = 8
PROBE = """import json, sys
from {module} import main
code = main(['--prefix', {prefix!r}, '-t', '5', 'machines'])
print(json.dumps([code, len(sys.modules), 'cryptography' in sys.modules]), file=sys.stderr)
"""


def command_module(tree: Path) -> str:
    entry = tree / "vacd/cli.py"
    return "vacd.cli" if entry.is_file() and "def main(" in entry.read_text() else "vacquery.cli"


class LoopbackResponder:
    """One VacQuery responder on 127.0.0.1 in an asyncio loop on a thread; `close()` stops it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # On the monotonic clock, so that a datagram's arrival compares with a process's start.
        self.protocol = protocol = ResponderProtocol(trusted_sources={"127.0.0.1"}, clock=time.monotonic)
        protocol.publish(site_snapshot(slots=SLOTS))
        future = asyncio.run_coroutine_threadsafe(start_responder("127.0.0.1", 0, protocol), self.loop)
        self.transport = future.result(timeout=10)
        self.port = int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tree", type=Path, default=REPOSITORY)
    arguments = parser.parse_args()
    tree = arguments.tree.resolve()
    module = command_module(tree)
    responder = LoopbackResponder()
    try:
        return measure(tree, module, arguments.runs, responder)
    finally:
        responder.close()


def measure(tree: Path, module: str, runs: int, responder: LoopbackResponder) -> int:
    port = responder.port
    with tempfile.TemporaryDirectory(prefix="vac-startup-") as root:
        prefix = Path(root)
        (prefix / "etc").mkdir()
        (prefix / "etc/vac.conf").write_text(
            f"[settings]\nvac_space = {SPACE}\nfactory_name = {FACTORY}\nfactories = {FACTORY}=127.0.0.1\n"
            f"vacquery_port = {port}\n")
        environment = dict(os.environ, PYTHONPATH=str(tree), TZ="UTC")
        command = [sys.executable, "-m", module, "--prefix", str(prefix), "-t", "5", "machines"]
        times, to_query = [], []
        for _ in range(runs):
            responder.protocol.last_datagram_time = None
            started = time.monotonic()
            listing = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tree, timeout=60)
            times.append(time.monotonic() - started)
            # One factory, no loss: the one query the listing sends is the only datagram.
            if responder.protocol.last_datagram_time is not None:
                to_query.append(responder.protocol.last_datagram_time - started)
            rows = listing.stdout.splitlines()[1:]
            if listing.returncode != 0 or len(rows) != SLOTS:
                raise SystemExit(f"vac machines failed: {listing.returncode} {listing.stderr}")
        probe = subprocess.run([sys.executable, "-c", PROBE.format(module=module, prefix=str(prefix))],
                               capture_output=True, text=True, env=environment, cwd=tree, timeout=60)
        code, module_count, has_cryptography = json.loads(probe.stderr.strip().splitlines()[-1])
        importtime = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                    capture_output=True, text=True, env=environment, cwd=tree, timeout=60)
    cumulative = re.search(rf"\|\s*(\d+) \|\s*{re.escape(module)}$", importtime.stderr, re.MULTILINE)
    print(f"tree={tree} module={module} runs={runs}")
    print(f"vac machines wall time: median {statistics.median(times) * 1000:.0f} ms, "
          f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
    if to_query:
        print(f"process start to its query at the responder: median {statistics.median(to_query) * 1000:.0f} ms, "
              f"min {min(to_query) * 1000:.0f} ms, max {max(to_query) * 1000:.0f} ms")
    print(f"modules loaded by a listing: {module_count} (exit {code}), cryptography loaded: {has_cryptography}")
    if cumulative:
        print(f"import {module}: {int(cumulative.group(1)) / 1000:.0f} ms cumulative (python -X importtime)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
