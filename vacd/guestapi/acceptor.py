"""Accepting guest connections, with those we will not serve reset before they cost anything.

Rules (issue 11 item 3):
- asyncio's own accept path builds a transport, a task and a protocol for every
  connection before anyone can look at its source, so a slot flooding new connections
  was paid for in full even when each was then refused. Here each accepted socket is
  first shown to `screen(source)`; a refused one is reset at once (SO_LINGER 0, so no
  TIME_WAIT either) for about the price of the accept() call, and only a screened one
  becomes a transport (`loop.connect_accepted_socket`), and its protocol is made with the
  source address accept() returned, so nothing asks the kernel for it again.
- One readiness callback accepts at most ACCEPT_BATCH connections, so the loop turns
  between batches and the connections already open are read in between.
- When accept() fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
  ENOMEM), accepting on that socket pauses for ACCEPT_RETRY_SECONDS, as asyncio's own
  loop does, and `on_resource_failure` is told (the server logs it, rate-limited).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from functools import partial
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

ACCEPT_BATCH = 128
ACCEPT_RETRY_SECONDS = 1.0
RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# SO_LINGER on, 0 s: close() sends RST and keeps no state.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class _AcceptedSocket(socket.socket):
    """An accepted connection whose family and type are those of its listening socket, given.

    socket.socket turns `family` and `type` into enums on every read, about a microsecond
    each on Python 3.11; accept() reads both and connect_accepted_socket three times more,
    for every connection. An accepted socket has its listener's family and type, so they are
    kept here once. Anything else is a plain socket.
    """

    __slots__ = ("_kind",)

    def __init__(self, kind: tuple[socket.AddressFamily, socket.SocketKind], proto: int, fileno: int) -> None:
        super().__init__(kind[0], kind[1], proto, fileno)
        self._kind = kind

    @property
    def family(self) -> socket.AddressFamily:
        return self._kind[0]

    @property
    def type(self) -> socket.SocketKind:
        return self._kind[1]


class Acceptor:
    """Accepts on one listening socket for the running event loop."""

    def __init__(
        self,
        listening_socket: socket.socket,
        protocol_factory: Callable[[str, socket.socket], asyncio.Protocol],
        screen: Callable[[str], bool],
        on_resource_failure: Callable[[OSError], None],
    ) -> None:
        self.socket = listening_socket
        # socket.accept() without its enum conversions (see _AcceptedSocket): the C method
        # it wraps, (descriptor, address); CPython has it under this name since 3.3.
        self._accept_descriptor: Callable[[], tuple[int, Any]] = getattr(listening_socket, "_accept")
        self._kind = (listening_socket.family, listening_socket.type)
        self._proto = listening_socket.proto
        self.protocol_factory = protocol_factory
        self.screen = screen
        self.on_resource_failure = on_resource_failure
        self.loop = asyncio.get_running_loop()
        # Connections accepted and being handed to their protocol, by the task doing it.
        self._tasks: "dict[asyncio.Task[Any], socket.socket]" = {}
        self._retry: Optional[asyncio.TimerHandle] = None
        self._closed = False
        self.loop.add_reader(self.socket.fileno(), self._accept_ready)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections made stay open)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        else:
            self.loop.remove_reader(self.socket.fileno())
        self.socket.close()

    async def wait_closed(self) -> None:
        """Wait for connections accepted but not yet handed to their protocol."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _accept_ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                descriptor, address = self._accept_descriptor()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while in the queue
            except OSError as error:
                if error.errno in RESOURCE_ERRNOS:
                    self._pause(error)
                    return
                raise
            connection = _AcceptedSocket(self._kind, self._proto, descriptor)
            source = str(address[0]) if address else ""
            if not self.screen(source):
                try:
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                finally:
                    connection.close()
                continue
            # Not set non-blocking here: connect_accepted_socket does that on either loop.
            # The loop's own coroutine as the task, no wrapper: its outcome is read in _handed_over.
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(partial(self.protocol_factory, source, connection), connection))
            self._tasks[task] = connection
            task.add_done_callback(self._handed_over)

    def _handed_over(self, task: "asyncio.Task[Any]") -> None:
        connection = self._tasks.pop(task)
        error = None if task.cancelled() else task.exception()
        if error is None and not task.cancelled():
            return
        if isinstance(error, OSError):
            log.debug("guest connection lost before it was set up error=%s", error)
        elif error is not None:
            log.error("guest connection could not be set up", exc_info=error)
        connection.close()

    def _pause(self, error: OSError) -> None:
        self.loop.remove_reader(self.socket.fileno())
        self._retry = self.loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
        self.on_resource_failure(error)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self.loop.add_reader(self.socket.fileno(), self._accept_ready)
