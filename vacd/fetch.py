"""The one HTTP(S) client of vacd: vacuum pipes, user_data templates and root images (issue 8 item 6).

Rules:
- TLS is verified against /etc/grid-security/certificates (under the prefix) when that
  directory exists, else against the system CA bundle; redirects are followed; the user
  agent is `Vac <version>` (MANAGER_VERSION), as Vac 03 sent (behaviour reference §1.12, §8).
- Every fetch has a TOTAL deadline, not only a per-read timeout: a server that drips one
  byte a second, in its headers or its body, is cut off at the deadline. A watchdog timer
  shuts the fetch's sockets down at the deadline, which wakes a read blocked in any layer
  (http.client's header parser, urllib3, OpenSSL), and the body loop checks the clock
  between chunks as well. (A TCP connect in progress has no socket to shut down yet; it is
  bounded by its own timeout, which is the deadline.)
- Every fetch has a size cap: a Content-Length above it is refused before the body is read,
  and a body that grows past it is cut. The cap counts decoded bytes (a gzip bomb is cut).
- Every failure (unreachable, TLS, HTTP status, deadline, cap) is one FetchError naming the
  URL, the reason and the elapsed time. Errors of our own disk (writing an image) are not
  fetch errors: they propagate as OSError.
- A file is streamed through vacd.atomicfile.atomic_replace, so a cut or failed download
  never leaves a partial file under its final name.
- Each fetch uses its own requests.Session (no connection reuse), so concurrent fetches from
  the pipe thread, the image pool and creation threads share no state but the abort list.
- A fetch for a vacuum pipe's machinetype (`public_only`) connects only to global addresses:
  every connection, redirects included, is checked for the address it reached, after the
  name was resolved. vacd.pipes refuses URLs that name a private host, but a public name can
  resolve to 127.0.0.1, 169.254.169.254 or a site address (DNS rebinding), and vacd hands
  what it fetched to the VO's guest. Through a proxy the check is the proxy's: vacd reaches
  only the proxy, which the site chose.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import http.client
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager
from urllib3.poolmanager import pool_classes_by_scheme as DEFAULT_POOL_CLASSES

from vacd import MANAGER_VERSION
from vacd.atomicfile import atomic_replace
from vacd.errors import VacError

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """How long one fetch may take in all (connect, headers, redirects, body) and how big it may be."""

    deadline_seconds: float
    max_bytes: int

    def __post_init__(self) -> None:
        if not self.deadline_seconds > 0 or self.max_bytes <= 0:
            raise ValueError(f"fetch limits must be positive: {self}")


# Vacuum pipes are a few kilobytes (the largest GridPP pipe is under 20 KiB); 1 MiB bounds what a
# misbehaving server can make us parse. Vac 03 used a 30 s timeout (Appendix C): now a total deadline.
PIPE_LIMITS = FetchLimits(deadline_seconds=30.0, max_bytes=1 * MIB)
# user_data templates: Nova refuses user_data over 64 KiB, real templates are a few KiB; same 30 s as Vac.
USER_DATA_LIMITS = FetchLimits(deadline_seconds=30.0, max_bytes=1 * MIB)
# Root images: CernVM ISOs are ~20 MiB, vm-raw disk images a few GiB. 30 min covers 20 GiB at ~12 MB/s;
# Vac 03's 120 s per-read timeout let a dripping server hold a creation forever.
IMAGE_LIMITS = FetchLimits(deadline_seconds=30 * 60.0, max_bytes=20 * 1024 * MIB)

CHUNK_BYTES = 64 * 1024
FILE_CHUNK_BYTES = 1 * MIB

# What the network (not our disk) can raise while a response is read; http.client and ValueError
# appear when a socket is shut down under OpenSSL or the header parser by the watchdog.
NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
                  ValueError)


class FetchError(VacError):
    """A URL could not be fetched within its deadline and cap; names the URL, the reason and the time taken."""

    def __init__(self, url: str, reason: str, elapsed_seconds: float) -> None:
        self.url = url
        self.reason = reason
        self.elapsed_seconds = elapsed_seconds
        super().__init__(f"{url}: {reason} (after {elapsed_seconds:.1f} s)")


@dataclass(frozen=True)
class FetchedFile:
    """A file written by Fetcher.fetch_to_file: its size, SHA-256 and the server's Last-Modified (epoch s), if sent."""

    path: Path
    size_bytes: int
    last_modified: Optional[float]
    # Hashed as the body streams in (no second read): the image cache logs it, so an admin can
    # copy it into root_image_sha256 (issue 11 item 1).
    sha256: str = ""


class _Deadline:
    """Shuts down the sockets of one fetch when its time is up, or when vacd stops (abort)."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._connections: list[object] = []  # urllib3 connections, watched from checkout
        self.reason: Optional[str] = None
        self._timer = threading.Timer(seconds, self.expire, args=(f"deadline of {seconds:g} s exceeded",))
        self._timer.daemon = True
        self._timer.name = "vacd-fetch-deadline"

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    @property
    def has_expired(self) -> bool:
        return self.reason is not None

    def watch(self, connection: object) -> None:
        with self._lock:
            self._connections.append(connection)
            expired = self.has_expired
        if expired:
            _shut_down(connection)

    def expire(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            connections = list(self._connections)
        for connection in connections:
            _shut_down(connection)


def _shut_down(connection: object) -> None:
    # shutdown(), unlike close(), wakes a recv() blocked in another thread (Linux). `sock` is read
    # now, not at checkout: a connection gets its socket in connect(), and TLS replaces it.
    sock = getattr(connection, "sock", None)
    if not isinstance(sock, socket.socket):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to wake


class _CheckedHTTPConnection(HTTPConnection):
    """An HTTP connection that lets its fetch check the address it reached before using it."""

    peer_check: Optional[Callable[[socket.socket], None]] = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()
        _check_peer(self.peer_check, sock)
        return sock


class _CheckedHTTPSConnection(HTTPSConnection):
    """The same for HTTPS: checked after the TCP connect, before the TLS handshake."""

    peer_check: Optional[Callable[[socket.socket], None]] = None

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()
        _check_peer(self.peer_check, sock)
        return sock


def _check_peer(peer_check: Optional[Callable[[socket.socket], None]], sock: socket.socket) -> None:
    if peer_check is None:
        return
    try:
        peer_check(sock)
    except BaseException:
        sock.close()
        raise


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection

    def __init__(self, *args: Any, fetch: _Fetch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch = fetch

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        connection = super()._get_conn(timeout)
        self._fetch.watch(connection, through_proxy=self.proxy is not None)
        return connection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection

    def __init__(self, *args: Any, fetch: _Fetch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch = fetch

    def _get_conn(self, timeout: Optional[float] = None) -> Any:
        connection = super()._get_conn(timeout)
        self._fetch.watch(connection, through_proxy=self.proxy is not None)
        return connection


class _DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose every connection (redirects and proxies included) is watched by one fetch."""

    def __init__(self, fetch: _Fetch) -> None:
        self._fetch = fetch  # before super().__init__, which calls init_poolmanager
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._watch(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        self._watch(manager)
        return manager

    def _watch(self, manager: PoolManager) -> None:
        # A SOCKS proxy manager brings its own pools; it keeps them and only the body loop's clock check.
        if manager.pool_classes_by_scheme is DEFAULT_POOL_CLASSES:
            manager.pool_classes_by_scheme = {
                "http": functools.partial(_WatchedHTTPPool, fetch=self._fetch),  # type: ignore[dict-item]
                "https": functools.partial(_WatchedHTTPSPool, fetch=self._fetch),  # type: ignore[dict-item]
            }


class _Fetch:
    """One GET in progress: its URL, start time, deadline watchdog, limits and address rule."""

    def __init__(self, url: str, limits: FetchLimits, clock: Callable[[], float], public_only: bool = False) -> None:
        self.url = url
        self.limits = limits
        self.clock = clock
        self.public_only = public_only
        self.started = clock()
        self.deadline = _Deadline(limits.deadline_seconds)
        self.refusal: Optional[str] = None

    def watch(self, connection: Any, *, through_proxy: bool) -> None:
        """Put a connection taken from a pool under this fetch's deadline and address rule."""
        if self.public_only and not through_proxy and isinstance(connection, (HTTPConnection, HTTPSConnection)):
            connection.peer_check = self.check_peer  # type: ignore[attr-defined]
        self.deadline.watch(connection)

    def check_peer(self, sock: socket.socket) -> None:
        """Refuse a connection that reached an address that is not global (see the module rules)."""
        host = str(sock.getpeername()[0]).partition("%")[0]
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            self.refusal = (f"the host resolved to {address}, which is not a global address: a vacuum pipe's "
                            f"URL must name a public host")
            raise ConnectionRefusedError(self.refusal)

    def error(self, reason: str) -> FetchError:
        return FetchError(self.url, reason, self.clock() - self.started)

    def failure(self, error: BaseException) -> FetchError:
        """The FetchError for a network exception: the deadline's or the address rule's reason if it caused it."""
        if self.deadline.reason is not None:
            return self.error(self.deadline.reason)
        if self.refusal is not None:
            return self.error(self.refusal)
        return self.error(str(error) or type(error).__name__)

    def check(self, received_bytes: int) -> None:
        if self.deadline.reason is not None or self.clock() - self.started > self.limits.deadline_seconds:
            raise self.error(self.deadline.reason or f"deadline of {self.limits.deadline_seconds:g} s exceeded")
        if received_bytes > self.limits.max_bytes:
            raise self.error(f"larger than the cap of {self.limits.max_bytes} bytes")

    def body(self, response: requests.Response, chunk_bytes: int) -> Iterator[bytes]:
        """The decoded body in chunks, cut at the deadline or the cap."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise self.error(f"Content-Length {declared} is larger than the cap of {self.limits.max_bytes} bytes")
        received = 0
        chunks = response.iter_content(chunk_bytes)
        while True:
            try:
                chunk = next(chunks, None)
            except NETWORK_ERRORS as error:
                raise self.failure(error) from error
            # A socket shut down by the watchdog may read as a clean end of a body without Content-Length.
            self.check(received)
            if chunk is None:
                return
            received += len(chunk)
            self.check(received)
            yield chunk


class Fetcher:
    """GETs URLs with a total deadline and a size cap; thread-safe. `abort_all` cuts every fetch in progress."""

    def __init__(self, certificates_dir: Path, *, user_agent: str = MANAGER_VERSION,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.certificates_dir = certificates_dir
        self.user_agent = user_agent
        self.clock = clock
        self._lock = threading.Lock()
        self._active: set[_Deadline] = set()

    def fetch_bytes(self, url: str, limits: FetchLimits, *, public_only: bool = False) -> bytes:
        """The body of a 200 answer to GET `url`; with `public_only`, from global addresses only.

        Raises:
            FetchError: unreachable, TLS refused, not 200, past the deadline or larger than the cap,
                or (`public_only`) a connection reached an address that is not global.
        """
        with self._get(url, limits, {}, public_only) as (fetch, response):
            if response.status_code != 200:
                raise fetch.error(f"HTTP {response.status_code}")
            return b"".join(fetch.body(response, CHUNK_BYTES))

    def fetch_to_file(self, url: str, target: Path, limits: FetchLimits, *, modified_since: Optional[float] = None,
                      require_last_modified: bool = False, mode: int = 0o644,
                      public_only: bool = False) -> Optional[FetchedFile]:
        """Stream GET `url` into `target` (atomically, mtime = Last-Modified); None if not modified since.

        `modified_since` (epoch s) is sent as If-Modified-Since, and a 304 answer returns None with
        `target` untouched. With `require_last_modified`, a 200 without a valid Last-Modified is refused
        before anything is written.

        Raises:
            FetchError: as fetch_bytes; `target` is untouched and no temp file is left beside it.
            OSError: `target` could not be written (our disk, not the server).
        """
        headers = {}
        if modified_since is not None:
            headers["If-Modified-Since"] = email.utils.formatdate(modified_since, usegmt=True)
        with self._get(url, limits, headers, public_only) as (fetch, response):
            if response.status_code == 304 and modified_since is not None:
                return None
            if response.status_code != 200:
                raise fetch.error(f"HTTP {response.status_code}")
            last_modified = parse_http_date(response.headers.get("Last-Modified"))
            if last_modified is None and require_last_modified:
                raise fetch.error("the server sent no valid Last-Modified header")
            target.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            digest = hashlib.sha256()
            with atomic_replace(target, mode=mode, mtime=last_modified) as temp_file:
                for chunk in fetch.body(response, FILE_CHUNK_BYTES):
                    temp_file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        return FetchedFile(target, size, last_modified, digest.hexdigest())

    def abort_all(self, reason: str = "vacd is stopping") -> None:
        """Cut every fetch in progress now (each raises FetchError with `reason`)."""
        with self._lock:
            active = list(self._active)
        for deadline in active:
            deadline.expire(reason)

    @contextlib.contextmanager
    def _get(self, url: str, limits: FetchLimits, headers: Mapping[str, str],
             public_only: bool = False) -> Iterator[tuple[_Fetch, requests.Response]]:
        fetch = _Fetch(url, limits, self.clock, public_only)
        verify: Union[bool, str] = str(self.certificates_dir) if self.certificates_dir.is_dir() else True
        with self._lock:
            self._active.add(fetch.deadline)
        fetch.deadline.start()
        try:
            with requests.Session() as session:
                session.mount("http://", _DeadlineAdapter(fetch))
                session.mount("https://", _DeadlineAdapter(fetch))
                session.headers["User-Agent"] = self.user_agent
                try:
                    # The per-read timeout only bounds a silent server; the watchdog bounds the total.
                    response = session.get(url, headers=dict(headers), timeout=limits.deadline_seconds,
                                           verify=verify, stream=True, allow_redirects=True)
                except NETWORK_ERRORS as error:
                    raise fetch.failure(error) from error
                with response:
                    yield fetch, response
        finally:
            fetch.deadline.cancel()
            with self._lock:
                self._active.discard(fetch.deadline)
        log.debug("fetched url=%s seconds=%.1f", url, self.clock() - fetch.started)


def parse_http_date(text: Optional[str]) -> Optional[float]:
    """An HTTP date header as epoch seconds, or None if absent or unparsable."""
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
