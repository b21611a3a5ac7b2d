"""The error types of vacquery: one base of its own, so the protocol library needs nothing from vacd.

Rules (issue 9 item 1): `vacquery` stands alone and imports nothing from `vacd`. Errors say
whose fault they are (style.md §1, after h11's LocalProtocolError/RemoteProtocolError): a
peer's bad bytes are `MalformedDatagram` or `AuthRejected` (log, count, drop; they never
leave the part that received them), and `KeyFileError` is the admin's key file. vacd
catches `VacqueryError` beside its own `vacd.errors.VacError` where a vacquery call can
fail on purpose (vacd.errors re-exports it).
"""

from __future__ import annotations


class VacqueryError(Exception):
    """Base of every error vacquery raises on purpose."""


class MalformedDatagram(VacqueryError):
    """A peer sent bytes that are not a valid VacQuery message: log, count and drop."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"malformed datagram from {peer}: {reason}")


class AuthRejected(VacqueryError):
    """A datagram failed authentication; `reason` is the counter name."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"datagram from {peer} rejected: {reason}")


class KeyFileError(VacqueryError):
    """The site key file is missing, unreadable or too short."""
