"""An asyncio event loop in its own thread, for one network part of vacd.

Rules (design.md rule 6; issue 11 item 3):
- The guest HTTP servers (`vacd-guestapi`) and the VacQuery responder (`vacd-vacquery`)
  each run on a loop of their own, so a guest flooding its servers cannot delay the
  answers peers and `vac` wait for.
- `is_responsive()` is the liveness probe: a stuck or dead loop answers False, never raises.
- Work from other threads goes through `call` and `run_soon`: asyncio objects are not
  thread-safe.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from vacd.eventloop import ASYNCIO, new_event_loop


class ServiceLoop:
    """An asyncio event loop in its own thread, for one network part (guest API or VacQuery).

    `kind` is `asyncio` or `uvloop` (vacd.eventloop): the guest servers take uvloop where it
    is installed; the responder, a few datagrams a second, keeps asyncio's own.
    """

    def __init__(self, name: str, kind: str = ASYNCIO) -> None:
        self.kind = kind
        self.loop = new_event_loop(kind)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def is_responsive(self, timeout_seconds: float = 5.0) -> bool:
        """Whether the event loop runs a trivial task within the timeout (a stuck part would not)."""

        async def ping() -> bool:
            return True

        try:
            return bool(self.call(ping(), timeout_seconds))
        except Exception:  # boundary: a stuck or dead loop is what this detects
            return False

    def run_soon(self, function: Callable[[], object]) -> None:
        """Run `function` on the loop's thread and wait for it (asyncio objects are not thread-safe)."""

        async def run() -> None:
            function()

        self.call(run())

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
