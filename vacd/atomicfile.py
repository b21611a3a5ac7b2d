"""Write files so that a crash at any instant leaves either the old content or the new.

Rule (design.md rule 4): temp file in the target directory, write, fsync the file, rename
over the target, fsync the directory. The temp file is removed if anything fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def write_atomic(path: PathLike, content: Union[bytes, str], mode: int = 0o644) -> None:
    """Replace `path` with `content` atomically and durably."""
    target = Path(path)
    data = content.encode() if isinstance(content, str) else content
    descriptor, temp_name = tempfile.mkstemp(prefix="." + target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fchmod(temp_file.fileno(), mode)
            os.fsync(temp_file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(target.parent)


def fsync_directory(directory: PathLike) -> None:
    """Make a rename or creation inside `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_text_or_none(path: PathLike) -> "str | None":
    """The file's text, or None if it does not exist."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
