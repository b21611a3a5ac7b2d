"""Write files so that a crash at any instant leaves either the old content or the new.

Rule (design.md rule 4): temp file in the target directory, write, fsync the file, rename
over the target, fsync the directory. The temp file is removed if anything fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

TEMP_SUFFIX = ".tmp"
# The name `atomic_replace` gives its temp file: "." + target name + "." + mkstemp's eight
# random characters + ".tmp". vacd.startup_cleanup removes such files left by a kill -9.
TEMP_FILE_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# Linux's NAME_MAX, and what the temp name adds to the target's: "." "." 8 random ".tmp".
NAME_MAX_BYTES = 255
TEMP_NAME_EXTRA_BYTES = 14


def is_temp_file_name(name: str) -> bool:
    """Whether `name` is the name of an `atomic_replace` temp file."""
    return TEMP_FILE_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_replace(
    path: PathLike, mode: int = 0o644, mtime: Optional[float] = None, durable: bool = True
) -> Iterator[BinaryIO]:
    """Yield a temp file beside `path`; on a clean exit it replaces `path`, durably.

    `mtime`, if given, is set on the file before the rename (the image cache keeps the
    server's Last-Modified there). On an exception the temp file is removed and `path`
    is untouched.

    Without `durable`, neither the file nor the directory is fsync-ed: the replacement is
    still atomic for every process (a kill -9 of the writer at any instant leaves the old
    or the new file, as the kernel holds both), but an OS crash or power cut may bring back
    an older file, or on some filesystems an empty one. Only for files that are rewritten
    often and whose readers treat an unreadable one as lost (the store's heartbeats).
    """
    target = Path(path)
    descriptor, temp_name = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            yield temp_file
            temp_file.flush()
            os.fchmod(temp_file.fileno(), mode)
            if durable:
                os.fsync(temp_file.fileno())
        if mtime is not None:
            os.utime(temp_name, (mtime, mtime))
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_directory(target.parent)


def _temp_prefix(target_name: str) -> str:
    """"." + the target's name + ".", its name cut so the temp name fits in NAME_MAX.

    Only a guest's $JOBOUTPUTS upload has a name long enough to be cut (issue 10 item 5:
    any name Vac took, up to 255 bytes); the cut name still matches TEMP_FILE_NAME.
    """
    encoded = os.fsencode(target_name)[: NAME_MAX_BYTES - TEMP_NAME_EXTRA_BYTES]
    return "." + os.fsdecode(encoded) + "."


def write_atomic(path: PathLike, content: Union[bytes, str], mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `content` atomically and (unless not `durable`, see atomic_replace) durably."""
    with atomic_replace(path, mode, durable=durable) as temp_file:
        temp_file.write(content.encode() if isinstance(content, str) else content)


# What `write_atomic_if_changed` last wrote at each path, with the file's identity then.
_last_written: dict[str, tuple[tuple[int, int, int, int, int], bytes]] = {}
_last_written_lock = threading.Lock()


def write_atomic_if_changed(path: PathLike, content: Union[bytes, str], mode: int = 0o644,
                            durable: bool = True) -> bool:
    """`write_atomic`, skipped when `path` still holds exactly what this process last wrote there.

    For files published every pass whose content often repeats (`counts`, the `*-heartbeat`
    files within one second): the skipped write was durable already, so a crash loses
    nothing by the skip. "Still holds" is the file's (device, inode, mtime, size, ctime)
    unchanged since that write, so a file replaced or edited by anyone else is rewritten.
    `durable` as for `write_atomic` (only a skipped write is then not durable already).
    Returns whether it wrote.
    """
    data = content.encode() if isinstance(content, str) else content
    key = os.fspath(path)
    with _last_written_lock:
        remembered = _last_written.get(key)
    if remembered is not None and remembered[1] == data:
        try:
            status = os.lstat(key)
        except OSError:
            status = None
        if status is not None and _identity(status) == remembered[0]:
            return False
    write_atomic(key, data, mode, durable=durable)
    try:
        written = os.lstat(key)
    except OSError:
        return True
    with _last_written_lock:
        _last_written[key] = (_identity(written), data)
    return True


def _identity(status: os.stat_result) -> tuple[int, int, int, int, int]:
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size, status.st_ctime_ns)


def write_atomic_at(directory_fd: int, name: str, content: bytes, mode: int = 0o644) -> None:
    """`write_atomic` of `name` inside the directory open as `directory_fd` (no path walked).

    For directories a guest writes into (joboutputs/): the temp file is created O_EXCL |
    O_NOFOLLOW and renamed relative to the descriptor, so no symlink on the way to the
    directory, or planted at the temp name, is followed (issue 11 item 3).
    """
    temp_name = _temp_prefix(name) + secrets.token_hex(4) + TEMP_SUFFIX
    descriptor = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=directory_fd)
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(content)
            temp_file.flush()
            os.fchmod(temp_file.fileno(), mode)
            os.fsync(temp_file.fileno())
        os.replace(temp_name, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except BaseException:
        try:
            os.unlink(temp_name, dir_fd=directory_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(directory_fd)


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
