"""The image cache's eviction rule (issue 8 item 4): cached images do not fill the disk.

Vac 03 kept every image it ever downloaded (§1.12). Here, each time the factory takes an
image from the cache it stamps the file's access time (`mark_image_used`; the mtime stays
the server's Last-Modified, which If-Modified-Since needs). Then, in this order:

1. an image not used for `imagecache_days` days is deleted;
2. while the cache is larger than `imagecache_max_gb` (0: no cap), the least recently
   used image is deleted;
3. while the image cache's file system has less than twice the free space the disk gate
   needs (`vacd.diskspace`: the gate is near), the least recently used image is deleted,
   so room is made before creation has to stop.

An image that a live machine's machinetype uses is never deleted by any rule (a running
machine holds its file open, but the next creation of that machinetype would download it
again). Only completed cache files are considered: dot files are downloads in progress
or their leftovers (vacd.startup_cleanup).

`images_to_evict` is the pure rule; `ImageEviction` is the edge that lists the cache, asks
the file system and deletes, at most once an hour, or at every pass while the gate is near.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Optional

from vacd.config import Machinetype, Settings
from vacd.diskspace import DiskUsage, Statvfs, read_disk_usage, required_free_bytes
from vacd.errors import VacError
from vacd.store import Store

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400
GB = 10**9
# "The gate is near": less free space than this many times what the gate needs.
NEAR_GATE_FACTOR = 2
# The age and size rules are looked at hourly; the pressure rule at every call while it holds.
EVICTION_INTERVAL_SECONDS = 3600


@dataclass(frozen=True)
class CachedImage:
    """One completed file of the image cache: its size on disk and when it was last used."""

    path: Path
    size_bytes: int
    last_used_time: float


@dataclass(frozen=True)
class Eviction:
    path: Path
    size_bytes: int
    reason: str


def images_to_evict(
    images: Iterable[CachedImage],
    in_use: Collection[Path],
    *,
    now: float,
    max_unused_seconds: float,
    max_total_bytes: Optional[int],
    bytes_to_free: int,
) -> list[Eviction]:
    """Which cached images to delete, and why, by the rules of the module docstring."""
    images = list(images)
    candidates = sorted((image for image in images if image.path not in in_use),
                        key=lambda image: (image.last_used_time, str(image.path)))
    evictions: list[Eviction] = []
    kept: list[CachedImage] = []
    for image in candidates:
        unused_seconds = now - image.last_used_time
        if unused_seconds > max_unused_seconds:
            evictions.append(Eviction(image.path, image.size_bytes,
                                      f"unused for {unused_seconds / SECONDS_PER_DAY:.1f} days"))
        else:
            kept.append(image)
    freed = sum(eviction.size_bytes for eviction in evictions)
    total = sum(image.size_bytes for image in images) - freed
    for image in kept:  # least recently used first
        if max_total_bytes is not None and total > max_total_bytes:
            reason = f"cache over its cap of {max_total_bytes // GB} GB"
        elif freed < bytes_to_free:
            reason = "disk nearly full"
        else:
            break
        evictions.append(Eviction(image.path, image.size_bytes, reason))
        total -= image.size_bytes
        freed += image.size_bytes
    return evictions


def bytes_to_free(usage: DiskUsage, settings: Settings) -> int:
    """How far the file system is below NEAR_GATE_FACTOR times the gate's free space."""
    wanted = NEAR_GATE_FACTOR * required_free_bytes(settings, usage.total_bytes)
    return max(0, wanted - usage.free_bytes)


def mark_image_used(path: Path, now: float) -> None:
    """Stamp `path` as used now (its atime), keeping its mtime (the server's Last-Modified)."""
    os.utime(path, (now, path.stat().st_mtime))


def cached_images(imagecache_dir: Path) -> list[CachedImage]:
    """The completed files of the cache (not dot files: downloads in progress)."""
    images = []
    try:
        entries = list(os.scandir(imagecache_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # Allocated size: a sparse image frees only what it really holds.
        images.append(CachedImage(Path(entry.path), stat.st_blocks * 512, stat.st_atime))
    return images


def images_in_use(store: Store, machinetypes: Mapping[str, Machinetype],
                  cache_path_for: Callable[[str], Path]) -> frozenset[Path]:
    """Cache files of the images the machinetypes of live machines use (records carry no image)."""
    names = set()
    for directory in store.all_machine_dirs():
        try:
            stored = store.load_machine(directory)
        except (VacError, OSError, UnicodeDecodeError):
            continue  # an unreadable record is quarantined elsewhere (issue 8 item 3)
        if stored is None or stored.has_finished:
            continue
        machinetype = machinetypes.get(stored.record.machinetype)
        if machinetype is None:
            continue
        for name in (machinetype.root_image, machinetype.root_kernel, machinetype.root_initrd):
            if name is not None and name.startswith(("http://", "https://")):
                names.add(name)
    return frozenset(cache_path_for(name) for name in names)


class ImageEviction:
    """Applies the eviction rule to one factory's image cache; call `run_if_due` each pass."""

    def __init__(self, store: Store, cache_path_for: Callable[[str], Path],
                 statvfs: Statvfs = os.statvfs) -> None:
        self.store = store
        self.cache_path_for = cache_path_for
        self.statvfs = statvfs
        self._next_run = 0.0

    def run_if_due(self, settings: Settings, machinetypes: Mapping[str, Machinetype], now: float) -> list[Eviction]:
        """Evict if an hour has passed or the disk gate is near; never raises (a boundary)."""
        try:
            directory = self.store.paths.imagecache_dir
            pressure = bytes_to_free(read_disk_usage(directory, self.statvfs), settings)
            if now < self._next_run and pressure == 0:
                return []
            self._next_run = now + EVICTION_INTERVAL_SECONDS
            images = cached_images(directory)
            if not images:
                return []
            evictions = images_to_evict(
                images,
                images_in_use(self.store, machinetypes, self.cache_path_for),
                now=now,
                max_unused_seconds=settings.imagecache_days * SECONDS_PER_DAY,
                max_total_bytes=settings.imagecache_max_gb * GB if settings.imagecache_max_gb else None,
                bytes_to_free=pressure,
            )
            done = []
            for eviction in evictions:
                try:
                    eviction.path.unlink()
                except FileNotFoundError:
                    continue
                log.info("evicted cached image path=%s bytes=%d reason=%s", eviction.path, eviction.size_bytes,
                         eviction.reason)
                done.append(eviction)
            return done
        except Exception:  # boundary: eviction must never stop a pass
            log.exception("image cache eviction failed")
            return []


__all__ = ["CachedImage", "Eviction", "ImageEviction", "bytes_to_free", "cached_images", "images_in_use",
           "images_to_evict", "mark_image_used"]
