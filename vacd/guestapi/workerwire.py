"""What vacd and its guest server processes say to each other over their control socket.

Rules (issue 15 item 3; vacd.guestapi.workers, vacd.guestapi.worker):
- One AF_UNIX SOCK_SEQPACKET socket pair per process: a message is one datagram, whole
  or not at all, and listening sockets travel beside it as SCM_RIGHTS descriptors.
- Messages are pickled tuples whose first item names them. Both ends are vacd's own code
  running as the same user, and the socket pair is made by the parent and inherited by
  the child alone: no one else can write to it.
- vacd → process: `("start", WorkerStart)` with the sockets of the parts already bound,
  `("settings", Settings)` after a reload, `("listen", part)` with one socket for a part
  bound later, `("stop",)`.
- process → vacd: `("ready", pid)` once it serves, then `("report", heartbeats, counters,
  accept_resource_failures)` every REPORT_SECONDS.
- End of file on either side means the other is gone: the process stops (finishing the
  uploads it was writing), and vacd starts it again.
"""

from __future__ import annotations

import array
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from vacd.config import Settings
from vacd.guestapi.connection import ConnectionLimits
from vacd.paths import Paths

REPORT_SECONDS = 1.0
# A pickled Settings is a few kilobytes; room for one with long lists, and for the rest.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_SOCKETS_PER_MESSAGE = 16


@dataclass(frozen=True)
class WorkerStart:
    """All a guest server process needs to serve its shard, sent once as it starts."""

    index: int
    count: int
    paths: Paths
    settings: Settings
    # The part of each socket sent with this message, in order.
    parts: tuple[str, ...]
    # The bridge whose tables confirm a source is its slot's tap (None: no such check).
    bridge: Optional[str]
    loop_kind: str
    token_key: bytes
    log_destination: str
    log_file: Path
    log_level: int
    # None: the shard's share of the defaults (vacd.guestapi.worker.shard_limits).
    limits: Optional[ConnectionLimits] = None


def send(control: socket.socket, message: tuple[Any, ...], sockets: Sequence[socket.socket] = ()) -> None:
    """Send one message, with `sockets` as descriptors (blocking: a datagram is small)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"control message of {len(data)} bytes, at most {MAX_MESSAGE_BYTES}")
    if sockets:
        socket.send_fds(control, [data], [member.fileno() for member in sockets])
    else:
        control.sendall(data)


def receive(control: socket.socket) -> Optional[tuple[tuple[Any, ...], list[socket.socket]]]:
    """The next message and its sockets; None at end of file (the other side is gone).

    Raises BlockingIOError on a non-blocking socket with nothing to read.
    """
    descriptors = array.array("i")
    data, ancillary, _flags, _address = control.recvmsg(
        MAX_MESSAGE_BYTES, socket.CMSG_SPACE(MAX_SOCKETS_PER_MESSAGE * descriptors.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            descriptors.frombytes(payload[:len(payload) - len(payload) % descriptors.itemsize])
    sockets = [socket.socket(fileno=descriptor) for descriptor in descriptors]
    if not data:
        for member in sockets:
            member.close()
        return None
    message = pickle.loads(data)
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        for member in sockets:
            member.close()
        raise ValueError(f"control message is not a named tuple: {type(message).__name__}")
    return message, sockets
