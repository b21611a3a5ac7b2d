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

    .venv/bin/python bench/vac_startup.py [--runs 30] [--tree TREE ...] [--bytecode]

The command module is the one TREE's `vac` script runs: `vacd.vacentry` (issue 15 item 4),
else `vacd.cli`, else `vacquery.cli` (the entry point before issue 9 item 1).
Several `--tree`s are run interleaved (one listing of each in turn), so that a change in
the machine's load falls on all of them alike.

`--installed` measures the command an admin runs: each tree is installed by pip (built, with
the bytecode pip compiles, as rpmbuild does) into a fresh virtual environment of its own, and its `vac` console script is run from outside the tree, so neither the checkout nor
the development environment's editable-install finder is on its path.

Python compiles every module it cannot find bytecode for, each time, and with
PYTHONDONTWRITEBYTECODE set (as in some development shells) it never writes any: a
checkout then pays for compiling some 4,800 lines of vacd and vacquery on every listing.
An installed vac does not (the RPM carries the .pyc files rpmbuild compiled). `--bytecode`
measures as installed: the children may write bytecode, into a cache of their own
(PYTHONPYCACHEPREFIX, so the tree is not touched), and one listing per tree fills it before
the timed runs. Without it the children inherit the environment as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from responder import FACTORY, SPACE, site_snapshot  # noqa: E402  (bench/responder.py)

from vacquery.responder import ReplyBudget, TokenBuckets  # noqa: E402
from vacquery.responder_transport import ResponderProtocol, start_responder  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
SLOTS = 8
PROBE = """import json, sys
from {module} import main
code = main(['--prefix', {prefix!r}, '-t', '5', 'machines'])
print(json.dumps([code, len(sys.modules), 'cryptography' in sys.modules]), file=sys.stderr)
"""


def command_module(tree: Path) -> str:
    """What the tree's `vac` script runs: vacd.vacentry, else vacd.cli, else (before issue 9) vacquery.cli."""
    if (tree / "vacd/vacentry.py").is_file():
        return "vacd.vacentry"
    entry = tree / "vacd/cli.py"
    return "vacd.cli" if entry.is_file() and "def main(" in entry.read_text() else "vacquery.cli"


class LoopbackResponder:
    """One VacQuery responder on 127.0.0.1 in an asyncio loop on a thread; `close()` stops it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # On the monotonic clock, so that a datagram's arrival compares with a process's start.
        # A budget no run of this script spends: the default one (256 KiB, then 8 KiB/s per
        # source) limits the answers after about 40 listings in a row from 127.0.0.1.
        budget = ReplyBudget(per_source=TokenBuckets(1e9, 1e12), total=TokenBuckets(1e9, 1e12))
        self.protocol = protocol = ResponderProtocol(trusted_sources={"127.0.0.1"}, clock=time.monotonic,
                                                     budget=budget)
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
    parser.add_argument("--tree", type=Path, action="append",
                        help="a checkout to run; repeat to compare, interleaved (default: this one)")
    parser.add_argument("--bytecode", action="store_true",
                        help="let the listings use compiled bytecode, as an installed vac does")
    parser.add_argument("--installed", action="store_true",
                        help="run each tree's `vac` console script, installed by pip into a fresh venv")
    arguments = parser.parse_args()
    trees = [tree.resolve() for tree in arguments.tree or [REPOSITORY]]
    responder = LoopbackResponder()
    try:
        with tempfile.TemporaryDirectory(prefix="vac-startup-installs-") as installs:
            scripts = ([install_script(tree, Path(installs) / f"tree-{number}") for number, tree in enumerate(trees)]
                       if arguments.installed else None)
            return measure(trees, arguments.runs, arguments.bytecode, responder, scripts)
    finally:
        responder.close()


def install_script(tree: Path, directory: Path) -> Path:
    """The `vac` script of `tree`, installed (not editable) into a venv of its own under `directory`."""
    directory.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "venv", str(directory / "venv")], check=True, timeout=600)
    # A listing needs nothing beyond the standard library (tests/vacd/test_cli.py): no dependency is
    # installed. pip builds the tree in isolation (setuptools from the index) and compiles the bytecode.
    subprocess.run([str(directory / "venv/bin/python"), "-m", "pip", "install", "--quiet", "--no-deps", str(tree)],
                   check=True, cwd=directory, timeout=600)
    return directory / "venv/bin/vac"


class Subject:
    """One tree's `vac machines`: how to run it, and what its runs measured."""

    def __init__(self, tree: Path, prefix: Path, cache: Optional[Path], script: Optional[Path] = None) -> None:
        self.tree = tree
        self.module = command_module(tree)
        self.environment = dict(os.environ, PYTHONPATH=str(tree), TZ="UTC")
        if cache is not None:
            self.environment.pop("PYTHONDONTWRITEBYTECODE", None)
            self.environment["PYTHONPYCACHEPREFIX"] = str(cache)
        self.command = [sys.executable, "-m", self.module, "--prefix", str(prefix), "-t", "5", "machines"]
        # Installed: the console script, from outside the tree, with nothing of the tree on the path.
        self.cwd = tree
        self.script = script
        if script is not None:
            self.environment = dict(os.environ, TZ="UTC")
            self.environment.pop("PYTHONPATH", None)
            self.command = [str(script), "--prefix", str(prefix), "-t", "5", "machines"]
            self.cwd = prefix
        self.times: list[float] = []
        self.to_query: list[float] = []
        self.cpu: list[float] = []

    def run_once(self, responder: LoopbackResponder) -> None:
        responder.protocol.last_datagram_time = None
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        listing = subprocess.run(self.command, capture_output=True, text=True, env=self.environment, cwd=self.cwd,
                                 timeout=60)
        self.times.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The listing's own processor time (user and system): what a busy host stretches, not how long it waits.
        self.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        # One factory, no loss: the one query the listing sends is the only datagram.
        if responder.protocol.last_datagram_time is not None:
            self.to_query.append(responder.protocol.last_datagram_time - started)
        rows = listing.stdout.splitlines()[1:]
        if listing.returncode != 0 or len(rows) != SLOTS:
            raise SystemExit(f"vac machines failed: {listing.returncode} {listing.stderr}")

    def report(self, prefix: Path, bytecode: bool) -> None:
        python = str(self.script.parent / "python") if self.script is not None else sys.executable
        probe = subprocess.run([python, "-c", PROBE.format(module=self.module, prefix=str(prefix))],
                               capture_output=True, text=True, env=self.environment, cwd=self.cwd, timeout=60)
        code, module_count, has_cryptography = json.loads(probe.stderr.strip().splitlines()[-1])
        # The module that holds the command (vacd.vacentry only loads vacd.cli, with the collector paused).
        module = "vacd.cli" if self.module == "vacd.vacentry" else self.module
        importtime = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"],
                                    capture_output=True, text=True, env=self.environment, cwd=self.cwd, timeout=60)
        cumulative = re.search(rf"\|\s*(\d+) \|\s*{re.escape(module)}$", importtime.stderr, re.MULTILINE)
        how = f"installed {self.script}" if self.script is not None else (
            "cached" if bytecode else "as the environment says")
        print(f"tree={self.tree} module={self.module} runs={len(self.times)} bytecode={how}")
        times, to_query = self.times, self.to_query
        print(f"vac machines wall time: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
        if to_query:
            over = sum(1 for seconds in to_query if seconds > 0.1)
            print(f"process start to its query at the responder: median {statistics.median(to_query) * 1000:.0f} ms, "
                  f"min {min(to_query) * 1000:.0f} ms, max {max(to_query) * 1000:.0f} ms, "
                  f"over 100 ms in {over} of {len(to_query)} runs")
        print(f"processor time of a listing (user + system): median {statistics.median(self.cpu) * 1000:.0f} ms, "
              f"min {min(self.cpu) * 1000:.0f} ms, max {max(self.cpu) * 1000:.0f} ms")
        print(f"modules loaded by a listing: {module_count} (exit {code}), cryptography loaded: {has_cryptography}")
        if cumulative:
            print(f"import {module}: {int(cumulative.group(1)) / 1000:.0f} ms cumulative (python -X importtime)")


def measure(trees: list[Path], runs: int, bytecode: bool, responder: LoopbackResponder,
            scripts: Optional[list[Path]] = None) -> int:
    port = responder.port
    with tempfile.TemporaryDirectory(prefix="vac-startup-") as root:
        prefix = Path(root)
        (prefix / "etc").mkdir()
        (prefix / "etc/vac.conf").write_text(
            f"[settings]\nvac_space = {SPACE}\nfactory_name = {FACTORY}\nfactories = {FACTORY}=127.0.0.1\n"
            f"vacquery_port = {port}\n")
        subjects = [Subject(tree, prefix, prefix / f"bytecode-{number}" if bytecode else None,
                            scripts[number] if scripts else None)
                    for number, tree in enumerate(trees)]
        if bytecode or scripts:
            for subject in subjects:  # fills its bytecode cache; not timed
                subject.run_once(responder)
                subject.times.clear()
                subject.to_query.clear()
                subject.cpu.clear()
        for _ in range(runs):
            for subject in subjects:
                subject.run_once(responder)
        for subject in subjects:
            subject.report(prefix, bytecode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
