"""Authenticate VacQuery datagrams with a site key: HMAC-SHA256, scope, timestamp and nonce.

Vac 03's VacQuery had no authentication: anyone who knew the space name could read a
factory's state or poison the share census with forged statuses (behaviour reference §11).

Wire form (version 2). A signed datagram is the unsigned JSON object with one member
appended as its last member:

    {...the message..., "vacquery_auth": "2.<unix time>.<32 hex nonce>.<64 hex tag>"}

    tag = HMAC-SHA256(site key, "VacQuery-auth-2\n" <scope> <time> "\n" <nonce> "\n" <body>)
    scope = "query\n" <destination factory> "\n" <space> "\n"     for a query
          | "reply\n" "\n" <space> "\n"                           for a reply

where <body> is the datagram's bytes before `, "vacquery_auth"` (the object without its
closing brace) and <destination factory> is the lower-cased name the query is sent to
(the census's name for it: the `factories` entry). The tag covers the exact bytes, so no
JSON canonicalisation is needed, and a Vac 03 peer, which ignores unknown keys, still
reads the message. The scope is not sent: each side supplies its own. A responder checks
a query against its own factory name and space, so a signed query captured on its way to
one factory draws nothing from any other (issue 9 item 6: version 1 had no scope, and one
captured query drew 64 replies, 53 KB, from each of 3 factories). A reply's body already
names its factory and echoes the census's cookie under the tag; its scope keeps a reply
from passing as a query and the reverse.

Rules:
- `required` mode: a datagram without a valid tag is dropped. `optional` mode (for
  migrating a site from unsigned Vac 03 factories, factory by factory): unsigned
  datagrams are accepted and reported as unauthenticated, but our own datagrams are
  always signed, and a datagram that carries a tag which fails (altered, stale, replayed,
  for another factory or space, version 1, malformed) is dropped in both modes.
- Key rotation: an Authenticator holds one or more keys. It signs with the first (the
  current key) and accepts a tag made with any of them, so a site can change its key
  factory by factory without a moment in which two factories cannot talk.
- Stale: |now - time| > MAX_SKEW_SECONDS (30 s). Replayed: a nonce already accepted within
  its validity window. Every drop is counted by reason in `counters`.
- Time and the nonce source are arguments: this module reads no clock and no randomness.
  `ReloadableAuthenticator` reads the key files, each time it is asked to follow settings.
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
from typing import Callable, Optional, Sequence, Union

from vacquery.errors import AuthRejected as AuthRejected  # re-exported, as before the split
from vacquery.errors import KeyFileError as KeyFileError

log = logging.getLogger(__name__)

AUTH_FIELD = "vacquery_auth"
AUTH_VERSION = "2"
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
_TRAILER = re.compile(rb'([0-9]{1,3})\.([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})"\}')
_DOMAIN = b"VacQuery-auth-2\n"
# Space and factory names as vac.conf allows them (and more): printable ASCII, no newline,
# so that the scope's lines cannot run into each other.
_SCOPE_WORD = re.compile(r"[!-~]{1,253}")


class AuthMode(str, Enum):
    """`[settings] vacquery_auth`: whether unsigned datagrams are still accepted."""

    REQUIRED = "required"
    OPTIONAL = "optional"


@dataclass(frozen=True)
class Scope:
    """What a tag binds a datagram to besides its bytes: a query's destination, and the space.

    `destination` is the factory a query is sent to (compared in lower case, as Vac
    lower-cases `factories`, §2.2), or None for a reply.
    """

    space: str
    destination: Optional[str] = None

    def __post_init__(self) -> None:
        if not _SCOPE_WORD.fullmatch(self.space):
            raise ValueError(f"space {self.space!r} cannot be a scope")
        if self.destination is not None:
            if not _SCOPE_WORD.fullmatch(self.destination):
                raise ValueError(f"factory name {self.destination!r} cannot be a scope")
            object.__setattr__(self, "destination", self.destination.lower())

    @classmethod
    def query_to(cls, factory: str, space: str) -> "Scope":
        """A query for `factory` in `space`: what a census signs and a responder checks."""
        return cls(space, factory)

    @classmethod
    def reply_in(cls, space: str) -> "Scope":
        """A reply in `space`: what a responder signs and a census checks."""
        return cls(space, None)

    def encoded(self) -> bytes:
        if self.destination is None:
            return b"reply\n\n" + self.space.encode("ascii") + b"\n"
        return b"query\n" + self.destination.encode("ascii") + b"\n" + self.space.encode("ascii") + b"\n"


@dataclass(frozen=True)
class Verified:
    """A datagram that passed `verify`: its message bytes, and whether a valid tag vouched for it."""

    body: bytes
    is_authenticated: bool


def _read_key(path: Path) -> tuple[bytes, bool]:
    """The key in `path`, and whether group or others may read the file."""
    try:
        key = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read VacQuery key: {error.strerror}") from error
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{path}: VacQuery key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
    return key, bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def load_site_key(path: Path) -> bytes:
    """Read the site key: the file's bytes without surrounding whitespace.

    Make one with `head -c 32 /dev/urandom | base64 > /etc/vac-vacquery.key; chmod 600`.
    """
    key, is_exposed = _read_key(path)
    if is_exposed:
        log.warning("VacQuery key file is readable by group or others path=%s", path)
    return key


class ReplayCache:
    """The nonces accepted and not yet stale; shared by the authenticators a reload replaces.

    Keeping one cache across a reload matters: a fresh one would let a query accepted in
    the last 30 s be replayed once to the rebuilt authenticator.
    """

    def __init__(self, capacity: int = REPLAY_CACHE_CAPACITY) -> None:
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[int, bytes]] = []

    def admit(self, nonce_hex: bytes, expires: int, now: float) -> Optional[str]:
        """Remember a nonce until `expires`; or the reason it cannot be admitted."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if nonce_hex in self._seen:
            return "replayed"
        if len(self._seen) >= self.capacity:
            return "replay_cache_full"
        self._seen.add(nonce_hex)
        heapq.heappush(self._expiry, (expires, nonce_hex))
        return None


class Authenticator:
    """Signs our datagrams with the current key, verifies peers' with any key held, remembering nonces.

    `keys` is one key or a sequence of them: the first signs, all verify (a rotation holds
    the new and the old key).
    """

    def __init__(
        self,
        keys: Union[bytes, Sequence[bytes]],
        mode: AuthMode = AuthMode.REQUIRED,
        *,
        nonce_source: Callable[[int], bytes],
        max_skew_seconds: int = MAX_SKEW_SECONDS,
        replay_capacity: int = REPLAY_CACHE_CAPACITY,
        replay_cache: Optional[ReplayCache] = None,
    ) -> None:
        key_list = [keys] if isinstance(keys, bytes) else list(keys)
        if not key_list:
            raise KeyFileError("no VacQuery key given")
        for key in key_list:
            if len(key) < MIN_KEY_BYTES:
                raise KeyFileError(f"VacQuery key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
        self.mode = mode
        self.max_skew_seconds = max_skew_seconds
        self.replay_cache = replay_cache if replay_cache is not None else ReplayCache(replay_capacity)
        self.counters: Counter[str] = Counter()
        self._keyed = [hmac.new(key, _DOMAIN, hashlib.sha256) for key in key_list]
        self._nonce_source = nonce_source

    @property
    def key_count(self) -> int:
        return len(self._keyed)

    def _tag(self, keyed: "hmac.HMAC", scope: bytes, time_text: bytes, nonce_hex: bytes, body: bytes) -> bytes:
        mac = keyed.copy()
        mac.update(scope + time_text + b"\n" + nonce_hex + b"\n")
        mac.update(body)
        return mac.hexdigest().encode("ascii")

    def sign(self, datagram: bytes, now: float, scope: Scope) -> bytes:
        """Append the auth member to one of our JSON-object datagrams, bound to `scope`."""
        return self.sign_all((datagram,), now, scope)[0]

    def sign_all(self, datagrams: Sequence[bytes], now: float, scope: Scope) -> list[bytes]:
        """`sign` for several datagrams at once (a responder's answer), each with its own nonce."""
        time_text = str(int(now)).encode("ascii")
        nonces = self._nonce_source(NONCE_BYTES * len(datagrams)).hex().encode("ascii")
        scope_bytes = scope.encoded()
        signed = []
        for index, datagram in enumerate(datagrams):
            # Only a non-empty JSON object can take one more member.
            if not datagram.endswith(b"}") or b'"' not in datagram:
                raise ValueError("only a non-empty JSON object can be signed")
            body = datagram[:-1]
            nonce_hex = nonces[2 * NONCE_BYTES * index:2 * NONCE_BYTES * (index + 1)]
            tag = self._tag(self._keyed[0], scope_bytes, time_text, nonce_hex, body)
            signed.append(b"".join((body, _SIGNATURE_START, time_text, b".", nonce_hex, b".", tag, b'"}')))
        return signed

    def verify(self, datagram: bytes, now: float, scope: Scope, peer: str = "-") -> Verified:
        """Check a peer's datagram against the scope we expect; return the message bytes to decode.

        Raises:
            AuthRejected: unauthenticated in required mode, or a tag that fails (a tag made
            for another factory or space fails as `bad_tag`).
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
        version, time_text, nonce_hex, tag = trailer.group(1), trailer.group(2), trailer.group(3), trailer.group(4)
        if version != AUTH_VERSION.encode("ascii"):
            # Version 1 had no scope: accepting it would reopen the replay to every factory.
            raise self._reject(peer, "unsupported_auth_version")
        sent_time = int(time_text)
        if abs(now - sent_time) > self.max_skew_seconds:
            raise self._reject(peer, "stale")
        body = datagram[:position]
        scope_bytes = scope.encoded()
        for index, keyed in enumerate(self._keyed):
            if hmac.compare_digest(self._tag(keyed, scope_bytes, time_text, nonce_hex, body), tag):
                break
        else:
            raise self._reject(peer, "bad_tag")
        refusal = self.replay_cache.admit(nonce_hex, sent_time + self.max_skew_seconds, now)
        if refusal is not None:
            raise self._reject(peer, refusal)
        self.counters["authenticated"] += 1
        if index:
            # A peer still signs with an older key: the rotation is not finished.
            self.counters["authenticated_with_older_key"] += 1
        return Verified(body + b"}", True)

    def _reject(self, peer: str, reason: str) -> AuthRejected:
        self.counters[reason] += 1
        log.debug("dropped datagram peer=%s reason=%s", peer, reason)
        return AuthRejected(peer, reason)


def key_files_from_settings(settings: object) -> tuple[str, ...]:
    """`[settings] vacquery_key_file`: one or more paths, the current key's first."""
    configured = getattr(settings, "vacquery_key_file", None)
    if not configured:
        return ()
    if isinstance(configured, str):
        return tuple(configured.split())
    return tuple(str(path) for path in configured)


def mode_from_settings(settings: object) -> AuthMode:
    """`[settings] vacquery_auth`; raises ValueError for anything but required or optional."""
    return AuthMode(str(getattr(settings, "vacquery_auth", AuthMode.REQUIRED.value)).lower())


def authenticator_from_settings(
    settings: object,
    nonce_source: Callable[[int], bytes] = os.urandom,
    *,
    replay_cache: Optional[ReplayCache] = None,
) -> Optional[Authenticator]:
    """The Authenticator that `[settings] vacquery_key_file` and `vacquery_auth` ask for, or None.

    Raises:
        KeyFileError: a key file is set but unusable.
        ValueError: vacquery_auth is neither `required` nor `optional`.
    """
    key_files = key_files_from_settings(settings)
    if not key_files:
        return None
    mode = mode_from_settings(settings)
    keys = [load_site_key(Path(key_file)) for key_file in key_files]
    return Authenticator(keys, mode, nonce_source=nonce_source, replay_cache=replay_cache)


_KeyMaterial = tuple[AuthMode, tuple[bytes, ...], tuple[str, ...]]  # mode, keys, files others may read


def _same_keys_and_mode(one: Optional[_KeyMaterial], other: Optional[_KeyMaterial]) -> bool:
    """Whether two readings would build the same Authenticator (file permissions aside)."""
    if one is None or other is None:
        return one is other
    return one[:2] == other[:2]


class ReloadableAuthenticator:
    """The Authenticator the latest settings ask for, rebuilt when they change (issue 9 item 6).

    vacd(8) says edits to vac.conf need no restart; the key and `vacquery_auth` are edits
    too. `follow(settings)` re-reads the key files each time (a key replaced in place is a
    change), rebuilds the Authenticator when the mode or a key differs, and keeps one
    replay cache for its whole life. If the new settings cannot be used (a key file
    unreadable or too short), the running Authenticator stays and the problem is logged
    once, as a bad reload keeps the running configuration.
    """

    def __init__(self, settings: object, nonce_source: Callable[[int], bytes] = os.urandom) -> None:
        self._nonce_source = nonce_source
        self.replay_cache = ReplayCache()
        self._material = self._read_material(settings)
        self.current: Optional[Authenticator] = self._build(self._material)
        self._problem: Optional[str] = None

    @staticmethod
    def _read_material(settings: object) -> Optional[_KeyMaterial]:
        key_files = key_files_from_settings(settings)
        if not key_files:
            return None
        keys = []
        exposed = []
        for key_file in key_files:
            key, is_exposed = _read_key(Path(key_file))
            keys.append(key)
            if is_exposed:
                exposed.append(key_file)
        return mode_from_settings(settings), tuple(keys), tuple(exposed)

    def _build(self, material: Optional[_KeyMaterial]) -> Optional[Authenticator]:
        if material is None:
            return None
        mode, keys, exposed = material
        for key_file in exposed:
            log.warning("VacQuery key file is readable by group or others path=%s", key_file)
        return Authenticator(keys, mode, nonce_source=self._nonce_source, replay_cache=self.replay_cache)

    def follow(self, settings: object) -> bool:
        """Rebuild `current` if the settings or key files changed; True if it was replaced."""
        try:
            material = self._read_material(settings)
        except (KeyFileError, ValueError) as error:
            if str(error) != self._problem:
                log.error("VacQuery key not changed, the running one stays: %s", error)
                self._problem = str(error)
            return False
        self._problem = None
        if _same_keys_and_mode(material, self._material):
            return False
        self._material = material
        self.current = self._build(material)
        if material is None:
            log.info("VacQuery authentication off: no vacquery_key_file")
        else:
            log.info("VacQuery authentication changed mode=%s keys=%d", material[0].value, len(material[1]))
        return True
