"""Which event loop the guest servers run on: uvloop where it is installed, asyncio's own otherwise.

Issue 15 item 3: with a new connection per request (cloud-init's way), most of the guest
servers' CPU went to asyncio's pure-Python transports, accept and close. uvloop (libuv,
in C) does that part for less, which is what takes the metadata server's p99 at 200
clients under 20 ms here (docs/benchmarks.md, "Guest metadata service"). It is optional:
EPEL 9 ships python3-uvloop, a plain EL9 does not, and vacd runs the same without it.

Rules:
- `VACD_EVENT_LOOP` chooses: `auto` (the default: uvloop if it imports, else asyncio),
  `asyncio` (never uvloop; for an admin who suspects it), or `uvloop` (uvloop or refuse
  to start, so a host that was meant to have it cannot silently run without).
- Only the loop is swapped: the servers use the asyncio API alone, and their tests run on
  both loops where uvloop is installed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable, Optional

EVENT_LOOP_VARIABLE = "VACD_EVENT_LOOP"
AUTO, ASYNCIO, UVLOOP = "auto", "asyncio", "uvloop"
CHOICES = (AUTO, ASYNCIO, UVLOOP)


class EventLoopUnavailable(RuntimeError):
    """The loop asked for cannot be had (uvloop asked for and not installed, or a bad choice)."""


def uvloop_factory() -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop's `new_event_loop`, or None where uvloop is not installed."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def chosen_kind(choice: Optional[str] = None) -> str:
    """`asyncio` or `uvloop`: what `choice` (default: $VACD_EVENT_LOOP, else auto) comes to here."""
    wanted = (choice if choice is not None else os.environ.get(EVENT_LOOP_VARIABLE, "") or AUTO).strip().lower()
    if wanted not in CHOICES:
        raise EventLoopUnavailable(
            f"{EVENT_LOOP_VARIABLE}={wanted!r} is not one of {', '.join(CHOICES)}")
    if wanted == ASYNCIO:
        return ASYNCIO
    if uvloop_factory() is not None:
        return UVLOOP
    if wanted == UVLOOP:
        raise EventLoopUnavailable(
            f"{EVENT_LOOP_VARIABLE}=uvloop but uvloop is not installed (install python3-uvloop from EPEL, "
            f"or set {EVENT_LOOP_VARIABLE}=auto)")
    return ASYNCIO


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of `kind` (`asyncio` or `uvloop`, as `chosen_kind` says)."""
    if kind == UVLOOP:
        factory = uvloop_factory()
        if factory is None:
            raise EventLoopUnavailable("uvloop is not installed")
        return factory()
    if kind != ASYNCIO:
        raise EventLoopUnavailable(f"unknown event loop kind {kind!r}")
    return asyncio.new_event_loop()


__all__ = ["ASYNCIO", "AUTO", "CHOICES", "EVENT_LOOP_VARIABLE", "EventLoopUnavailable", "UVLOOP",
           "chosen_kind", "new_event_loop", "uvloop_factory"]


async def cancel_and_wait(task: "Optional[asyncio.Task[None]]") -> None:
    """Cancel `task` (if any) and wait until it has ended (a supervisor's at a server's stop)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
