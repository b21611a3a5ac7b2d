"""Running test code inside a network namespace the test made (`ip netns` names, /run/netns).

A thread that enters a namespace stays in it: sockets it opens, and processes it starts,
live there, while the rest of the test process stays in the host's namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def enter_namespace(namespace: str) -> None:
    """Move the calling thread into `namespace` (setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(descriptor)


def in_namespace(namespace: str, make: Callable[[], T], timeout: float = 30.0) -> T:
    """`make()` run on a thread that entered `namespace`; what it returns, or what it raised."""
    made: list[T] = []
    failed: list[BaseException] = []

    def enter_and_make() -> None:
        try:
            enter_namespace(namespace)
            made.append(make())
        except BaseException as error:  # handed to the caller's thread
            failed.append(error)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join(timeout)
    if failed:
        raise failed[0]
    return made[0]
