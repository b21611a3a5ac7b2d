"""HTTP/1.x on the wire for the guest servers: request heads in, response bytes out, no I/O.

Rules:
- A request head is at most MAX_HEAD_BYTES with at most MAX_HEADER_COUNT fields; anything
  larger is refused without being parsed further. Guests send short requests (cloud-init,
  curl, wget, Python's urllib), so the limits cost nothing legitimate.
- Only HTTP/1.0 and HTTP/1.1. Line folding, control characters, a malformed or repeated
  Content-Length, and Content-Length together with Transfer-Encoding are errors (RFC 9112
  §6.3: the last is how requests are smuggled). A bare LF ends a line (RFC 9112 §2.2 allows it).
- HTTP/1.0 requests are answered and the connection closed, as Vac did (§6.1); HTTP/1.1
  keeps the connection unless the client sent `Connection: close`.
- Errors carry the status to answer with (GuestRequestRejected), as h11's do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

from vacd.errors import VacError

# nginx's large_client_header_buffers and Apache's LimitRequestFieldSize are both 8 KiB.
MAX_HEAD_BYTES = 8192
# Apache's LimitRequestFields is 100; a guest's metadata or PUT request carries under 10.
MAX_HEADER_COUNT = 64
# More digits than any quota could need; keeps int() on guest input cheap.
MAX_CONTENT_LENGTH_DIGITS = 15

_METHOD = re.compile(r"^[A-Z]{1,16}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Visible ASCII, and obs-text (0x80-0xFF): Vac's server passed a raw UTF-8 file name in a
# PUT target through, so guests may send one (vacd.guestapi.uploadnames decides on it).
_TARGET = re.compile(r"^[\x21-\x7e\x80-\xff]+$")
# Control characters other than CR, LF and HT are refused anywhere in a head (RFC 9110 §5.5).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class GuestRequestRejected(VacError):
    """A guest's request is refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason}")


@dataclass(frozen=True)
class RequestHead:
    """One parsed request line and header block."""

    method: str
    target: str
    http_version: str  # "1.0" or "1.1"
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    content_length: Optional[int]
    has_transfer_encoding: bool
    keep_alive: bool
    expects_continue: bool

    @property
    def has_body(self) -> bool:
        return self.has_transfer_encoding or bool(self.content_length)

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (lower case), or None."""
        for header_name, value in self.headers:
            if header_name == name:
                return value
        return None


@dataclass(frozen=True)
class Response:
    """What to answer; `path_class` names the kind of request for the counters.

    `hold_seconds`: send it only after this long, reading nothing more from the connection
    meanwhile (the answer to a slot over its request rate).
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    path_class: str = "other"
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    hold_seconds: float = 0.0


def find_head_end(buffer: Union[bytes, bytearray]) -> int:
    """The length of the head (terminator included) at the start of `buffer`, or -1."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1
    if lf < 0 or (0 <= crlf < lf):
        return crlf + 4
    return lf + 2


def parse_head(raw_head: Union[bytes, bytearray]) -> RequestHead:
    """Parse a request head (as delimited by find_head_end).

    Raises:
        GuestRequestRejected: the head is malformed (400), too large (404, as the guest
            interface answers over-long requests) or not HTTP/1.0 or 1.1 (505).
    """
    if len(raw_head) > MAX_HEAD_BYTES:
        raise GuestRequestRejected(404, f"request head over {MAX_HEAD_BYTES} bytes")
    # Latin-1 maps every byte to one character, so nothing is lost or refused here.
    text = bytes(raw_head).decode("latin-1")
    if _FORBIDDEN.search(text):
        raise GuestRequestRejected(400, "control character in request head")
    lines = text.split("\n")
    # The head ends with an empty line, so the split leaves empty items at the end.
    while lines and lines[-1] in ("", "\r"):
        lines.pop()
    if not lines:
        raise GuestRequestRejected(400, "empty request")
    if len(lines) - 1 > MAX_HEADER_COUNT:
        raise GuestRequestRejected(404, f"more than {MAX_HEADER_COUNT} header fields")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise GuestRequestRejected(400, "malformed request line")
    method, target, version = parts
    if not _METHOD.match(method):
        raise GuestRequestRejected(400, "malformed method")
    if not _TARGET.match(target):
        raise GuestRequestRejected(400, "malformed request target")
    if version == "HTTP/1.1":
        http_version = "1.1"
    elif version == "HTTP/1.0":
        http_version = "1.0"
    elif version.startswith("HTTP/"):
        raise GuestRequestRejected(505, "only HTTP/1.0 and HTTP/1.1 are served")
    else:
        raise GuestRequestRejected(400, "malformed HTTP version")

    headers: list[tuple[str, str]] = []
    content_length: Optional[int] = None
    has_transfer_encoding = False
    connection_tokens: set[str] = set()
    expects_continue = False
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise GuestRequestRejected(400, "obsolete header line folding")
        if "\r" in line:
            raise GuestRequestRejected(400, "bare CR in header field")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise GuestRequestRejected(400, "malformed header field")
        name = name.lower()
        value = value.strip(" \t")
        headers.append((name, value))
        if name == "content-length":
            if not value.isdigit() or not value.isascii() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
                raise GuestRequestRejected(400, "malformed Content-Length")
            length = int(value)
            if content_length is not None and content_length != length:
                raise GuestRequestRejected(400, "conflicting Content-Length fields")
            content_length = length
        elif name == "transfer-encoding":
            has_transfer_encoding = True
        elif name == "connection":
            connection_tokens.update(token.strip().lower() for token in value.split(","))
        elif name == "expect":
            expects_continue = value.lower() == "100-continue"
    if has_transfer_encoding and content_length is not None:
        raise GuestRequestRejected(400, "both Content-Length and Transfer-Encoding")
    return RequestHead(
        method=method,
        target=target,
        http_version=http_version,
        headers=tuple(headers),
        content_length=content_length,
        has_transfer_encoding=has_transfer_encoding,
        keep_alive=http_version == "1.1" and "close" not in connection_tokens,
        expects_continue=expects_continue and http_version == "1.1",
    )


# Heads longer than this are parsed every time, never kept: a guest's real requests are a few
# hundred bytes, and 1024 kept heads of MAX_HEAD_BYTES would hold 8 MiB (head and parse twice).
MAX_CACHED_HEAD_BYTES = 1024


class HeadCache:
    """Parsed heads by their exact bytes: a guest repeats the same few requests.

    RequestHead is immutable, so sharing one is safe. Only successful parses of heads up to
    MAX_CACHED_HEAD_BYTES are kept, and the table is emptied when full, so unique heads
    cost a parse and at most max_entries x MAX_CACHED_HEAD_BYTES, never more.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._heads: dict[bytes, RequestHead] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def parse(self, raw_head: bytes) -> RequestHead:
        """parse_head(raw_head), remembered; raises as parse_head does."""
        head = self._heads.get(raw_head)
        if head is None:
            head = parse_head(raw_head)
            if len(raw_head) > MAX_CACHED_HEAD_BYTES:
                return head
            if len(self._heads) >= self._max_entries:
                self._heads.clear()
            self._heads[raw_head] = head
        return head


def serialise_response(response: Response, *, keep_alive: bool, date: str, include_body: bool = True) -> bytes:
    """The status line, headers and (unless answering HEAD) body of `response`."""
    reason = REASONS.get(response.status, "Unknown")
    connection = "keep-alive" if keep_alive else "close"
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Server: vacd\r\n"
        f"Date: {date}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Connection: {connection}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in response.headers)
        + "\r\n"
    ).encode("ascii")
    return head + response.body if include_body else head
