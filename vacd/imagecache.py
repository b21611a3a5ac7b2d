"""Remote root images, cached under /var/lib/vac/imagecache (behaviour reference §1.12).

Rules kept from Vac 03:
- The cache file is `imagecache/<URL quoted with no safe characters>`, its mtime the
  server's Last-Modified.
- Every creation asks the server with If-Modified-Since = that mtime (so a site that
  publishes a new image gets it at the next creation); 304 keeps the cached copy; a 200
  must carry Last-Modified; 120 s timeout, redirects followed, TLS verified against
  /etc/grid-security/certificates when present, user agent `Vac <version>`.
Improvement: if the server cannot be reached but a cached copy exists, the cached copy is
used (with a warning) instead of failing the creation. Downloads go to a temp file in
the cache directory and are renamed into place only when complete, so a crash never
leaves a truncated image that looks valid. Only one download of a URL runs at a time.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import urllib.parse
from pathlib import Path
from typing import Optional

import requests

from vacd import MANAGER_VERSION
from vacd.atomicfile import atomic_replace
from vacd.errors import VacError
from vacd.paths import Paths

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 120
CHUNK_BYTES = 1024 * 1024


class ImageFetchError(VacError):
    pass


class ImageCache:
    """Fetches http(s) root images on demand; thread-safe (creations run on a pool)."""

    def __init__(self, paths: Paths, session: Optional[requests.Session] = None) -> None:
        self.paths = paths
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = MANAGER_VERSION
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def path_for(self, url: str) -> Path:
        return self.paths.imagecache_dir / urllib.parse.quote(url, safe="")

    def fetch(self, url: str) -> Path:
        """The local copy of `url`, refreshed if the server has a newer one."""
        with self._locks_lock:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:
            return self._fetch(url)

    def _fetch(self, url: str) -> Path:
        cached = self.path_for(url)
        headers = {}
        if cached.exists():
            headers["If-Modified-Since"] = email.utils.formatdate(cached.stat().st_mtime, usegmt=True)
        verify: "bool | str" = str(self.paths.certificates_dir) if self.paths.certificates_dir.is_dir() else True
        try:
            response = self.session.get(url, headers=headers, timeout=FETCH_TIMEOUT_SECONDS, verify=verify,
                                        stream=True, allow_redirects=True)
        except requests.RequestException as error:
            if cached.exists():
                log.warning("image server unreachable, using the cached image url=%s error=%s", url, error)
                return cached
            raise ImageFetchError(f"{url}: {error}") from error
        with response:
            if response.status_code == 304 and cached.exists():
                return cached
            if response.status_code != 200:
                if cached.exists():
                    log.warning("image server answered %s, using the cached image url=%s", response.status_code, url)
                    return cached
                raise ImageFetchError(f"{url}: HTTP {response.status_code}")
            last_modified = response.headers.get("Last-Modified")
            modified_time = _parse_http_date(last_modified)
            if modified_time is None:
                # Vac required it: without it the next creation could not ask If-Modified-Since.
                raise ImageFetchError(f"{url}: the server sent no valid Last-Modified header")
            self._download(url, response, cached, modified_time)
        return cached

    def _download(self, url: str, response: requests.Response, target: Path, modified_time: float) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with atomic_replace(target, mtime=modified_time) as temp_file:
            for chunk in response.iter_content(CHUNK_BYTES):
                temp_file.write(chunk)
                size += len(chunk)
        log.info("image downloaded url=%s bytes=%d", url, size)


def _parse_http_date(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
