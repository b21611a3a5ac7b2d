"""Fetch vacuum pipe documents into the pipes cache, in the background, and read them back (§8).

Rules kept from Vac 03 (behaviour reference §8):
- Each `[vacuum_pipe PREFIX]` document is cached as `pipescache/PREFIX.pipe`.
- Only the factory fetches (`may_fetch`); other readers use the cache.
- A fetch is due when the cached copy is older than the document's `cache_seconds`
  (default 3600; 0 means at every pass) and the URL is http(s). Redirects are followed,
  TLS is verified against /etc/grid-security/certificates when that exists, the user agent
  is `Vac <version>` (vacd.fetch).
Improvements:
- A failed fetch keeps using the cached copy (acceptance 6); Vac 03 dropped the pipe's
  machinetypes until the next good fetch. A document that is not a JSON object, or is
  larger than PIPE_LIMITS.max_bytes, is a failed fetch and never replaces a good cache.
- A document is decoded strictly (issue 11 item 2): an object with a key given twice (which
  JSON parsers resolve differently), an integer of more than MAX_JSON_INTEGER_DIGITS digits
  (Python 3.9 converts them in quadratic time) or nesting too deep to decode is a bad
  document. The cache is read with the same size cap as a fetch. vacd.pipes then validates
  every value.
- Nothing here blocks the caller on the network (issue 8 item 6): the reconcile loop only
  reads the cache; a due fetch runs on the fetcher's own thread with a total deadline
  (PIPE_LIMITS), and a completed refresh calls `on_refreshed` (the factory's wake) so the
  next pass sees the new machinetypes at once. Vac 03 fetched inline, so a pipe server
  that never answered cost the timeout on every cycle.
- A failed fetch backs off per pipe (60 s doubling to 30 min) instead of being retried at
  every pass; a good fetch, or a changed URL, starts again from no backoff.
The cache's age is its modification time: vacd writes the file itself, atomically.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from vacd.atomicfile import write_atomic
from vacd.backoff import doubling_delay
from vacd.config import Config, VacuumPipe
from vacd.errors import VacError
from vacd.fetch import PIPE_LIMITS, Fetcher, FetchLimits
from vacd.paths import Paths
from vacd.pipes import apply_pipes, pipe_cache_seconds

log = logging.getLogger(__name__)

# A failed pipe is retried after 60 s, then 120 s, ... up to 30 min: quick to recover from a
# brief outage, gentle on a VO's server that is down for hours (the cached copy serves meanwhile).
RETRY_FIRST_SECONDS = 60.0
RETRY_MAX_SECONDS = 1800.0


# No pipe option needs more digits (vacd.configini takes at most 30).
MAX_JSON_INTEGER_DIGITS = 30


class BadPipeDocument(VacError):
    """The server answered, but not with a JSON object vacd will read."""


@dataclass(frozen=True)
class PipeRetry:
    """When a pipe that failed `failures` times in a row may be fetched again (monotonic seconds)."""

    failures: int
    retry_time: float


class PipeFetcher:
    """Keeps each pipe's document fresh in the cache from a background thread, no more often than it asks.

    Thread-safe: `documents`/`apply` run on the reconcile loop (or any reader) and only read the
    cache and start refreshes; the refreshes run on one thread owned by this object.
    """

    def __init__(self, paths: Paths, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, fetcher: Optional[Fetcher] = None,
                 limits: FetchLimits = PIPE_LIMITS, on_refreshed: Optional[Callable[[], None]] = None) -> None:
        self.paths = paths
        self.clock = clock  # wall clock, compared with the cache file's mtime
        self.monotonic = monotonic  # for backoff, immune to wall-clock jumps (issue 8 item 11)
        self.fetcher = fetcher or Fetcher(paths.certificates_dir)
        self.limits = limits
        self.on_refreshed = on_refreshed
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: set[tuple[str, str]] = set()
        self._retries: dict[tuple[str, str], PipeRetry] = {}
        self._worker: Optional[ThreadPoolExecutor] = None  # started at the first refresh
        self._closed = False

    def cache_file(self, pipe: VacuumPipe) -> Path:
        return self.paths.pipescache_dir / f"{pipe.prefix}.pipe"

    def documents(self, config: Config, *, may_fetch: bool) -> dict[str, Mapping[str, Any]]:
        """Prefix -> cached pipe document, for every pipe with a usable cache; never waits for the network.

        With `may_fetch`, a refresh is started in the background for each pipe that is due and
        not backing off; its result is in the cache for a later call.
        """
        found: dict[str, Mapping[str, Any]] = {}
        for pipe in config.vacuum_pipes:
            cached = self._read_cache(pipe)
            if may_fetch and self._is_due(pipe, cached):
                self._start_refresh(pipe)
            if cached is not None:
                found[pipe.prefix] = cached
        return found

    def apply(self, config: Config, *, may_fetch: bool) -> Config:
        """The configuration with every cached pipe's machinetypes added."""
        if not config.vacuum_pipes:
            return config
        return apply_pipes(config, self.documents(config, may_fetch=may_fetch))

    def retry_state(self, pipe: VacuumPipe) -> Optional[PipeRetry]:
        """The backoff of a pipe whose last fetch failed, or None."""
        with self._lock:
            return self._retries.get((pipe.prefix, pipe.url))

    def wait_for_refreshes(self, timeout_seconds: float = 60.0) -> bool:
        """Block until no refresh is running (tests, orderly stops); False if the timeout passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._in_flight, timeout_seconds)

    def close(self) -> None:
        """Stop refreshing: a fetch in progress is cut, none is started again."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is not None:
            worker.shutdown(wait=False, cancel_futures=True)
        self.fetcher.abort_all()

    def _is_due(self, pipe: VacuumPipe, cached: Optional[Mapping[str, Any]]) -> bool:
        if not pipe.url.startswith(("http://", "https://")):
            return False
        if cached is None:
            return True
        try:
            age = self.clock() - self.cache_file(pipe).stat().st_mtime
        except OSError:
            return True
        return age >= pipe_cache_seconds(cached)

    def _start_refresh(self, pipe: VacuumPipe) -> None:
        key = (pipe.prefix, pipe.url)
        with self._lock:
            if self._closed or key in self._in_flight:
                return
            retry = self._retries.get(key)
            if retry is not None and self.monotonic() < retry.retry_time:
                return
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vacd-pipes")
            self._in_flight.add(key)
            self._worker.submit(self._refresh, pipe)

    def _refresh(self, pipe: VacuumPipe) -> None:
        key = (pipe.prefix, pipe.url)
        try:
            document = self._fetch(pipe)
        except Exception as error:  # boundary: FetchError, BadPipeDocument, or OSError writing the cache
            with self._lock:
                previous = self._retries.get(key)
                failures = 1 if previous is None else previous.failures + 1
                delay = doubling_delay(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, failures - 1)
                self._retries[key] = PipeRetry(failures, self.monotonic() + delay)
                self._in_flight.discard(key)
                self._idle.notify_all()
            log.warning("vacuum pipe fetch failed prefix=%s url=%s error=%s failures=%d retry_in=%ds; "
                        "using the cached copy if any", pipe.prefix, pipe.url, error, failures, delay)
            return
        with self._lock:
            self._retries.pop(key, None)
            self._in_flight.discard(key)
            self._idle.notify_all()
        entries = document.get("machinetypes")
        log.info("vacuum pipe fetched prefix=%s url=%s machinetypes=%d", pipe.prefix, pipe.url,
                 len(entries) if isinstance(entries, list) else 0)
        if self.on_refreshed is not None:
            try:
                self.on_refreshed()
            except Exception:  # boundary: a failing wake must not stop later refreshes
                log.exception("vacuum pipe refreshed, but waking the factory failed prefix=%s", pipe.prefix)

    def _read_cache(self, pipe: VacuumPipe) -> Optional[Mapping[str, Any]]:
        try:
            with self.cache_file(pipe).open("rb") as cache:
                raw_bytes = cache.read(self.limits.max_bytes + 1)
        except OSError:
            return None
        try:
            if len(raw_bytes) > self.limits.max_bytes:
                raise BadPipeDocument(f"larger than {self.limits.max_bytes} bytes")
            return parse_pipe_document(raw_bytes)
        except BadPipeDocument as error:
            log.warning("vacuum pipe cache unusable prefix=%s file=%s error=%s", pipe.prefix,
                        self.cache_file(pipe), error)
            return None

    def _fetch(self, pipe: VacuumPipe) -> Mapping[str, Any]:
        body = self.fetcher.fetch_bytes(pipe.url, self.limits)
        try:
            document = parse_pipe_document(body)
        except BadPipeDocument as error:
            raise BadPipeDocument(f"{pipe.url}: {error}") from None
        self.paths.pipescache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.cache_file(pipe), json.dumps(document, indent=1, sort_keys=True) + "\n")
        return document


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BadPipeDocument(f"key {key[:60]!r} given twice in one object")
        seen.add(key)
    return dict(pairs)


def _bounded_integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise BadPipeDocument(f"an integer of {len(text)} digits")
    return int(text)


def parse_pipe_document(raw_bytes: bytes) -> Mapping[str, Any]:
    """A pipe document decoded strictly (see the module's rules); raises BadPipeDocument."""
    try:
        document = json.loads(raw_bytes.decode("utf-8", errors="replace"),
                              object_pairs_hook=_object_without_repeated_keys, parse_int=_bounded_integer)
    except RecursionError:
        raise BadPipeDocument("nested too deeply") from None
    except ValueError as error:
        raise BadPipeDocument(f"not JSON: {str(error)[:80]}") from None
    if not isinstance(document, dict):
        raise BadPipeDocument("not a JSON object")
    return document
