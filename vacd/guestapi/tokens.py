"""IMDSv2-style session tokens for the metadata server: issue, check, and which paths need one.

Rules (issue 11 item 3; the facts follow AWS IMDSv2 and Firecracker's MMDS V2):
- A guest asks for a token with `PUT /latest/api/token` carrying its lifetime in
  `X-aws-ec2-metadata-token-ttl-seconds` (or MMDS's `X-metadata-token-ttl-seconds`): decimal
  ASCII digits, MIN_TTL_SECONDS to MAX_TTL_SECONDS. A missing, malformed or out-of-range
  lifetime, or two lifetime headers that disagree, is 400. A PUT carrying `X-Forwarded-For`
  came through a proxy (perhaps one the guest runs for its payload's containers) and is
  refused with 403, as AWS does. The answer is the token as text/plain, with the lifetime
  echoed in `X-aws-ec2-metadata-token-ttl-seconds`.
- The guest presents it in `X-aws-ec2-metadata-token` (or `X-metadata-token`).
- A token is `v1.` + base64url(expiry, 8 bytes big-endian) + `.` + base64url(HMAC-SHA256 over
  the expiry, the slot and the machine's UUID, with a key only this server holds). It is
  bound to the slot and to the machine it was issued to: when the slot's machine is
  recreated the slot's UUID changes and every old token fails, as does a token shown from
  another slot, one past its expiry, or one made with another key. Nothing is stored, so
  there is nothing to expire, clean up or leak to disk; a new vacd process has a new key, which
  voids every token as expiry does (the guest asks again, as it must after expiry anyway).
- Which paths need one (`token_need`): the paths cloud-init reads (OpenStack datasource,
  which sends no token, and the EC2 tree its EC2 datasource and the OpenStack one crawl)
  NEVER need one, whatever the setting; a token sent there is not looked at, so a stale token
  cannot break a boot. Every other metadata path is a vac addition: it needs a token when
  `metadata_tokens = required`. SECRET_PATHS would always need one; nothing vac serves
  carries a secret outside user_data (which cloud-init reads, so it stays tokenless), and
  the table is empty today.
- A token that is needed and missing, malformed, expired, from another slot or from a
  recreated machine is 401 (MMDS's answer for both; AWS answers 401 too).
- The token is never logged or kept: callers log the machine and the reason only.
- Pure: `now` and the key are arguments (`new_key()` draws one from `secrets` for the edge).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Optional

from vacd.guestapi.metadata import DATE_PATTERN, LATEST
from vacd.guestapi.requestpath import path_segments
from vacd.guestapi.wire import GuestRequestRejected, Response

TOKEN_PATH = "/latest/api/token"
# AWS's names first; Firecracker's MMDS accepts both, and so do we.
TTL_HEADERS = ("x-aws-ec2-metadata-token-ttl-seconds", "x-metadata-token-ttl-seconds")
TOKEN_HEADERS = ("x-aws-ec2-metadata-token", "x-metadata-token")
TTL_RESPONSE_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
FORWARDED_HEADER = "x-forwarded-for"
# AWS and MMDS both allow 1 s to 6 h.
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 21600
TOKEN_REQUIRED = "token required"
KEY_BYTES = 32

_VERSION = "v1"
_MAC_CONTEXT = b"vacd metadata session token v1\0"
_EXPIRY_BYTES = 8
_MAC_BYTES = 32
# base64url of 8 and 32 bytes, unpadded: 11 and 43 characters.
_TOKEN_PATTERN = re.compile(r"^v1\.([A-Za-z0-9_-]{11})\.([A-Za-z0-9_-]{43})$")
_DIGITS = re.compile(r"^[0-9]{1,10}$")
TEXT_TYPE = "text/plain"


class PathNeed(Enum):
    """Whether a metadata path needs a session token."""

    NEVER = "never"  # cloud-init reads it without a token
    IF_REQUIRED = "if_required"  # a vac addition: needed when metadata_tokens = required
    ALWAYS = "always"  # a vac addition carrying a secret


# Vac additions that carry secrets and so always need a token. None today: the only secret
# the metadata server serves is user_data, and cloud-init reads it without a token.
SECRET_PATHS: frozenset[str] = frozenset()

# What cloud-init's OpenStack datasource reads under /openstack/<version>/ (helpers/openstack.py).
CLOUD_INIT_OPENSTACK_FILES = frozenset(
    ("meta_data.json", "user_data", "vendor_data.json", "vendor_data2.json", "network_data.json")
)


@dataclass(frozen=True)
class TokenHolder:
    """What a token is bound to: the slot and the UUID of the machine it was issued to."""

    slot: int
    machine_uuid: str


def new_key() -> bytes:
    """A fresh random key for one server's lifetime."""
    return secrets.token_bytes(KEY_BYTES)


# Pure and asked for every metadata request, with the same few paths.
@lru_cache(maxsize=4096)
def token_need(path: str) -> PathNeed:
    """Whether GET `path` (already normalised) needs a token; see the module rules."""
    if path in SECRET_PATHS:
        return PathNeed.ALWAYS
    return PathNeed.NEVER if is_cloud_init_path(path) else PathNeed.IF_REQUIRED


def is_needed(need: PathNeed, mode: str) -> bool:
    """Whether a request for a path of `need` must carry a valid token under `mode`."""
    return need is PathNeed.ALWAYS or (need is PathNeed.IF_REQUIRED and mode == "required")


def is_cloud_init_path(path: str) -> bool:
    """Whether cloud-init (its OpenStack datasource, or an EC2 crawl) reads `path`.

    `/`, `/<version>/`, `/<version>/meta-data/...`, `/<version>/user-data` (EC2: any date,
    `1.0` or `latest`, as metadata.py answers them), `/openstack`, `/openstack/<version>/`
    and the five OpenStack files. Vac 03's own spellings (`meta-data.json`, `meta_data.json`
    in the EC2 tree, `/openstack/<v>/user-data`, `/openstack/<v>/meta-data/`) are not.
    """
    segments, _trailing_slash = path_segments(path)
    if not segments:
        return True
    if segments[0] == "openstack":
        rest = segments[1:]
        if not rest:
            return True
        if not _is_openstack_version(rest[0]):
            return False
        return len(rest) == 1 or (len(rest) == 2 and rest[1] in CLOUD_INIT_OPENSTACK_FILES)
    if not _is_ec2_version(segments[0]):
        return False
    rest = segments[1:]
    return not rest or rest[0] == "meta-data" or rest == ["user-data"]


def _is_openstack_version(segment: str) -> bool:
    return segment == LATEST or bool(DATE_PATTERN.match(segment))


def _is_ec2_version(segment: str) -> bool:
    return segment == LATEST or segment == "1.0" or bool(DATE_PATTERN.match(segment))


def requested_ttl_seconds(headers: tuple[tuple[str, str], ...]) -> int:
    """The lifetime a token PUT asks for.

    Raises:
        GuestRequestRejected: 403 if the request came through a proxy (X-Forwarded-For); 400 if no
            lifetime was given, it is not decimal digits, it is out of range, or two
            lifetime headers disagree.
    """
    values = [value for name, value in headers if name in TTL_HEADERS]
    if any(name == FORWARDED_HEADER for name, _value in headers):
        raise GuestRequestRejected(403, "token request with X-Forwarded-For")
    if not values:
        raise GuestRequestRejected(400, "token request without X-aws-ec2-metadata-token-ttl-seconds")
    if len(set(values)) > 1:
        raise GuestRequestRejected(400, "conflicting token lifetimes")
    value = values[0]
    if not _DIGITS.match(value):
        raise GuestRequestRejected(400, "token lifetime is not a whole number of seconds")
    ttl_seconds = int(value)
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise GuestRequestRejected(400, f"token lifetime not between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds")
    return ttl_seconds


def presented_token(headers: tuple[tuple[str, str], ...]) -> Optional[str]:
    """The token a request carries, or None.

    Raises:
        GuestRequestRejected: 401 if two token headers carry different values.
    """
    values = {value for name, value in headers if name in TOKEN_HEADERS}
    if len(values) > 1:
        raise GuestRequestRejected(401, "conflicting tokens")
    return values.pop() if values else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionTokens:
    """Issues and checks the tokens of one server (one key)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a session token key needs at least 16 bytes")
        self._key = key

    def issue(self, holder: TokenHolder, ttl_seconds: int, now: float) -> str:
        """A token for `holder`, valid from `now` for `ttl_seconds`."""
        if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"token lifetime {ttl_seconds} out of range")
        expiry = int(now) + ttl_seconds
        expiry_bytes = struct.pack(">Q", expiry)
        return f"{_VERSION}.{_b64(expiry_bytes)}.{_b64(self._mac(expiry_bytes, holder))}"

    def problem(self, token: str, holder: TokenHolder, now: float) -> Optional[str]:
        """None if `token` is valid for `holder` at `now`, else why not (never the token)."""
        match = _TOKEN_PATTERN.match(token)
        if match is None:
            return "malformed token"
        try:
            expiry_bytes = _unb64(match.group(1))
            mac = _unb64(match.group(2))
        except (binascii.Error, ValueError):
            return "malformed token"
        # Only the canonical spelling: unused low bits in the last character would otherwise
        # give each token several spellings.
        if len(expiry_bytes) != _EXPIRY_BYTES or len(mac) != _MAC_BYTES \
                or _b64(expiry_bytes) != match.group(1) or _b64(mac) != match.group(2):
            return "malformed token"
        # Checked before the expiry, so a forged expiry learns nothing about the key.
        if not hmac.compare_digest(mac, self._mac(expiry_bytes, holder)):
            return "token not issued to this machine"
        (expiry,) = struct.unpack(">Q", expiry_bytes)
        if now >= expiry:
            return "token expired"
        return None

    def _mac(self, expiry_bytes: bytes, holder: TokenHolder) -> bytes:
        # Lengths fixed or prefixed, so no two (expiry, slot, uuid) give the same message.
        uuid_bytes = holder.machine_uuid.lower().encode("utf-8")
        message = _MAC_CONTEXT + expiry_bytes + struct.pack(">IH", holder.slot, len(uuid_bytes)) + uuid_bytes
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def answer_put(self, headers: tuple[tuple[str, str], ...], holder: TokenHolder, now: float) -> Response:
        """The answer to `PUT /latest/api/token`: the token, or 400/403."""
        try:
            ttl_seconds = requested_ttl_seconds(headers)
        except GuestRequestRejected as refused:
            return Response(refused.status, f"{refused.reason}\n".encode(), TEXT_TYPE, "token", close=True)
        token = self.issue(holder, ttl_seconds, now)
        return Response(200, token.encode("ascii"), TEXT_TYPE, "token",
                        headers=((TTL_RESPONSE_HEADER, str(ttl_seconds)),))

    def refusal(
        self, path: str, headers: tuple[tuple[str, str], ...], mode: str, holder: TokenHolder, now: float
    ) -> Optional[GuestRequestRejected]:
        """None if GET `path` may be answered, else why not (a 401)."""
        if not is_needed(token_need(path), mode):
            return None
        try:
            token = presented_token(headers)
        except GuestRequestRejected as refused:
            return refused
        if token is None:
            return GuestRequestRejected(401, TOKEN_REQUIRED)
        problem = self.problem(token, holder, now)
        return None if problem is None else GuestRequestRejected(401, problem)

