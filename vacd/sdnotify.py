"""The service manager's notification protocol (sd_notify(3)), spoken by vacd itself.

The protocol is small and documented: when systemd runs a service with `Type=notify` or
`WatchdogSec=`, it puts the path of a Unix datagram socket in $NOTIFY_SOCKET, and the
service sends it newline-separated `KEY=VALUE` assignments, one datagram per message:
`READY=1` (started), `STATUS=...` (one line shown by `systemctl status`), `WATCHDOG=1`
(alive), `STOPPING=1` (shutting down). A path starting with '@' names a socket in the
abstract namespace: the '@' stands for a leading NUL byte. `WATCHDOG_USEC` gives the
watchdog timeout in microseconds, and `WATCHDOG_PID`, when set, says which process it is
for (a child that inherited the environment must not think it is watched).

Without $NOTIFY_SOCKET (the sysv script, a shell, a test) every call does nothing, so the
daemon calls the notifier unconditionally. Sending never raises: a service manager that
cannot be told is logged once, and vacd goes on working.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)

NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_USEC_VARIABLE = "WATCHDOG_USEC"
WATCHDOG_PID_VARIABLE = "WATCHDOG_PID"
# systemd's status line is one line; a longer one is cut rather than refused.
MAX_STATUS_CHARACTERS = 400


def socket_address(notify_socket: str) -> str:
    """The address to send to: a filesystem path, or an abstract name with its NUL byte.

    Raises:
        ValueError: the value is neither an absolute path nor an abstract name ('@...').
    """
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        return "\0" + notify_socket[1:]
    if notify_socket.startswith("/"):
        return notify_socket
    # systemd also knows "vsock:CID:PORT" (for virtual machines); vacd never runs so.
    raise ValueError(f"{NOTIFY_SOCKET_VARIABLE}={notify_socket!r} is neither a path nor an abstract socket name")


def watchdog_seconds(environment: Mapping[str, str], pid: int) -> Optional[float]:
    """The watchdog timeout the service manager set for process `pid`, or None for none.

    A malformed or zero WATCHDOG_USEC means no watchdog, as sd_watchdog_enabled(3) reads it.
    """
    usec_text = environment.get(WATCHDOG_USEC_VARIABLE, "")
    pid_text = environment.get(WATCHDOG_PID_VARIABLE, "")
    if pid_text and pid_text != str(pid):
        return None
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    return int(usec_text) / 1_000_000


def one_line(text: str) -> str:
    """A STATUS= value: newlines would end the assignment, so they become '; '."""
    flattened = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return flattened[:MAX_STATUS_CHARACTERS]


class ServiceNotifier:
    """Tells the service manager what vacd is doing; does nothing when nobody listens."""

    def __init__(self, notify_socket: Optional[str], watchdog_timeout_seconds: Optional[float] = None) -> None:
        self.address: Optional[str] = None
        self.watchdog_timeout_seconds = watchdog_timeout_seconds if notify_socket else None
        self._socket: Optional[socket.socket] = None
        self._send_failed = False
        if notify_socket:
            try:
                self.address = socket_address(notify_socket)
            except ValueError as error:
                log.warning("not notifying the service manager: %s", error)
                self.watchdog_timeout_seconds = None

    @classmethod
    def from_environment(cls, environment: Optional[Mapping[str, str]] = None) -> "ServiceNotifier":
        """The notifier systemd asked for in the process environment (or `environment`)."""
        values = os.environ if environment is None else environment
        return cls(values.get(NOTIFY_SOCKET_VARIABLE) or None, watchdog_seconds(values, os.getpid()))

    @property
    def is_active(self) -> bool:
        return self.address is not None

    @property
    def watchdog_ping_seconds(self) -> Optional[float]:
        """How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) advises."""
        if self.watchdog_timeout_seconds is None:
            return None
        return self.watchdog_timeout_seconds / 2

    def notify(self, **assignments: str) -> bool:
        """Send one message of KEY=VALUE lines (keys upper-cased); whether it was sent."""
        if self.address is None:
            return False
        lines = [f"{key.upper()}={one_line(value) if key.upper() == 'STATUS' else value}"
                 for key, value in assignments.items()]
        message = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never wait on a service manager whose queue is full: the loop must go on.
            self._socket.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as error:
            if not self._send_failed:
                log.warning("cannot notify the service manager socket=%s error=%s",
                            self.address.replace("\0", "@"), error)
            self._send_failed = True
            return False
        if self._send_failed:
            log.info("notifying the service manager again socket=%s", self.address.replace("\0", "@"))
        self._send_failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(ready="1", status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog="1")

    def stopping(self, status: str) -> bool:
        return self.notify(stopping="1", status=status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
