"""Fetch vacuum pipe documents into the pipes cache and read them back (§8, acceptance 6).

Rules kept from Vac 03 (behaviour reference §8):
- Each `[vacuum_pipe PREFIX]` document is cached as `pipescache/PREFIX.pipe`.
- Only the factory fetches (`may_fetch`); other readers use the cache.
- A fetch happens when the cached copy is older than the document's `cache_seconds`
  (default 3600; 0 fetches at every pass) and the URL is http(s): 30 s timeout, redirects
  followed, TLS verified against /etc/grid-security/certificates when that exists, user
  agent `Vac <version>`.
Improvement (acceptance 6): a failed fetch keeps using the cached copy; Vac 03 dropped the
pipe's machinetypes until the next good fetch. A document that is not a JSON object, or
is larger than MAX_PIPE_BYTES, is a failed fetch and never replaces a good cache.
The cache's age is its modification time: vacd writes the file itself, atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import requests

from vacd import MANAGER_VERSION
from vacd.atomicfile import write_atomic
from vacd.config import Config, VacuumPipe
from vacd.paths import Paths
from vacd.pipes import apply_pipes, pipe_cache_seconds

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 30
# Real pipes are a few kilobytes; this bounds what a misbehaving server can make us parse.
MAX_PIPE_BYTES = 1024 * 1024


class PipeFetcher:
    """Keeps each pipe's document fresh in the cache, fetching no more often than it asks."""

    def __init__(self, paths: Paths, *, clock: Callable[[], float] = time.time,
                 session: Optional[requests.Session] = None) -> None:
        self.paths = paths
        self.clock = clock
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = MANAGER_VERSION

    def cache_file(self, pipe: VacuumPipe) -> Path:
        return self.paths.pipescache_dir / f"{pipe.prefix}.pipe"

    def documents(self, config: Config, *, may_fetch: bool) -> dict[str, Mapping[str, Any]]:
        """Prefix -> pipe document, for every pipe with a fresh fetch or a usable cache."""
        found: dict[str, Mapping[str, Any]] = {}
        for pipe in config.vacuum_pipes:
            cached = self._read_cache(pipe)
            if may_fetch and self._is_due(pipe, cached):
                fetched = self._fetch(pipe)
                if fetched is not None:
                    cached = fetched
            if cached is not None:
                found[pipe.prefix] = cached
        return found

    def apply(self, config: Config, *, may_fetch: bool) -> Config:
        """The configuration with every pipe's machinetypes added."""
        if not config.vacuum_pipes:
            return config
        return apply_pipes(config, self.documents(config, may_fetch=may_fetch))

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

    def _read_cache(self, pipe: VacuumPipe) -> Optional[Mapping[str, Any]]:
        try:
            raw_text = self.cache_file(pipe).read_text()
        except OSError:
            return None
        return _parse(raw_text)

    def _fetch(self, pipe: VacuumPipe) -> Optional[Mapping[str, Any]]:
        verify: "bool | str" = True
        if self.paths.certificates_dir.is_dir():
            verify = str(self.paths.certificates_dir)
        try:
            response = self.session.get(pipe.url, timeout=FETCH_TIMEOUT_SECONDS, verify=verify, stream=True)
            response.raise_for_status()
            body = response.raw.read(MAX_PIPE_BYTES + 1, decode_content=True)
        except (requests.RequestException, OSError) as error:
            log.warning("vacuum pipe fetch failed prefix=%s url=%s error=%s; using the cached copy if any",
                        pipe.prefix, pipe.url, error)
            return None
        if len(body) > MAX_PIPE_BYTES:
            log.warning("vacuum pipe too large prefix=%s url=%s limit=%d bytes", pipe.prefix, pipe.url, MAX_PIPE_BYTES)
            return None
        document = _parse(body.decode("utf-8", errors="replace"))
        if document is None:
            log.warning("vacuum pipe is not a JSON object prefix=%s url=%s", pipe.prefix, pipe.url)
            return None
        self.paths.pipescache_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.cache_file(pipe), json.dumps(document, indent=1, sort_keys=True) + "\n")
        log.info("vacuum pipe fetched prefix=%s url=%s machinetypes=%d", pipe.prefix, pipe.url,
                 len(document.get("machinetypes") or []))
        return document


def _parse(raw_text: str) -> Optional[Mapping[str, Any]]:
    try:
        document = json.loads(raw_text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
