"""One guest HTTP connection: bounded reads, keep-alive, uploads, and a deadline for each wait.

Rules:
- Every wait has a deadline, so a stuck or hostile guest holds at most one connection slot
  for a bounded time and never blocks anyone else: the first request head within
  `head_timeout_seconds` of its first byte, the next request within
  `idle_timeout_seconds`, a body with progress at least every `body_idle_timeout_seconds`
  and complete within `body_total_timeout_seconds`, and a stalled reader is dropped after
  `write_stall_timeout_seconds`. One DeadlineSweep per server checks every connection's
  deadline every SWEEP_SECONDS (0.25 s), so a deadline is kept up to that much late; a timer
  per connection cost more than that precision is worth.
- HTTP/1.1 keep-alive is allowed for at most `max_requests_per_connection` requests;
  `Connection: close` and HTTP/1.0 close after the response. A request whose body is not
  read (a refused PUT) also closes the connection, so the stream never desynchronises.
- When the client may still be sending (a refused request body), the last response is
  followed by FIN and what arrives is read and dropped for up to LINGER_SECONDS before
  closing, so a reset cannot destroy the response ("lingering close", as nginx does).
- Pipelined requests are answered in order; while the transport's write buffer is full no
  further request is parsed (asyncio flow control), so a client that does not read cannot
  make us buffer without bound.
- A response the handler says to hold (`Response.hold_seconds`, a slot over its request
  rate) is sent after that long, and nothing is read from the connection meanwhile, so a
  flooding client waits on its own connections instead of making new ones.
- The handler decides; this class only moves bytes. It is told a request head and answers
  a Response, or an Upload: then the body is read and the upload's `complete` awaited
  while reading is paused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Protocol, Union, cast

from vacd.guestapi.wire import (
    CONTINUE,
    MAX_HEAD_BYTES,
    GuestRequestRejected,
    HeadCache,
    RequestHead,
    Response,
    find_head_end,
    serialise_response,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds on every connection; the defaults suit guests booting under load."""

    # cloud-init's metadata client gives up after 5 s per try (peers-and-specs §7); a guest
    # that has not sent its head in 10 s is not a working client.
    head_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 15.0
    body_idle_timeout_seconds: float = 30.0
    body_total_timeout_seconds: float = 600.0
    write_stall_timeout_seconds: float = 30.0
    # nginx's keepalive_requests default.
    max_requests_per_connection: int = 1000
    # The server-wide cap, for file descriptors (vacd.fdlimit derives it from the limit).
    max_connections: int = 4096
    # Per slot (every address of the slot together), and never more than the slot's share
    # of max_connections (vacd.guestapi.slotlimits.connection_share).
    max_connections_per_slot: int = 64
    # Each slot's request bucket: cloud-init fetches about 40 metadata paths in its first
    # seconds and a payload polls MJF every few seconds, so 200 at once and 100/s refilled
    # never touch a working guest, while a flood costs the server a 429, not a document.
    requests_per_second_per_slot: float = 100.0
    request_burst_per_slot: int = 200
    # One PUT body; a larger Content-Length is refused with 413 before anything is read.
    max_body_bytes: int = 64 * 1024 * 1024
    # Upload bodies are held in memory until written (vacd.guestapi.slotlimits.UploadMemory):
    # a shared pool, at most this much per slot, and a reserve per slot that is always there
    # for a shutdown_message (4 KiB, vacd.outcomes) and heartbeat files.
    max_upload_bytes_in_flight: int = 256 * 1024 * 1024
    max_upload_bytes_in_flight_per_slot: int = 64 * 1024 * 1024
    upload_reserve_bytes_per_slot: int = 256 * 1024


@dataclass(frozen=True)
class Upload:
    """The handler accepts a request body of `length` bytes.

    `complete(body)` is awaited once the body is in; `release()` is called exactly once
    afterwards, or when the body never arrives.
    """

    length: int
    complete: Callable[[bytes], Awaitable[Response]]
    release: Callable[[], None]


class ConnectionHandler(Protocol):
    def admit(self, part: str, source: str) -> Optional[int]:
        """The slot a new connection from `source` is served as, or None to refuse it (limits)."""

    def connection_closed(self, slot: int) -> None:
        """A connection `admit` let in as `slot` has ended."""

    def on_head(self, part: str, source: str, head: RequestHead) -> Union[Response, Upload]:
        """Answer a request, or accept its body."""

    def on_rejected(self, part: str, source: str, status: int, reason: str) -> None:
        """A request was refused before it reached on_head (malformed, too large, timed out)."""

    def date(self) -> str:
        """The current HTTP Date header value."""


_HEAD, _BODY, _BUSY, _DRAINING, _CLOSED = "head", "body", "busy", "draining", "closed"
# After our last response we send FIN and read (and discard) what the client still sends
# for a while before closing, so a response is not lost to a reset when the client had
# sent more than we read (a refused PUT body). nginx does the same ("lingering close").
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1024 * 1024
# How often DeadlineSweep looks: the most a deadline is kept late.
SWEEP_SECONDS = 0.25
# Unanswered pipelined requests held before reading stops (flow control, not a refusal).
MAX_PIPELINED_BYTES = 4 * MAX_HEAD_BYTES


class DeadlineSweep:
    """The deadlines of a server's connections, checked together by one timer.

    A timer per connection, made when it opened and cancelled when it closed, was among the
    largest costs of a connection per request. Here a connection with a deadline is only
    watched (a set); every SWEEP_SECONDS the sweep tells each one whose deadline has passed.
    A deadline is therefore kept up to SWEEP_SECONDS late; the shortest default is 2 s
    (LINGER_SECONDS). The timer runs only while some connection is watched.
    """

    def __init__(self, interval: float = SWEEP_SECONDS) -> None:
        self.interval = interval
        self._watched: "set[GuestConnection]" = set()
        self._timer: Optional[asyncio.TimerHandle] = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, connection: "GuestConnection") -> None:
        self._watched.add(connection)
        if self._timer is None:
            self._timer = connection.loop.call_later(self.interval, self._sweep, connection.loop)

    def forget(self, connection: "GuestConnection") -> None:
        self._watched.discard(connection)

    def close(self) -> None:
        """Stop the timer (the server is stopping)."""
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for connection in [connection for connection in self._watched if connection.deadline_passed(now)]:
            connection.on_deadline()
        if self._watched:
            self._timer = loop.call_later(self.interval, self._sweep, loop)


class GuestConnection(asyncio.Protocol):
    """The protocol object asyncio creates for each accepted guest connection."""

    # One is made per connection (thousands a second under load): slots make that and every
    # attribute access cheaper; __weakref__ for the server's WeakSet of open connections.
    __slots__ = (
        "part", "handler", "limits", "head_cache", "loop", "transport", "source", "socket", "slot", "_state", "_buffer",
        "_requests", "_head_started", "_write_paused", "_peer_closed", "_upload", "_upload_head", "_body",
        "_body_deadline", "_task", "_deadline", "_deadline_reason", "deadlines", "_drained_bytes",
        "_held", "__weakref__",
    )

    def __init__(self, part: str, handler: ConnectionHandler, limits: ConnectionLimits, head_cache: HeadCache,
                 deadlines: "DeadlineSweep", source: str = "", sock: Optional[socket.socket] = None) -> None:
        self.part = part
        self.deadlines = deadlines
        self.handler = handler
        self.limits = limits
        self.head_cache = head_cache
        self.loop = asyncio.get_running_loop()
        self.transport: Optional[asyncio.Transport] = None
        # The peer's address as accept() gave it (vacd.guestapi.acceptor), else asked in connection_made.
        self.source = source
        self.socket = sock
        self.slot: Optional[int] = None
        self._state = _HEAD
        self._buffer = bytearray()
        self._requests = 0
        self._head_started = False
        self._write_paused = False
        self._peer_closed = False
        self._upload: Optional[Upload] = None
        self._upload_head: Optional[RequestHead] = None
        self._body = bytearray()
        self._body_deadline = 0.0
        self._task: Optional[asyncio.Task[None]] = None
        self._deadline: Optional[float] = None
        self._deadline_reason = ""
        self._drained_bytes = 0
        self._held: Optional[asyncio.TimerHandle] = None

    @property
    def pending_task(self) -> "Optional[asyncio.Task[None]]":
        """The upload being written for this connection, if any."""
        return self._task

    def close_now(self) -> None:
        """Close at once (the server is stopping); an upload being written is left to finish."""
        if self._state != _CLOSED:
            self._close_now()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's are not).
        self.transport = stream = cast(asyncio.Transport, transport)
        if not self.source:
            peer = stream.get_extra_info("peername")
            self.source = str(peer[0]) if peer else ""
        self.slot = self.handler.admit(self.part, self.source)
        if self.slot is None:
            # The handler counted and logged why; a reset costs us nothing more.
            self._state = _CLOSED
            stream.abort()
            return
        self._set_deadline(self.limits.head_timeout_seconds, "head")

    def data_received(self, data: bytes) -> None:
        if self._state == _HEAD:
            if not self._buffer and not self._write_paused and find_head_end(data) == len(data) \
                    and not data.startswith((b"\r", b"\n")):
                # The usual case, one whole head in one read: answered without copying it.
                self._answer(data)
            else:
                self._buffer += data
                self._process()
            if self._state == _HEAD and self._buffer:
                if not self._head_started:
                    # The head deadline runs from its first byte (slow heads cannot last).
                    self._head_started = True
                    self._set_deadline(self.limits.head_timeout_seconds, "head")
                if len(self._buffer) > MAX_PIPELINED_BYTES and self.transport is not None:
                    # Requests we cannot answer yet (the client is not reading): stop reading.
                    self.transport.pause_reading()
        elif self._state == _BODY:
            self._take_body(data)
        elif self._state == _BUSY:
            # Reading is paused; bytes already in flight wait for the next request.
            self._buffer += data
            if len(self._buffer) > MAX_HEAD_BYTES * 4:
                self._abort("buffered too much while busy")
        elif self._state == _DRAINING:
            self._drained_bytes += len(data)
            if self._drained_bytes > LINGER_MAX_BYTES:
                self._abort("kept sending after the last response")

    def eof_received(self) -> bool:
        self._peer_closed = True
        if self._state == _DRAINING:
            self._close_now()
        elif self._state == _HEAD and not self._buffer:
            self._close()
        elif self._state == _BODY:
            self._reject(400, "connection closed before the body was complete")
        # Keep the transport open so a response still in preparation can be written.
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._clear_deadline()
        self._cancel_held()
        self._state = _CLOSED
        if self._upload is not None and self._task is None:
            self._release_upload()
        if self.slot is not None:
            slot, self.slot = self.slot, None
            self.handler.connection_closed(slot)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_deadline(self.limits.write_stall_timeout_seconds, "write")

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._state == _HEAD:
            self._await_next_request()
            self._process()
            if self.transport is not None and len(self._buffer) <= MAX_PIPELINED_BYTES:
                self.transport.resume_reading()

    # Requests
    def _process(self) -> None:
        while self._state == _HEAD and not self._write_paused and self._buffer:
            if self._buffer.startswith((b"\r", b"\n")):
                # RFC 9112 §2.2: ignore empty lines before a request line.
                stripped = self._buffer.lstrip(b"\r\n")
                self._buffer = bytearray(stripped)
            end = find_head_end(self._buffer)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reject(404, f"request head over {MAX_HEAD_BYTES} bytes")
                return
            raw_head = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._answer(raw_head)

    def _answer(self, raw_head: bytes) -> None:
        """Parse one request head, taken off the stream, and answer it or start its upload."""
        self._requests += 1
        try:
            head = self.head_cache.parse(raw_head)
        except GuestRequestRejected as rejection:
            self._reject(rejection.status, rejection.reason)
            return
        try:
            result = self.handler.on_head(self.part, self.source, head)
        except Exception:
            log.exception("guest request failed part=%s source=%s", self.part, self.source)
            self._respond(Response(500, b"", close=True), head)
            return
        if isinstance(result, Upload):
            self._start_upload(head, result)
            return
        self._respond(result, head)

    def _respond(self, response: Response, head: Optional[RequestHead]) -> None:
        if self._state == _CLOSED or self.transport is None:
            return
        if response.hold_seconds > 0.0:
            self._state = _BUSY
            self._clear_deadline()
            self.transport.pause_reading()
            self._held = self.loop.call_later(
                response.hold_seconds, self._send_held, dataclasses.replace(response, hold_seconds=0.0), head)
            return
        keep_alive = (
            head is not None
            and head.keep_alive
            and not response.close
            and not (head.has_body and self._upload_head is not head)
            and not (self._peer_closed and not self._buffer)
            and self._requests < self.limits.max_requests_per_connection
        )
        include_body = head is None or head.method != "HEAD"
        payload = serialise_response(response, keep_alive=keep_alive, date=self.handler.date(), include_body=include_body)
        if keep_alive:
            self.transport.write(payload)
            self._state = _HEAD
            self._await_next_request()
            return
        # Linger only if the client may still be sending: a body we did not read, bytes
        # after the request, or a request we refused without knowing where it ended.
        unread = head is None or (head.has_body and self._upload_head is not head) or bool(self._buffer)
        if unread or self.socket is None or self.transport.is_closing():
            self.transport.write(payload)
        else:
            self._send_last(self.transport, self.socket, payload)
        self._close(linger=unread)

    @staticmethod
    def _send_last(transport: asyncio.Transport, sock: socket.socket, payload: bytes) -> None:
        """Write a connection's last response and, if the kernel took all of it, its FIN at once.

        Corked, the response's tail and the FIN leave in one segment, not two: one packet and
        one wake-up fewer for both ends. The FIN is sent here, not by the transport's close,
        because both loops close the descriptor only on their next turn, and until then a
        corked response would wait. What the kernel did not take follows from the transport's
        buffer, and its close flushes the cork.
        """
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        transport.write(payload)
        if transport.get_write_buffer_size() == 0:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as error:
                # The client reset meanwhile; the transport reports that itself.
                log.debug("guest connection gone before its FIN error=%s", error)

    def _send_held(self, response: Response, head: Optional[RequestHead]) -> None:
        self._held = None
        if self._state != _BUSY:
            return
        self._state = _HEAD
        self._respond(response, head)
        if self._state == _HEAD and self.transport is not None:
            self.transport.resume_reading()
            self._process()

    def _await_next_request(self) -> None:
        self._head_started = bool(self._buffer)
        if self._head_started:
            self._set_deadline(self.limits.head_timeout_seconds, "head")
        else:
            self._set_deadline(self.limits.idle_timeout_seconds, "idle")

    def _reject(self, status: int, reason: str) -> None:
        self.handler.on_rejected(self.part, self.source, status, reason)
        self._respond(Response(status, b"", close=True), None)

    # Uploads
    def _start_upload(self, head: RequestHead, upload: Upload) -> None:
        self._upload = upload
        self._upload_head = head
        self._body = bytearray()
        self._state = _BODY
        self._body_deadline = self.loop.time() + self.limits.body_total_timeout_seconds
        if head.expects_continue and upload.length > 0 and self.transport is not None:
            self.transport.write(CONTINUE)
        already_read = bytes(self._buffer)
        self._buffer.clear()
        self._take_body(already_read)

    def _take_body(self, data: bytes) -> None:
        upload = self._upload
        assert upload is not None
        needed = upload.length - len(self._body)
        self._body += data[:needed]
        if len(data) > needed:
            self._buffer += data[needed:]
        if len(self._body) < upload.length:
            if self.loop.time() > self._body_deadline:
                self._reject(408, "request body took too long")
                return
            self._set_deadline(min(self.limits.body_idle_timeout_seconds, self._body_deadline - self.loop.time()), "body")
            return
        self._state = _BUSY
        self._clear_deadline()
        if self.transport is not None:
            self.transport.pause_reading()
        body = bytes(self._body)
        self._body = bytearray()
        self._task = self.loop.create_task(self._finish_upload(upload, body))

    async def _finish_upload(self, upload: Upload, body: bytes) -> None:
        head = self._upload_head
        try:
            response = await upload.complete(body)
        except Exception:
            log.exception("guest upload failed part=%s source=%s", self.part, self.source)
            response = Response(500, b"", close=True)
        finally:
            self._release_upload()
            self._task = None
        if self._state == _CLOSED:
            return
        self._state = _HEAD
        self._respond(response, head)
        self._upload_head = None
        if self._state == _HEAD and self.transport is not None:
            self.transport.resume_reading()
            self._process()

    def _release_upload(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.release()

    # Deadlines: watched by the server's DeadlineSweep, not a timer of our own.
    def _set_deadline(self, seconds: float, reason: str) -> None:
        self._deadline = self.loop.time() + max(0.0, seconds)
        self._deadline_reason = reason
        self.deadlines.watch(self)

    def _clear_deadline(self) -> None:
        self._deadline = None
        self.deadlines.forget(self)

    def deadline_passed(self, now: float) -> bool:
        """Whether this connection's deadline is at or before `now` (DeadlineSweep asks)."""
        return self._deadline is not None and self._deadline <= now

    def _cancel_held(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None

    def on_deadline(self) -> None:
        """The deadline has passed (DeadlineSweep): close, reset or answer 408 as the wait was."""
        self.deadlines.forget(self)
        if self._state == _CLOSED or self._deadline is None:
            return
        self._deadline = None
        reason = self._deadline_reason
        if self._state == _DRAINING:
            self._close_now()
        elif reason == "write":
            self._abort("client stopped reading")
        elif reason == "idle" or (reason == "head" and not self._buffer and self._state == _HEAD):
            self._close()
        elif self._state in (_HEAD, _BODY):
            self._reject(408, f"{reason} timed out")
        else:
            self._close()

    def _close(self, linger: bool = False) -> None:
        """Close after what is written; with `linger`, FIN first and drain (LINGER_SECONDS)."""
        if self._state in (_CLOSED, _DRAINING):
            return
        transport = self.transport
        if not linger or transport is None or self._peer_closed or not transport.can_write_eof():
            self._close_now()
            return
        transport.write_eof()
        self._state = _DRAINING
        self._buffer.clear()
        self._drained_bytes = 0
        transport.resume_reading()
        self._set_deadline(LINGER_SECONDS, "linger")

    def _close_now(self) -> None:
        self._state = _CLOSED
        self._clear_deadline()
        self._cancel_held()
        if self.transport is not None:
            self.transport.close()

    def _abort(self, reason: str) -> None:
        log.debug("aborting guest connection part=%s source=%s reason=%s", self.part, self.source, reason)
        self._state = _CLOSED
        self._clear_deadline()
        self._cancel_held()
        if self.transport is not None:
            self.transport.abort()
