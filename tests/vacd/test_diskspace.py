"""The disk gate's numbers (vacd.diskspace): pure, with statvfs results given as numbers."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from tests.vacd.test_factory import make_settings
from vacd.diskspace import (
    MIB,
    DiskUsage,
    check_disk,
    check_room,
    disk_problem,
    read_disk_usage,
    required_free_bytes,
    room_problem,
)
from vacd.paths import Paths

GIB = 1024 * MIB


class FakeStatvfs(NamedTuple):
    f_frsize: int
    f_blocks: int
    f_bavail: int


def usage(free_mib: int, total_gib: int, directory: str = "/var/lib/vac") -> DiskUsage:
    return DiskUsage(Path(directory), free_mib * MIB, total_gib * GIB)


def test_reason_names_the_directory_its_free_space_and_the_need() -> None:
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=5)
    assert disk_problem([usage(312, 10)], settings) == "disk: /var/lib/vac has 312 MiB free, needs 1024 MiB"


def test_the_larger_of_the_size_and_the_share_is_needed() -> None:
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=5)
    # 5 % of 100 GiB is 5120 MiB, more than 1024 MiB: 2000 MiB free is not enough.
    assert disk_problem([usage(2000, 100)], settings) == "disk: /var/lib/vac has 2000 MiB free, needs 5120 MiB"
    assert disk_problem([usage(5120, 100)], settings) is None
    # 5 % of 10 GiB is 512 MiB, less than 1024 MiB: the size rule decides.
    assert disk_problem([usage(1023, 10)], settings) is not None
    assert disk_problem([usage(1024, 10)], settings) is None


def test_zero_turns_each_rule_off() -> None:
    assert disk_problem([usage(0, 10)], make_settings(min_free_disk_mb=0, min_free_disk_percent=0)) is None
    assert required_free_bytes(make_settings(min_free_disk_mb=0, min_free_disk_percent=5), 100 * GIB) == 5 * GIB
    assert required_free_bytes(make_settings(min_free_disk_mb=7, min_free_disk_percent=0), 100 * GIB) == 7 * MIB


def test_the_first_directory_short_of_space_is_the_reason() -> None:
    settings = make_settings(min_free_disk_mb=100, min_free_disk_percent=0)
    usages = [usage(500, 10, "/var/lib/vac"), usage(50, 10, "/var/lib/vac/tmp"), usage(10, 10, "/x")]
    assert disk_problem(usages, settings) == "disk: /var/lib/vac/tmp has 50 MiB free, needs 100 MiB"


def test_a_fractional_need_is_rounded_up_so_the_reason_never_reads_as_met() -> None:
    settings = make_settings(min_free_disk_mb=0, min_free_disk_percent=1)
    # 1 % of 1001 MiB is 10.01 MiB: 10 MiB free falls short, so the need shows as 11.
    reason = disk_problem([DiskUsage(Path("/v"), 10 * MIB, 1001 * MIB)], settings)
    assert reason == "disk: /v has 10 MiB free, needs 11 MiB"


def test_free_space_is_what_df_calls_available_not_the_root_reserve() -> None:
    statvfs = lambda path: FakeStatvfs(f_frsize=4096, f_blocks=1000, f_bavail=10)  # noqa: E731
    assert read_disk_usage(Path("/v"), statvfs) == DiskUsage(Path("/v"), 40960, 4096000)


def test_check_disk_asks_the_state_tmp_and_imagecache_directories(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    asked: list[str] = []

    def statvfs(path: str) -> FakeStatvfs:
        asked.append(path)
        free_blocks = 10 if path == str(paths.imagecache_dir) else 10**6
        return FakeStatvfs(f_frsize=MIB, f_blocks=10**6, f_bavail=free_blocks)

    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=0)
    assert check_disk(paths, settings, statvfs) == f"disk: {paths.imagecache_dir} has 10 MiB free, needs 1024 MiB"
    assert asked == [str(paths.state_dir), str(paths.tmp_dir), str(paths.imagecache_dir)]


def test_a_directory_that_cannot_be_examined_blocks_creation(tmp_path: Path) -> None:
    def statvfs(path: str) -> FakeStatvfs:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    reason = check_disk(Paths(tmp_path), make_settings(), statvfs)
    assert reason == f"disk: cannot examine {Paths(tmp_path).state_dir}: Input/output error"


def test_the_real_file_system_is_read_by_default(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.ensure_state_dirs()
    assert check_disk(paths, make_settings(min_free_disk_mb=0, min_free_disk_percent=0)) is None
    # No real disk has 2**40 MiB free.
    reason = check_disk(paths, make_settings(min_free_disk_mb=2**40, min_free_disk_percent=0))
    assert reason is not None and reason.startswith(f"disk: {paths.state_dir} has ")


# --- a sparse disk's creation checks the room for all it may grow to (issue 13) -----------------


def test_a_sparse_disk_that_would_eat_into_the_kept_minimum_is_refused_naming_both() -> None:
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=0)
    problem = room_problem(usage(50 * 1024, 100, "/var/lib/vac/tmp"), 80 * 10**9, settings)
    assert problem == ("disk: /var/lib/vac/tmp has 51200 MiB free; a sparse disk that may grow to 76294 MiB would "
                       "leave less than the 1024 MiB kept free (min_free_disk_mb, min_free_disk_percent): lower "
                       "disk_gb_per_processor or set volume_group")


def test_a_sparse_disk_that_leaves_the_minimum_is_made() -> None:
    settings = make_settings(min_free_disk_mb=1024, min_free_disk_percent=0)
    assert room_problem(usage(2048, 100), 1024 * MIB, settings) is None
    assert room_problem(usage(2048, 100), 1024 * MIB + 1, settings) is not None


@given(free_mib=st.integers(0, 10**7), total_gib=st.integers(1, 10**5), size_bytes=st.integers(0, 10**15),
       min_mb=st.integers(0, 10**5), percent=st.floats(0, 100))
def test_room_is_found_exactly_when_the_disk_fits_with_the_minimum_kept(
        free_mib: int, total_gib: int, size_bytes: int, min_mb: int, percent: float) -> None:
    settings = make_settings(min_free_disk_mb=min_mb, min_free_disk_percent=percent)
    found = usage(free_mib, total_gib)
    fits = found.free_bytes - size_bytes >= required_free_bytes(settings, found.total_bytes)
    assert (room_problem(found, size_bytes, settings) is None) == fits


def test_check_room_asks_the_directorys_file_system(tmp_path: Path) -> None:
    settings = make_settings(min_free_disk_mb=0, min_free_disk_percent=0)
    asked = []

    def statvfs(path: str) -> FakeStatvfs:
        asked.append(path)
        return FakeStatvfs(f_frsize=4096, f_blocks=1000, f_bavail=256)

    assert check_room(tmp_path, 1024 * 1024, settings, statvfs) is None
    assert check_room(tmp_path, 1024 * 1024 + 1, settings, statvfs) is not None
    assert asked == [str(tmp_path), str(tmp_path)]
    assert check_room(tmp_path / "gone", 1, settings).startswith(f"disk: cannot examine {tmp_path / 'gone'}")  # type: ignore[union-attr]
