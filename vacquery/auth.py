"""Authenticate VacQuery datagrams with a site key: HMAC-SHA256, timestamp and nonce.

Vac 03's VacQuery had no authentication: anyone who knew the space name could read a
factory's state or poison the share census with forged statuses (behaviour reference §11).

Wire form (version 1). A signed datagram is the unsigned JSON object with one member
appended as its last member:

    {...the message..., "vacquery_auth": "1.<unix time>.<32 hex nonce>.<64 hex tag>"}

    tag = HMAC-SHA256(site key, "VacQuery-auth-1\\n" <time> "\\n" <nonce> "\\n" <body>)

where <body> is the datagram's bytes before `, "vacquery_auth"` (the object without its
closing brace). The tag covers the exact bytes, so no JSON canonicalisation is needed,
and a Vac 03 peer, which ignores unknown keys, still reads the message.

Rules:
- `required` mode: a datagram without a valid tag is dropped. `optional` mode (for
  migrating a site factory by factory): unsigned datagrams are accepted and reported as
  unauthenticated, but our own datagrams are always signed, and a datagram that carries
  a tag which fails (altered, stale, replayed, malformed) is dropped in both modes.
- Stale: |now - time| > MAX_SKEW_SECONDS (30 s). Replayed: a nonce already accepted within
  its validity window. Every drop is counted by reason in `counters`.
- Time and the nonce source are arguments: this module reads no clock and no randomness.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, Sequence

from vacquery.errors import AuthRejected as AuthRejected  # re-exported, as before the split
from vacquery.errors import KeyFileError as KeyFileError

log = logging.getLogger(__name__)

AUTH_FIELD = "vacquery_auth"
AUTH_VERSION = "1"
MAX_SKEW_SECONDS = 30
NONCE_BYTES = 16
# A key shorter than this is too weak to be a site secret (HMAC-SHA256 wants >= 32 bytes).
MIN_KEY_BYTES = 16
# Accepted nonces remembered at once; at 30 s validity this allows about 6,000 signed
# datagrams/s, far beyond a site's census traffic. Past it we fail closed (drop and count)
# rather than forget a nonce and let a replay through.
REPLAY_CACHE_CAPACITY = 200_000

_MARKER = b', "' + AUTH_FIELD.encode() + b'": "'
_SIGNATURE_START = _MARKER + AUTH_VERSION.encode() + b"."
_TRAILER = re.compile(rb'1\.([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})"\}')
_DOMAIN = b"VacQuery-auth-1\n"


class AuthMode(str, Enum):
    """`[settings] vacquery_auth`: whether unsigned datagrams are still accepted."""

    REQUIRED = "required"
    OPTIONAL = "optional"


@dataclass(frozen=True)
class Verified:
    """A datagram that passed `verify`: its message bytes, and whether a valid tag vouched for it."""

    body: bytes
    is_authenticated: bool


def load_site_key(path: Path) -> bytes:
    """Read the site key: the file's bytes without surrounding whitespace.

    Make one with `head -c 32 /dev/urandom | base64 > /etc/vac-vacquery.key; chmod 600`.
    """
    try:
        key = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read VacQuery key: {error.strerror}") from error
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{path}: VacQuery key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("VacQuery key file is readable by group or others path=%s mode=%o", path, mode & 0o777)
    return key


class Authenticator:
    """Signs our datagrams and verifies peers' with one site key, remembering nonces."""

    def __init__(
        self,
        key: bytes,
        mode: AuthMode = AuthMode.REQUIRED,
        *,
        nonce_source: Callable[[int], bytes],
        max_skew_seconds: int = MAX_SKEW_SECONDS,
        replay_capacity: int = REPLAY_CACHE_CAPACITY,
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise KeyFileError(f"VacQuery key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
        self.mode = mode
        self.max_skew_seconds = max_skew_seconds
        self.replay_capacity = replay_capacity
        self.counters: Counter[str] = Counter()
        self._keyed = hmac.new(key, _DOMAIN, hashlib.sha256)
        self._nonce_source = nonce_source
        self._seen_nonces: set[bytes] = set()
        self._nonce_expiry: list[tuple[int, bytes]] = []

    def _tag(self, time_text: bytes, nonce_hex: bytes, body: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(time_text + b"\n" + nonce_hex + b"\n")
        mac.update(body)
        return mac.hexdigest().encode("ascii")

    def sign(self, datagram: bytes, now: float) -> bytes:
        """Append the auth member to one of our JSON-object datagrams."""
        return self.sign_all((datagram,), now)[0]

    def sign_all(self, datagrams: Sequence[bytes], now: float) -> list[bytes]:
        """`sign` for several datagrams at once (a responder's answer), each with its own nonce."""
        time_text = str(int(now)).encode("ascii")
        nonces = self._nonce_source(NONCE_BYTES * len(datagrams)).hex().encode("ascii")
        signed = []
        for index, datagram in enumerate(datagrams):
            # Only a non-empty JSON object can take one more member.
            if not datagram.endswith(b"}") or b'"' not in datagram:
                raise ValueError("only a non-empty JSON object can be signed")
            body = datagram[:-1]
            nonce_hex = nonces[2 * NONCE_BYTES * index:2 * NONCE_BYTES * (index + 1)]
            tag = self._tag(time_text, nonce_hex, body)
            signed.append(b"".join((body, _SIGNATURE_START, time_text, b".", nonce_hex, b".", tag, b'"}')))
        return signed

    def verify(self, datagram: bytes, now: float, peer: str = "-") -> Verified:
        """Check a peer's datagram; return the message bytes to decode.

        Raises:
            AuthRejected: unauthenticated in required mode, or a tag that fails.
        """
        position = datagram.rfind(_MARKER)
        if position < 0:
            if self.mode is AuthMode.REQUIRED:
                raise self._reject(peer, "unauthenticated")
            self.counters["unauthenticated_accepted"] += 1
            return Verified(datagram, False)
        trailer = _TRAILER.fullmatch(datagram, position + len(_MARKER))
        if trailer is None:
            raise self._reject(peer, "malformed_auth")
        time_text, nonce_hex, tag = trailer.group(1), trailer.group(2), trailer.group(3)
        sent_time = int(time_text)
        if abs(now - sent_time) > self.max_skew_seconds:
            raise self._reject(peer, "stale")
        body = datagram[:position]
        if not hmac.compare_digest(self._tag(time_text, nonce_hex, body), tag):
            raise self._reject(peer, "bad_tag")
        self._remember(nonce_hex, sent_time, now, peer)
        self.counters["authenticated"] += 1
        return Verified(body + b"}", True)

    def _remember(self, nonce_hex: bytes, sent_time: int, now: float, peer: str) -> None:
        """Record an accepted nonce until its time can no longer pass the skew check."""
        expiry = self._nonce_expiry
        while expiry and expiry[0][0] < now:
            self._seen_nonces.discard(heapq.heappop(expiry)[1])
        if nonce_hex in self._seen_nonces:
            raise self._reject(peer, "replayed")
        if len(self._seen_nonces) >= self.replay_capacity:
            raise self._reject(peer, "replay_cache_full")
        self._seen_nonces.add(nonce_hex)
        heapq.heappush(expiry, (sent_time + self.max_skew_seconds, nonce_hex))

    def _reject(self, peer: str, reason: str) -> AuthRejected:
        self.counters[reason] += 1
        log.debug("dropped datagram peer=%s reason=%s", peer, reason)
        return AuthRejected(peer, reason)


def authenticator_from_settings(settings: object, nonce_source: Callable[[int], bytes] = os.urandom) -> Optional[Authenticator]:
    """The Authenticator that `[settings] vacquery_key_file` and `vacquery_auth` ask for, or None.

    Raises:
        KeyFileError: the key file is set but unusable.
        ValueError: vacquery_auth is neither `required` nor `optional`.
    """
    key_file = getattr(settings, "vacquery_key_file", None)
    if not key_file:
        return None
    mode = AuthMode(str(getattr(settings, "vacquery_auth", AuthMode.REQUIRED.value)).lower())
    return Authenticator(load_site_key(Path(key_file)), mode, nonce_source=nonce_source)
