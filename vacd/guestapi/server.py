"""The guest HTTP servers: metadata on 169.254.169.254:80, MJF and $JOBOUTPUTS on .253:80.

Rules (behaviour reference §1.2, §6; design rule 6):
- Both run on one asyncio event loop, the guest servers' own in vacd (the VacQuery
  responder has another, on its own thread); each connection is a
  GuestConnection, so timeouts and limits are per connection and a stuck guest blocks
  no one. Blocking upload writes (fsync) run on a thread pool, one at a time per machine.
- Every request is answered for the one machine whose slot owns the source address
  (vacd.guestapi.machines), and in vacd only once the bridge's tables say the source's
  frames come from that slot's tap (vacd.guestapi.linkidentity). No machine, a finished
  one or one being destroyed: 404 and nothing changes. A method the server does not
  offer: 405.
- Fair shares (issue 11 item 3, vacd.guestapi.slotlimits): a connection is identified
  first, then counted. A source that is no slot, or fails the link check, is reset at
  accept and holds nothing; a slot's connections beyond its share are reset at accept. A
  request from a slot whose bucket is empty is answered 429 with Retry-After: N, held N
  seconds before it is sent, with nothing read from that connection meanwhile: a flood
  then waits on its own connections (at most its share) instead of making new ones, whose
  handshakes and resets would cost the loop more than the requests. Upload bodies in memory are capped per slot with a reserve each,
  so one guest's slow uploads cannot make another's shutdown_message wait. The guests'
  joboutputs together are capped (`joboutputs_total_bytes`, vacd.guestapi.joboutputstotal).
- Listeners bind with IP_FREEBIND, so the servers may start before the bridge has its
  addresses; an address that cannot be bound (an IPv6 link-local address whose interface
  does not exist yet, a port in use) is retried every BIND_RETRY_SECONDS, as Vac restarted
  its servers after 10 s (§1.2).
- `heartbeats[part]` is the last time that part served a request or, while it is
  listening, the last tick of its supervisor, so a quiet server is not mistaken for a dead
  one (§11: Vac's HTTP heartbeats went stale without traffic). `counters` counts
  responses by (part, path class, status).
- File descriptors (issue 8 item 11): unless told otherwise, the server holds at most
  `vacd.fdlimit.guest_connection_cap` connections, which leaves the factory its share of
  the process's limit. If accept() still fails for want of descriptors (EMFILE, ENFILE),
  accepting on that socket stops for a second and is retried (vacd.guestapi.acceptor);
  the server logs that once per RESOURCE_LOG_SECONDS with the count of failures in
  between, not once per failure with a traceback.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import socket
import time
import weakref
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence, Union

from vacd.config import Settings
from vacd.eventloop import cancel_and_wait
from vacd.fdlimit import current_fd_limit, guest_connection_cap
from vacd.guestapi.acceptor import ACCEPT_RETRY_SECONDS, Acceptor
from vacd.guestapi.connection import ConnectionLimits, DeadlineSweep, GuestConnection, Upload
from vacd.guestapi.features import features_response
from vacd.guestapi.guest import GuestMachine
from vacd.guestapi.joboutputs import QuotaExceeded, Sender, bytes_after, store_upload, usage, usage_problem
from vacd.guestapi.joboutputstotal import RESCAN_SECONDS, JoboutputsTotal, scan
from vacd.guestapi.machines import MachineResolver, default_source_to_ordinal
from vacd.guestapi.metadata import metadata_response
from vacd.guestapi.requestpath import normalise_path
from vacd.guestapi.tokens import TOKEN_PATH, TOKEN_REQUIRED, SessionTokens, TokenHolder, is_needed, new_key, token_need
from vacd.guestapi.slotlimits import SlotLimiter, UploadMemory, connection_share
from vacd.guestapi.steering import Shard
from vacd.guestapi.uploadnames import RefusedUpload, safe_repr, upload_name
from vacd.guestapi.wire import HeadCache, RequestHead, Response
from vacd.outcomes import MAX_SHUTDOWN_MESSAGE_BYTES
from vacd.paths import Paths
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS
from vacd.recordformats import SHUTDOWN_MESSAGE_FILE
from vacd.store import Store

log = logging.getLogger(__name__)

METADATA = "metadata"
MJF = "mjf"
PARTS = (METADATA, MJF)
BIND_RETRY_SECONDS = 10.0
HEARTBEAT_SECONDS = 10.0
LISTEN_BACKLOG = 1024
MAX_CACHED_SOURCES = 4096
# A slot over its request rate is logged at most this often, with the count in between.
RATE_LOG_SECONDS = 60.0
RESOURCE_LOG_SECONDS = 60.0
# Linux <netinet/in.h>; the socket module gained the name only in Python 3.12.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


@dataclass(frozen=True)
class Listening:
    part: str
    host: str
    port: int


class GuestApiServer:
    """The metadata and MJF servers of one factory."""

    def __init__(
        self,
        paths: Paths,
        store: Store,
        settings_provider: Callable[[], Settings],
        *,
        metadata_addresses: Sequence[str] = (METADATA_ADDRESS,),
        mjf_addresses: Sequence[str] = (GATEWAY_ADDRESS,),
        port: int = 80,
        source_to_ordinal: Optional[Callable[[str], Optional[int]]] = None,
        link_check: Optional[Callable[[str, int], bool]] = None,
        limits: Optional[ConnectionLimits] = None,
        executor: Optional[Executor] = None,
        clock: Callable[[], float] = time.time,
        token_key: Optional[bytes] = None,
        monotonic: Callable[[], float] = time.monotonic,
        shard: Optional[Shard] = None,
    ) -> None:
        self.paths = paths
        self.store = store
        self.settings_provider = settings_provider
        self.port = port
        self.fd_limit = current_fd_limit()
        # Derived from the limit when the server is built, after vacd raised it at start.
        self.limits = limits or ConnectionLimits(max_connections=guest_connection_cap(self.fd_limit))
        self.executor = executor
        self.clock = clock
        # Request buckets refill on this clock (tests stop it, so no bucket refills mid-test).
        self.monotonic = monotonic
        self.source_to_ordinal = source_to_ordinal or default_source_to_ordinal
        # The second lock beside the tap's filter (vacd.guestapi.linkidentity): does the source's
        # traffic come from that slot's tap? Not cached here: the check has its own short cache.
        self.link_check = link_check
        self.resolver = MachineResolver(paths, store, clock)
        # Session tokens (vacd.guestapi.tokens): the key lives as long as this server.
        self.tokens = SessionTokens(token_key if token_key is not None else new_key())
        self.heartbeats: dict[str, float] = {}
        self.counters: Counter[tuple[str, str, int]] = Counter()
        self.listening: list[Listening] = []
        self._wanted = [(METADATA, address) for address in metadata_addresses] + [
            (MJF, address) for address in mjf_addresses
        ]
        self._servers: dict[tuple[str, str], Acceptor] = {}
        self._connections: "weakref.WeakSet[GuestConnection]" = weakref.WeakSet()
        self._connection_count = 0
        self._ordinals: dict[str, Optional[int]] = {}
        self.slot_limiter = SlotLimiter(self.limits.requests_per_second_per_slot,
                                        float(self.limits.request_burst_per_slot))
        self.upload_memory = UploadMemory(self.limits.max_upload_bytes_in_flight,
                                          self.limits.max_upload_bytes_in_flight_per_slot,
                                          self.limits.upload_reserve_bytes_per_slot)
        self.joboutputs_total = JoboutputsTotal()
        # One of several serving processes (vacd.guestapi.workers): its slots, and its part of
        # the joboutputs cap; None when this server serves every slot.
        self.shard = shard
        self._next_rescan = 0.0
        self._rate_refusals: Counter[int] = Counter()
        self._next_rate_log: dict[int, float] = {}
        self._upload_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._supervisor: Optional[asyncio.Task[None]] = None
        self._head_cache = HeadCache()
        self._deadlines = DeadlineSweep()
        self._date_second = -1
        self._date_text = ""
        self.accept_resource_failures = 0
        self._resource_failures_unlogged = 0
        self._next_resource_log = 0.0

    # Lifecycle
    async def start(self) -> None:
        """Bind every address that can be bound now; keep retrying the others."""
        log.info("guest server connection cap=%s per_slot=%s fd_limit=%s requests_per_second_per_slot=%s burst=%s",
                 self.limits.max_connections, self._connection_share(), self.fd_limit,
                 self.limits.requests_per_second_per_slot, self.limits.request_burst_per_slot)
        await self.rescan_joboutputs()
        for part, address in self._wanted:
            await self._try_bind(part, address)
        now = self.clock()
        for part in self._listening_parts():
            self.heartbeats[part] = now
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for uploads being written."""
        await cancel_and_wait(self._supervisor)
        self._supervisor = None
        servers = list(self._servers.values())
        self._servers.clear()
        self.listening = []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        pending = [connection.pending_task for connection in list(self._connections) if connection.pending_task]
        if pending:
            await asyncio.wait(pending, timeout=30.0)
        for connection in list(self._connections):
            connection.close_now()
        self._deadlines.close()

    def _on_accept_resource_failure(self, error: OSError) -> None:
        """Log accept()'s resource failures once per RESOURCE_LOG_SECONDS, with the count between."""
        self.accept_resource_failures += 1
        self._resource_failures_unlogged += 1
        now = time.monotonic()
        if now >= self._next_resource_log:
            log.warning("guest server cannot accept, out of resources: accepting paused for %.0fs "
                        "error=%s failures=%s connections=%s cap=%s fd_limit=%s next_report_in=%.0fs",
                        ACCEPT_RETRY_SECONDS, error.strerror or error, self._resource_failures_unlogged,
                        self._connection_count, self.limits.max_connections, self.fd_limit, RESOURCE_LOG_SECONDS)
            self._resource_failures_unlogged = 0
            self._next_resource_log = now + RESOURCE_LOG_SECONDS

    # ConnectionHandler
    def screen(self, part: str, source: str) -> bool:
        """Whether a connection just accepted may become one (vacd.guestapi.acceptor).

        Only the source's slot and the slot's share: the server-wide cap is left to `admit`,
        which runs after connections closing in the same loop turn have let go of it.
        """
        slot, status, reason = self._admission(source)
        if slot is None:
            self._refuse_connection(part, source, status, reason)
            return False
        return True

    def admit(self, part: str, source: str) -> Optional[int]:
        """The slot a new connection is served as, or None: identified before it is counted."""
        slot, status, reason = self._admission(source)
        if slot is None:
            return self._refuse_connection(part, source, status, reason)
        if self._connection_count >= self.limits.max_connections:
            return self._refuse_connection(part, source, 503, "server connection cap")
        self.slot_limiter.open_connection(slot, self.monotonic())
        self._connection_count += 1
        return slot

    def _admission(self, source: str) -> tuple[Optional[int], int, str]:
        """(slot, 0, "") if `source` is a slot with room for a connection, else (None, status, reason)."""
        slot = self._slot_of(source)
        if slot is None:
            return None, 404, "no slot"
        if self.slot_limiter.connection_count(slot) >= self._connection_share():
            return None, 503, f"slot {slot} at its connection share"
        return slot, 0, ""

    def connection_closed(self, slot: int) -> None:
        self._connection_count -= 1
        self.slot_limiter.close_connection(slot)

    def _refuse_connection(self, part: str, source: str, status: int, reason: str) -> Optional[int]:
        self.counters[(part, "connection", status)] += 1
        log.debug("guest connection refused part=%s source=%s reason=%s", part, source, reason)
        return None

    def _connection_share(self) -> int:
        return connection_share(self.limits.max_connections, self.limits.max_connections_per_slot,
                                self.settings_provider().num_machine_slots)

    def _note_rate_refusal(self, slot: int) -> None:
        """Count a refusal for the slot's rate; log the count once per RATE_LOG_SECONDS."""
        self._rate_refusals[slot] += 1
        now = self.monotonic()
        if now >= self._next_rate_log.get(slot, 0.0):
            # An admin should know: a guest is flooding its factory (or is broken).
            log.warning("guest slot over its request rate slot=%s requests_per_second=%s burst=%s refused=%s "
                        "next_report_in=%.0fs", slot, self.limits.requests_per_second_per_slot,
                        self.limits.request_burst_per_slot, self._rate_refusals[slot], RATE_LOG_SECONDS)
            self._rate_refusals[slot] = 0
            self._next_rate_log[slot] = now + RATE_LOG_SECONDS

    def on_rejected(self, part: str, source: str, status: int, reason: str) -> None:
        self.counters[(part, "rejected", status)] += 1
        log.debug("guest request refused part=%s source=%s status=%s reason=%s", part, source, status, reason)

    def date(self) -> str:
        second = int(self.clock())
        if second != self._date_second:
            self._date_second = second
            self._date_text = email.utils.formatdate(second, usegmt=True)
        return self._date_text

    def on_head(self, part: str, source: str, head: RequestHead) -> Union[Response, Upload]:
        self.heartbeats[part] = self.clock()
        slot = self._slot_of(source)
        retry_after = 0.0 if slot is None else self.slot_limiter.take(slot, self.monotonic())
        if slot is not None and retry_after > 0.0:
            self._note_rate_refusal(slot)
            # Held for as long as it tells the guest to wait (see the module's rules).
            seconds = max(1, math.ceil(retry_after))
            return self._counted(part, Response(429, b"over this machine's request rate\n", path_class="rate",
                                                headers=(("Retry-After", str(seconds)),), hold_seconds=seconds))
        machine = None if slot is None else self.resolver.machine_for(slot, self.settings_provider())
        if slot is None or machine is None:
            log.debug("guest request from no live machine part=%s source=%s", part, source)
            # Not a guest we serve: answer and drop the connection rather than keep it.
            return self._counted(part, Response(404, path_class="identity", close=True))
        method = head.method
        if part == METADATA and method == "PUT" and normalise_path(head.target) == TOKEN_PATH:
            return self._issue_token(part, machine, head)
        if method not in ("GET", "HEAD", "PUT") or (part == METADATA and method == "PUT"):
            allowed = "GET, HEAD" if part == METADATA else "GET, HEAD, PUT"
            return self._counted(part, Response(405, path_class="method", close=True, headers=(("Allow", allowed),)))
        if method == "PUT":
            return self._accept_upload(part, source, slot, machine, head)
        path = normalise_path(head.target)
        if path is None:
            return self._counted(part, Response(404, path_class="refused_path"))
        if part == METADATA:
            refused = self._token_refusal(path, machine, head)
            if refused is not None:
                return self._counted(part, refused)
            response = metadata_response(path, machine)
        else:
            response = features_response(path, machine)
        log.debug(
            "guest request part=%s machine=%s path=%s status=%s", part, machine.record.name, path, response.status
        )
        return self._counted(part, response)

    # Session tokens (issue 11 item 3): the token itself is never logged.
    def _issue_token(self, part: str, machine: GuestMachine, head: RequestHead) -> Response:
        holder = TokenHolder(machine.record.ordinal, machine.record.uuid)
        response = self.tokens.answer_put(head.headers, holder, self.clock())
        if response.status == 200:
            log.debug("metadata token issued machine=%s", machine.record.name)
        else:
            log.info("metadata token refused machine=%s status=%s reason=%s",
                     machine.record.name, response.status, response.body.decode().strip())
        return self._counted(part, response)

    def _token_refusal(self, path: str, machine: GuestMachine, head: RequestHead) -> Optional[Response]:
        mode = self.settings_provider().metadata_tokens
        if not is_needed(token_need(path), mode):
            return None  # most requests: cloud-init's paths, when tokens are optional
        holder = TokenHolder(machine.record.ordinal, machine.record.uuid)
        refused = self.tokens.refusal(path, head.headers, mode, holder, self.clock())
        if refused is None:
            return None
        # A token shown and refused is worth an admin's eye; a guest that sent none is not.
        level = logging.DEBUG if refused.reason == TOKEN_REQUIRED else logging.INFO
        log.log(level, "metadata request refused machine=%s path=%s status=%s reason=%s",
                machine.record.name, path, refused.status, refused.reason)
        return Response(refused.status, f"{refused.reason}\n".encode(), path_class="token")

    # Uploads ($JOBOUTPUTS, §6.3, §6.7)
    def _accept_upload(
        self, part: str, source: str, slot: int, machine: GuestMachine, head: RequestHead
    ) -> Union[Response, Upload]:
        upload = upload_name(head.target)
        if isinstance(upload, RefusedUpload):
            # An admin should know: a guest's output is lost (Vac answered 403 too, silently).
            log.warning("joboutputs upload refused machine=%s target=%s reason=%s",
                        machine.record.name, safe_repr(upload.sent), upload.reason)
            body = f"refused: {upload.reason}\n".encode()
            return self._counted(part, Response(403, body, path_class="refused_path", close=True))
        name = upload.name
        length = head.content_length
        if length is None:
            return self._counted(part, Response(411, path_class="joboutputs", close=True))
        settings = self.settings_provider()
        if length > self.limits.max_body_bytes:
            problem: Optional[str] = f"body of {length} bytes, at most {self.limits.max_body_bytes}"
        else:
            current = usage(machine.directory / "joboutputs")
            problem = usage_problem(current, name, length, settings.joboutputs_quota_bytes)
            if problem is None and not (name == SHUTDOWN_MESSAGE_FILE and length <= MAX_SHUTDOWN_MESSAGE_BYTES):
                problem = self.joboutputs_total.refusal(
                    machine.directory, bytes_after(current, name, length), self.upload_memory.total,
                    self._joboutputs_cap(settings)) or None
        if problem is not None:
            log.warning("joboutputs upload refused machine=%s name=%s reason=%s",
                        machine.record.name, safe_repr(name), problem)
            return self._counted(part, Response(413, path_class="joboutputs", close=True))
        deferred = self.upload_memory.refusal(slot, length)
        if deferred:
            log.warning("joboutputs upload deferred machine=%s name=%s bytes=%s reason=%s retry_in=10s",
                        machine.record.name, safe_repr(name), length, deferred)
            return self._counted(part, Response(503, path_class="joboutputs", close=True, headers=(("Retry-After", "10"),)))
        self.upload_memory.hold(slot, length)
        return Upload(
            length=length,
            complete=partial(self._complete_upload, part, source, machine, name),
            release=partial(self.upload_memory.release, slot, length),
        )

    async def _complete_upload(self, part: str, source: str, machine: GuestMachine, name: str, body: bytes) -> Response:
        current = self._machine_of(source)
        if current is None or current.record.uuid != machine.record.uuid:
            return self._counted(part, Response(404, path_class="identity"))
        key = str(machine.directory)
        lock, users = self._upload_locks.get(key, (asyncio.Lock(), 0))
        self._upload_locks[key] = (lock, users + 1)
        try:
            async with lock:
                quota_bytes = self.settings_provider().joboutputs_quota_bytes
                now = int(self.clock())
                held_after = await asyncio.get_running_loop().run_in_executor(
                    self.executor, store_upload, machine.directory / "joboutputs", name, body, now, quota_bytes,
                    # The receipt that lets this machine's message back the space off (issue 11 item 4):
                    # `source` was just resolved to this slot's current machine, this UUID.
                    Sender(machine.record.uuid, source),
                )
                self.joboutputs_total.set_machine(machine.directory, held_after)
        except QuotaExceeded as error:
            log.warning("joboutputs upload refused machine=%s name=%s reason=%s",
                        machine.record.name, safe_repr(name), error)
            return self._counted(part, Response(413, path_class="joboutputs", close=True))
        except OSError as error:
            log.error("joboutputs write failed machine=%s name=%s error=%s",
                      machine.record.name, safe_repr(name), error)
            return self._counted(part, Response(500, path_class="joboutputs", close=True))
        finally:
            lock, users = self._upload_locks[key]
            if users <= 1:
                del self._upload_locks[key]
            else:
                self._upload_locks[key] = (lock, users - 1)
        if name == SHUTDOWN_MESSAGE_FILE:
            # Not a secret: the outcome code the whole space will see (§4.4).
            first_line = body.decode("utf-8", errors="replace").strip().splitlines()[:1]
            log.info(
                "shutdown message received machine=%s message=%r", machine.record.name, (first_line or [""])[0][:200]
            )
        else:
            log.debug("joboutputs received machine=%s name=%s bytes=%s",
                      machine.record.name, safe_repr(name), len(body))
        return self._counted(part, Response(201, path_class="joboutputs"))

    # Identity
    def _machine_of(self, source: str) -> Optional[GuestMachine]:
        slot = self._slot_of(source)
        if slot is None:
            return None
        return self.resolver.machine_for(slot, self.settings_provider())

    def _slot_of(self, source: str) -> Optional[int]:
        """The slot `source` is, once the link check agrees; None for any other source."""
        if source in self._ordinals:
            ordinal = self._ordinals[source]
        else:
            ordinal = self.source_to_ordinal(source)
            if len(self._ordinals) >= MAX_CACHED_SOURCES:
                self._ordinals.clear()
            self._ordinals[source] = ordinal
        if ordinal is None:
            return None
        if self.link_check is not None and not self.link_check(source, ordinal):
            return None
        return ordinal

    def _joboutputs_cap(self, settings: Settings) -> int:
        if self.shard is None:
            return settings.joboutputs_total_bytes
        return self.shard.joboutputs_cap(settings.joboutputs_total_bytes)

    async def rescan_joboutputs(self) -> None:
        """Recount every machine's joboutputs on the thread pool (the running total's safety net)."""
        self._next_rescan = time.monotonic() + RESCAN_SECONDS
        shard = self.shard
        # A shard counts the directories of its own slots' machines, against its part of the cap.
        keep = None if shard is None else partial(shard.holds_directory, self.store)
        try:
            totals = await asyncio.get_running_loop().run_in_executor(
                self.executor, partial(scan, self.paths.machines_dir, keep))
        except OSError as error:
            log.warning("cannot recount joboutputs error=%s retry_in=%.0fs", error, RESCAN_SECONDS)
            return
        self.joboutputs_total.replace_all(totals)

    def _counted(self, part: str, response: Response) -> Response:
        self.counters[(part, response.path_class, response.status)] += 1
        return response

    # Listeners
    def adopt(self, part: str, listening_socket: socket.socket) -> None:
        """Serve `part` on a socket already listening (a steered group's, vacd.guestapi.workers)."""
        listening_socket.setblocking(False)
        self._add_acceptor(part, listening_socket, f"fd{listening_socket.fileno()}")
        self.heartbeats.setdefault(part, self.clock())

    async def _try_bind(self, part: str, address: str) -> bool:
        try:
            listening_socket = _listening_socket(address, self.port)
        except OSError as error:
            log.error(
                "guest server cannot listen part=%s address=%s port=%s error=%s retry_in=%ss",
                part,
                address,
                self.port,
                error,
                BIND_RETRY_SECONDS,
            )
            return False
        self._add_acceptor(part, listening_socket, address)
        return True

    def _add_acceptor(self, part: str, listening_socket: socket.socket, key: str) -> None:
        self._servers[(part, key)] = Acceptor(
            listening_socket, partial(self._new_connection, part), partial(self.screen, part),
            self._on_accept_resource_failure)
        host, port = listening_socket.getsockname()[:2]
        self.listening.append(Listening(part, str(host), int(port)))
        log.info("guest server listening part=%s address=%s port=%s", part, host, port)

    def _new_connection(self, part: str, source: str, sock: socket.socket) -> GuestConnection:
        connection = GuestConnection(part, self, self.limits, self._head_cache, self._deadlines, source, sock)
        self._connections.add(connection)
        return connection

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(min(BIND_RETRY_SECONDS, HEARTBEAT_SECONDS))
            for part, address in self._wanted:
                if (part, address) not in self._servers:
                    await self._try_bind(part, address)
            now = self.clock()
            for part in self._listening_parts():
                self.heartbeats[part] = max(self.heartbeats.get(part, 0.0), now)
            self.slot_limiter.forget_idle(self.monotonic())
            if time.monotonic() >= self._next_rescan:
                await self.rescan_joboutputs()

    def _listening_parts(self) -> set[str]:
        return {part for part, _address in self._servers}


def _listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking listening socket on `address` (`fe80::a9fe:a9fe%br0` for link-local)."""
    family, socket_type, protocol, _name, socket_address = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    listening_socket = socket.socket(family, socket_type, protocol)
    try:
        listening_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listening_socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            listening_socket.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        except OSError as error:
            log.debug("IP_FREEBIND unavailable address=%s error=%s", address, error)
        listening_socket.bind(socket_address)
        listening_socket.listen(LISTEN_BACKLOG)
        listening_socket.setblocking(False)
    except BaseException:
        listening_socket.close()
        raise
    return listening_socket
