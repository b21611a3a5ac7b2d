"""Read a file that may be hostile or corrupt: a regular file only, never through a link, never blocking, never more than a cap.

Rules (issue 8 items 2 and 3):
- Everything in `joboutputs/` is the guest's: a container writes there directly, so a
  `shutdown_message` may be a directory, a symlink to /dev/zero, a FIFO with no writer or
  a 10 GB file. None of these may raise out of a reader, block it, or make it read more
  than its cap.
- The entry is lstat-ed first and opened only if it is a regular file (opening a device
  can have side effects); it is opened with O_NOFOLLOW | O_NONBLOCK and fstat-ed again, so
  a swap between the two looks is caught too.
- Absent is None. Present but unusable (not a regular file, a symlink, permission denied,
  EIO) raises `UnreadableFile`, so a caller can tell "no file" from "a bad file": the store
  quarantines its own records, guest files are simply not used.
- O_NOFOLLOW guards only the last component of a path. So a file below a directory vacd
  did not make safe (`joboutputs/`, which a container writes into and a hostile layout
  may have replaced by a symlink to /etc) is reached through `open_directory`: each
  component opened with O_NOFOLLOW | O_DIRECTORY relative to the one before, and the file
  then opened relative to that descriptor (`dir_fd`). A symlink anywhere on the way is
  `UnreadableFile`, never followed (issue 11 item 3).
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, Optional, Union

from vacd.errors import VacError

PathLike = Union[str, "os.PathLike[str]"]
# Large enough for any read; small enough that one os.read never asks for a huge buffer.
_CHUNK_BYTES = 1 << 16


class UnreadableFile(VacError):
    """Something is at the path, but it is not a regular file we can read."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_directory(base: PathLike, components: Iterable[str] = ()) -> Optional[int]:
    """A descriptor of the directory `base/components...`, no link followed; None if one is missing.

    `base` itself is opened with O_NOFOLLOW too (a machine directory vacd made is never a
    link); the directories above it are the admin's and followed as usual. The caller
    closes the descriptor.

    Raises:
        UnreadableFile: `base` or a component is a symlink, not a directory, or unopenable.
    """
    shown = os.fspath(base)
    try:
        descriptor = os.open(base, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnreadableFile(shown, f"not a directory vacd can use (a symlink?): {error.strerror or error}") from error
    for component in components:
        shown = os.path.join(shown, component)
        try:
            if not component or "/" in component or component in (".", ".."):
                raise UnreadableFile(shown, "not one path component")
            try:
                inner = os.open(component, _DIRECTORY_FLAGS, dir_fd=descriptor)
            except FileNotFoundError:
                return None
            except OSError as error:
                raise UnreadableFile(
                    shown, f"not a directory vacd can use (a symlink?): {error.strerror or error}"
                ) from error
        finally:
            os.close(descriptor)
        descriptor = inner
    return descriptor


def read_capped_under(base: PathLike, components: Iterable[str], max_bytes: int) -> Optional[bytes]:
    """`read_capped` of `base/components...` with no link followed on the way (module rules)."""
    found = read_capped_with_status_under(base, components, max_bytes)
    return found[0] if found is not None else None


def read_capped_with_status_under(
    base: PathLike, components: Iterable[str], max_bytes: int
) -> Optional[tuple[bytes, os.stat_result]]:
    """The capped content and the fstat of `base/components...` (no link followed), or None if absent."""
    parts = list(components)
    if not parts:
        raise ValueError("a file under a directory needs at least its own name")
    directory = open_directory(base, parts[:-1])
    if directory is None:
        return None
    try:
        return _read_capped(os.path.join(os.fspath(base), *parts), parts[-1], max_bytes, directory)
    finally:
        os.close(directory)


def lstat_under(base: PathLike, components: Iterable[str]) -> Optional[os.stat_result]:
    """The lstat of `base/components...`, with no link followed on the way; None if absent or unreachable."""
    parts = list(components)
    try:
        directory = open_directory(base, parts[:-1])
    except UnreadableFile:
        return None
    if directory is None:
        return None
    try:
        return os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(directory)


def read_capped(path: PathLike, max_bytes: int, dir_fd: Optional[int] = None) -> Optional[bytes]:
    """The first `max_bytes` bytes of the regular file at `path`, or None if nothing is there.

    With `dir_fd`, `path` is relative to that directory descriptor (see open_directory).

    Raises:
        UnreadableFile: the entry is a directory, symlink, FIFO, device or socket, or
            reading it failed (the OSError is the cause).
    """
    found = _read_capped(path, path, max_bytes, dir_fd)
    return found[0] if found is not None else None


def read_capped_with_status(path: PathLike, max_bytes: int) -> Optional[tuple[bytes, os.stat_result]]:
    """`read_capped`, with the fstat of the descriptor the bytes were read from (a cache's key)."""
    return _read_capped(path, path, max_bytes, None)


def _read_capped(
    shown: PathLike, path: PathLike, max_bytes: int, dir_fd: Optional[int]
) -> Optional[tuple[bytes, os.stat_result]]:
    try:
        status = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnreadableFile(shown, f"cannot stat: {error.strerror or error}") from error
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableFile(shown, f"not a regular file (mode {stat.filemode(status.st_mode)})")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                             dir_fd=dir_fd)
    except FileNotFoundError:
        return None  # removed between the two looks: as if it had never been there
    except OSError as error:
        raise UnreadableFile(shown, f"cannot open: {error.strerror or error}") from error
    try:
        opened = os.fstat(descriptor)
        if not stat.S_ISREG(opened.st_mode):
            raise UnreadableFile(shown, "replaced by something that is not a regular file")
        chunks = []
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, _CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), opened
    except OSError as error:
        raise UnreadableFile(shown, f"cannot read: {error.strerror or error}") from error
    finally:
        os.close(descriptor)
