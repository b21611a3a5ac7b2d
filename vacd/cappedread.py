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
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Union

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


def read_capped(path: PathLike, max_bytes: int) -> Optional[bytes]:
    """The first `max_bytes` bytes of the regular file at `path`, or None if nothing is there.

    Raises:
        UnreadableFile: the entry is a directory, symlink, FIFO, device or socket, or
            reading it failed (the OSError is the cause).
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnreadableFile(path, f"cannot stat: {error.strerror or error}") from error
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableFile(path, f"not a regular file (mode {stat.filemode(status.st_mode)})")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # removed between the two looks: as if it had never been there
    except OSError as error:
        raise UnreadableFile(path, f"cannot open: {error.strerror or error}") from error
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UnreadableFile(path, "replaced by something that is not a regular file")
        chunks = []
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, _CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise UnreadableFile(path, f"cannot read: {error.strerror or error}") from error
    finally:
        os.close(descriptor)
