"""The objects vacd holds from start-up are kept out of the garbage collector's full passes.

Issue 15 item 3. CPython's cyclic collector now and then makes a full (generation 2) pass,
which walks every container object the process holds, and every thread waits for it (one
GIL). A guest server answering a connection per request makes enough short-lived objects to
set one off about twice a second; in the metadata benchmark's server process each pass took
about 9 ms (up to 14 ms) of walking modules, classes and configuration that live as long as
the process, and every request in flight waited for it: a large part of the closed loop's
p99 (docs/benchmarks.md, "third round").

Rules:
- Once start-up is done (`freeze_startup_heap`), what is alive is collected once more, then
  frozen (`gc.freeze`): moved to a permanent generation that collections skip. Full passes
  then walk only what was made since, and take well under a millisecond there.
- Everything made after that is collected exactly as before. What the freeze costs: a cycle
  among objects alive at start-up that later becomes garbage is never freed; start-up
  objects are made once, so that is bounded by the start-up heap, not by uptime.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect, then freeze what is alive (see the module's rules); returns the objects frozen."""
    # Garbage left by start-up is freed now rather than frozen for the process's life.
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
