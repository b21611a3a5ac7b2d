"""The image cache's eviction rule (vacd.imageeviction, issue 8 item 4)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from tests.vacd.test_factory import make_machinetype, make_settings
from vacd.imagecache import ImageCache
from vacd.imageeviction import (GB, SECONDS_PER_DAY, CachedImage, ImageEviction, bytes_to_free, cached_images,
                                images_in_use, images_to_evict, mark_image_used)
from vacd.diskspace import MIB, DiskUsage
from vacd.paths import Paths
from vacd.records import FinishRecord, MachineRecord
from vacd.store import Store

NOW = 1_700_000_000.0
DAY = SECONDS_PER_DAY
URL = "https://images.example.org/atlas.img"
OTHER_URL = "https://images.example.org/old.img"


class FakeStatvfs(NamedTuple):
    f_frsize: int
    f_blocks: int
    f_bavail: int


def image(name: str, size_gb: float, days_ago: float) -> CachedImage:
    return CachedImage(Path("/cache") / name, int(size_gb * GB), NOW - days_ago * DAY)


def evicted(images: list[CachedImage], in_use: frozenset[Path] = frozenset(), *, max_unused_days: float = 14,
            max_total_gb: int = 0, bytes_to_free: int = 0) -> list[tuple[str, str]]:
    return [(eviction.path.name, eviction.reason) for eviction in images_to_evict(
        images, in_use, now=NOW, max_unused_seconds=max_unused_days * DAY,
        max_total_bytes=max_total_gb * GB or None, bytes_to_free=bytes_to_free)]


def test_images_unused_for_imagecache_days_are_evicted() -> None:
    images = [image("old", 1, 20), image("recent", 1, 3)]
    assert evicted(images) == [("old", "unused for 20.0 days")]


def test_the_least_recently_used_go_first_until_the_cache_fits_its_cap() -> None:
    images = [image("a", 4, 1), image("b", 4, 5), image("c", 4, 3)]
    assert evicted(images, max_total_gb=8) == [("b", "cache over its cap of 8 GB")]
    assert evicted(images, max_total_gb=3) == [("b", "cache over its cap of 3 GB"), ("c", "cache over its cap of 3 GB"),
                                               ("a", "cache over its cap of 3 GB")]


def test_near_the_disk_gate_the_least_recently_used_go_until_enough_is_freed() -> None:
    images = [image("a", 2, 1), image("b", 2, 5), image("c", 2, 3)]
    assert evicted(images, bytes_to_free=3 * GB) == [("b", "disk nearly full"), ("c", "disk nearly full")]
    assert evicted(images, bytes_to_free=0) == []


def test_images_a_live_machine_uses_are_never_evicted() -> None:
    images = [image("in-use", 50, 100), image("spare", 1, 1)]
    in_use = frozenset({Path("/cache/in-use")})
    assert evicted(images, in_use, bytes_to_free=100 * GB) == [("spare", "disk nearly full")]
    assert evicted(images, in_use, max_total_gb=1) == [("spare", "cache over its cap of 1 GB")]


def test_pressure_is_measured_against_twice_the_gate() -> None:
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=0)
    assert bytes_to_free(DiskUsage(Path("/v"), 3000 * MIB, 10**12), settings) == 0
    assert bytes_to_free(DiskUsage(Path("/v"), 1500 * MIB, 10**12), settings) == 548 * MIB


def test_marking_an_image_used_keeps_its_last_modified_time(tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(b"x")
    os.utime(path, (1000.0, 2000.0))
    mark_image_used(path, NOW)
    assert (path.stat().st_atime, path.stat().st_mtime) == (NOW, 2000.0)


def test_downloads_in_progress_are_not_cached_images(tmp_path: Path) -> None:
    (tmp_path / "done").write_bytes(b"x" * 8192)
    (tmp_path / ".done.abcdefgh.tmp").write_bytes(b"x")
    (tmp_path / "subdirectory").mkdir()
    assert [image.path.name for image in cached_images(tmp_path)] == ["done"]
    assert cached_images(tmp_path / "missing") == []


def live_factory(tmp_path: Path) -> tuple[Paths, Store, ImageCache]:
    paths = Paths(tmp_path / "root")
    paths.ensure_state_dirs()
    store = Store(paths)
    running = MachineRecord("f1-00.example.com", 0, "6f1c3a52-0f54-4c4e-9d55-7f2b0d1e2a10", "atlas", "vm-raw", 1,
                            1_699_000_000, 1_800_000_000, "169.254.1.1", 1.0, 2048)
    store.begin_creation(running)
    finished = MachineRecord("f1-01.example.com", 1, "0b8a9d3e-7a41-4b61-a0f6-2c9d5e4f3b21", "old", "vm-raw", 1,
                             1_699_000_000, 1_800_000_000, "169.254.1.2", 1.0, 2048)
    store.begin_creation(finished)
    store.finish(finished, FinishRecord(1_699_000_100, None, None, None, None, 0.0))
    return paths, store, ImageCache(paths)


def test_images_in_use_are_those_of_live_machines_machinetypes(tmp_path: Path) -> None:
    _, store, cache = live_factory(tmp_path)
    machinetypes = {"atlas": make_machinetype(tmp_path, "atlas", root_image=URL, root_kernel=None),
                    "old": make_machinetype(tmp_path, "old", root_image=OTHER_URL, root_kernel=None)}
    assert images_in_use(store, machinetypes, cache.path_for) == frozenset({cache.path_for(URL)})


def test_eviction_runs_hourly_and_at_every_call_while_the_disk_is_nearly_full(tmp_path: Path) -> None:
    paths, store, cache = live_factory(tmp_path)
    machinetypes = {"atlas": make_machinetype(tmp_path, "atlas", root_image=URL, root_kernel=None)}
    in_use, old = cache.path_for(URL), cache.path_for(OTHER_URL)
    for path in (in_use, old):
        path.write_bytes(b"x" * 4096)
        mark_image_used(path, NOW - 30 * DAY)
    free_blocks = [10**6]
    eviction = ImageEviction(store, cache.path_for,
                             statvfs=lambda path: FakeStatvfs(4096, 10**7, free_blocks[0]))
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=0)

    assert [done.path for done in eviction.run_if_due(settings, machinetypes, NOW)] == [old]
    assert in_use.exists() and not old.exists()

    # Within the hour nothing is looked at, unless the disk is nearly full.
    spare = cache.path_for("https://images.example.org/spare.img")
    spare.write_bytes(b"x" * 4096)
    mark_image_used(spare, NOW)
    assert eviction.run_if_due(settings, machinetypes, NOW + 60) == []
    free_blocks[0] = 100  # 400 KiB free: the gate is near
    assert [done.reason for done in eviction.run_if_due(settings, machinetypes, NOW + 120)] == ["disk nearly full"]
    assert in_use.exists() and not spare.exists()
