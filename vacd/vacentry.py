"""The `vac` command's entry point (setup.cfg): `vacd.cli.main`, loaded with the collector paused.

Issue 15 item 4. Loading what `vac machines` needs makes some 15,000 objects that live as
long as the command: modules, classes, functions, the methods dataclasses generate. Every
700 of them set off CPython's cyclic garbage collector, which walked that growing heap
about 20 times while `vacd.cli` loaded and had nothing to free: 7 to 10 ms of an 80 ms
listing here (docs/benchmarks.md, "`vac machines` to its first datagram"). So the collector
is paused while `vacd.cli` loads, and what was loaded is then frozen (`gc.freeze`, as
`vacd.gcfreeze` does for the daemon's start-up heap): the command runs with the collector
on, and its collections walk only what the command itself makes.

`python -m vacd.cli` runs the same command, without this.
"""

from __future__ import annotations

import gc
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `vac` with `argv` (default: the process's arguments); the exit code."""
    gc.disable()
    try:
        from vacd.cli import main as run_command

        gc.freeze()
    finally:
        gc.enable()
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
