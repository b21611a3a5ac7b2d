"""Remote root images, cached under /var/lib/vac/imagecache (behaviour reference §1.12).

Rules kept from Vac 03:
- The cache file is `imagecache/<URL quoted with no safe characters>`, its mtime the
  server's Last-Modified.
- Every creation asks the server with If-Modified-Since = that mtime (so a site that
  publishes a new image gets it at the next creation); 304 keeps the cached copy; a 200
  must carry Last-Modified; redirects followed, TLS verified against
  /etc/grid-security/certificates when present, user agent `Vac <version>` (vacd.fetch).
Improvements:
- If the fetch fails in any way (unreachable, an error status, no Last-Modified, the deadline)
  but a cached copy exists, the cached copy is used (with a warning) instead of failing the
  creation.
- Downloads go through vacd.fetch (IMAGE_LIMITS: a total deadline and a size cap, where Vac
  03 had only a 120 s per-read timeout) into a temp file renamed into place when complete,
  so a crash never leaves a truncated image that looks valid.
- Downloads run on the cache's own bounded pool (issue 8 item 6), never on the factory's
  action pool: `prefetch` returns a future at once, so a slow image server occupies at most
  IMAGE_WORKERS image threads and never delays a hard destroy. One download of a URL runs at
  a time; a second request for it while it runs shares the first's future.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

from vacd.config import Machinetype
from vacd.fetch import IMAGE_LIMITS, FetchError, Fetcher, FetchLimits
from vacd.paths import Paths

log = logging.getLogger(__name__)

# Two downloads at once: enough to fetch a new kernel and its initrd together, few enough that a
# node's uplink (and the image server) is not flooded when many slots start at once.
IMAGE_WORKERS = 2


def remote_image_urls(machinetype: Machinetype) -> tuple[str, ...]:
    """The http(s) files a creation of `machinetype` needs, as vacd.machinespec picks them."""
    names = (machinetype.root_kernel, machinetype.root_initrd) if machinetype.root_kernel else (machinetype.root_image,)
    return tuple(name for name in names if name is not None and name.startswith(("http://", "https://")))


class ImageCache:
    """Fetches http(s) root images on its own bounded pool; thread-safe."""

    def __init__(self, paths: Paths, *, fetcher: Optional[Fetcher] = None, workers: int = IMAGE_WORKERS,
                 limits: FetchLimits = IMAGE_LIMITS) -> None:
        self.paths = paths
        self.fetcher = fetcher or Fetcher(paths.certificates_dir)
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vacd-image")
        self._lock = threading.Lock()
        self._downloads: dict[tuple[str, bool], Future[Path]] = {}

    def path_for(self, url: str) -> Path:
        return self.paths.imagecache_dir / urllib.parse.quote(url, safe="")

    def prefetch(self, urls: Iterable[str], *, public_only: bool = False) -> Future[dict[str, Path]]:
        """A future of URL -> local copy for every URL, refreshed on the image pool; returns at once.

        The future fails with FetchError if any URL has neither a fresh nor a cached copy.
        `public_only` (a vacuum pipe's machinetype): downloaded from global addresses only
        (vacd.fetch); a cached copy is still used when such a refresh is refused.
        """
        downloads = {url: self._download(url, public_only) for url in dict.fromkeys(urls)}
        combined: Future[dict[str, Path]] = Future()
        if not downloads:
            combined.set_result({})
            return combined
        remaining = [len(downloads)]
        lock = threading.Lock()

        def one_done(_: Future[Path]) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            try:
                combined.set_result({url: download.result() for url, download in downloads.items()})
            except BaseException as error:  # the first URL's failure is the creation's
                combined.set_exception(error)

        for download in downloads.values():
            download.add_done_callback(one_done)
        return combined

    def fetch(self, url: str, *, public_only: bool = False) -> Path:
        """The local copy of `url`, refreshed on the image pool; blocks the caller until it is there.

        Raises:
            FetchError: the image could not be fetched and no cached copy exists.
        """
        return self.prefetch([url], public_only=public_only).result()[url]

    def close(self) -> None:
        """Cut downloads in progress and drop queued ones (vacd is stopping; the next start fetches again)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.fetcher.abort_all()

    def _download(self, url: str, public_only: bool) -> Future[Path]:
        # A pipe's download and the site's of the same URL are separate: the site's may reach
        # addresses the pipe's must not (both write the same cached file atomically).
        key = (url, public_only)
        with self._lock:
            running = self._downloads.get(key)
            if running is not None:
                return running
            download = self._pool.submit(self._refresh, url, public_only)
            self._downloads[key] = download
        download.add_done_callback(lambda _: self._forget(key, download))
        return download

    def _forget(self, key: tuple[str, bool], download: Future[Path]) -> None:
        with self._lock:
            if self._downloads.get(key) is download:
                del self._downloads[key]

    def _refresh(self, url: str, public_only: bool = False) -> Path:
        cached = self.path_for(url)
        try:
            modified_time: Optional[float] = cached.stat().st_mtime
        except FileNotFoundError:
            modified_time = None
        try:
            # Vac required Last-Modified: without it the next creation could not ask If-Modified-Since.
            fetched = self.fetcher.fetch_to_file(url, cached, self.limits, modified_since=modified_time,
                                                 require_last_modified=True, public_only=public_only)
        except FetchError as error:
            if modified_time is not None:
                log.warning("image fetch failed, using the cached image url=%s error=%s", url, error)
                return cached
            raise
        if fetched is not None:
            log.info("image downloaded url=%s bytes=%d sha256=%s", url, fetched.size_bytes, fetched.sha256)
        return cached
