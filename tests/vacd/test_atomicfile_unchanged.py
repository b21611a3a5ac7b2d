"""Files published every pass are not rewritten when their content repeats (issue 15 item 2)."""

from __future__ import annotations

import os
from pathlib import Path

from vacd.atomicfile import write_atomic, write_atomic_if_changed


def test_an_identical_publication_is_skipped_and_a_changed_one_written(tmp_path: Path) -> None:
    target = tmp_path / "counts"
    assert write_atomic_if_changed(target, "3 4 3 4 3.00\n")
    inode = os.lstat(target).st_ino
    assert not write_atomic_if_changed(target, "3 4 3 4 3.00\n")
    assert os.lstat(target).st_ino == inode
    assert write_atomic_if_changed(target, "4 4 4 4 4.00\n")
    assert target.read_text() == "4 4 4 4 4.00\n"


def test_a_file_replaced_by_someone_else_is_written_again_even_with_the_same_content(tmp_path: Path) -> None:
    target = tmp_path / "factory-heartbeat"
    write_atomic_if_changed(target, "1700000000\n")
    write_atomic(target, "1\n")  # an admin's edit, or another process
    assert write_atomic_if_changed(target, "1700000000\n")
    assert target.read_text() == "1700000000\n"


def test_a_removed_file_is_written_again(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_atomic_if_changed(target, "{}\n")
    target.unlink()
    assert write_atomic_if_changed(target, "{}\n")
    assert target.read_text() == "{}\n"
