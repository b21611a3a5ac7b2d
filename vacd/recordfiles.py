"""The store's record files: read through a cache, written atomically, quarantined when unreadable.

Rules (design.md rule 4; issue 8 item 3; issue 15 item 2):
- Records are read through a cache keyed on each file's (inode, mtime, size, ctime), as
  the guest server keys its files (issue 15 item 2): a pass over a machine whose files have
  not changed lstat-s them and opens none. Every write here is a rename, so a rewritten
  record has a new inode; a file changed in place shows a new mtime or ctime. A file read
  within RACY_SECONDS of its mtime is not trusted from the cache (a change in the same
  timestamp tick could keep every field of the key), so it is read again next time; what
  vacd wrote itself goes into the cache at write time. A missed change costs nothing
  worse than what the key cannot see: the cache never holds a file that no longer exists
  (an absent file is looked up by lstat every time, which opens nothing).
- Every write is temp + fsync + rename (vacd.atomicfile), so a kill -9 at any instant
  leaves each file old or new.
- A record is corrupt (CorruptRecord) if it is not a regular file, is over
  MAX_RECORD_BYTES or is not UTF-8 here, or does not parse (vacd.recordformats). The store
  decides what replaces it; it is renamed to `<file>.corrupt-<unix time>` beside where it
  was (kept for the admin until the directory expires), logged at WARNING with its path
  and counted (`quarantined_total`).
- The guest API reads through the same store from its own thread: the cache and the
  counters are behind a lock.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from vacd.atomicfile import write_atomic
from vacd.cappedread import UnreadableFile, read_capped_with_status
from vacd.recordformats import CorruptRecord

log = logging.getLogger(__name__)

CORRUPT_MARK = ".corrupt-"
# Our records are well under 1 KiB; anything near this is not one of ours.
MAX_RECORD_BYTES = 64 * 1024
# A record whose mtime is this close to the moment it was read may have changed again in
# the same timestamp tick without changing its cache key: it is read again next time
# (git's "racily clean" rule). Far above any filesystem's timestamp granularity.
RACY_SECONDS = 2
# A bound on the record cache (entries of removed directories are dropped with them):
# far above 256 slots x 8 records.
MAX_CACHED_RECORDS = 65536

FileKey = tuple[int, int, int, int, int]


def file_key(status: os.stat_result) -> FileKey:
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size, status.st_ctime_ns)


class RecordFiles:
    """Reads, writes and quarantines record files; `clock` names quarantined copies and stands in for lost mtimes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._quarantine_lock = threading.Lock()
        self._quarantined_total = 0
        self._cache_lock = threading.Lock()
        self._record_cache: dict[str, tuple[FileKey, str]] = {}
        # Record files opened and read, and lookups the cache answered (tests, the bench).
        self.record_file_reads = 0
        self.record_cache_hits = 0

    @property
    def quarantined_total(self) -> int:
        """How many corrupt records have been renamed aside since this was made."""
        with self._quarantine_lock:
            return self._quarantined_total

    def count_cache_hits(self, hits: int) -> None:
        """Lookups answered from what the store parsed from cached files (its machine cache)."""
        with self._cache_lock:
            self.record_cache_hits += hits

    def read_text(self, path: Union[str, Path]) -> Optional[str]:
        """A record's text, None if absent; CorruptRecord if it is unusable as one of ours.

        Answered from the cache when the file's key is unchanged (module docstring); an
        absent file costs one lstat.
        """
        key_path = os.fspath(path)
        try:
            status = os.lstat(key_path)
        except FileNotFoundError:
            return None
        except OSError:
            pass  # read_capped_with_status says what is wrong
        else:
            if stat.S_ISREG(status.st_mode):
                with self._cache_lock:
                    entry = self._record_cache.get(key_path)
                    if entry is not None and entry[0] == file_key(status):
                        self.record_cache_hits += 1
                        return entry[1]
        try:
            found = read_capped_with_status(path, MAX_RECORD_BYTES)
        except UnreadableFile as error:
            raise CorruptRecord(str(error)) from error
        if found is None:
            return None
        raw, status = found
        with self._cache_lock:
            self.record_file_reads += 1
        if len(raw) >= MAX_RECORD_BYTES:
            raise CorruptRecord(f"{path}: {MAX_RECORD_BYTES} bytes or more, not a record of ours")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorruptRecord(f"{path}: not UTF-8: {error}") from error
        if _wall_clock_ns() - status.st_mtime_ns >= RACY_SECONDS * 1_000_000_000:
            self._cache(key_path, file_key(status), text)
        return text

    def _cache(self, key_path: str, key: FileKey, text: str) -> None:
        with self._cache_lock:
            if len(self._record_cache) >= MAX_CACHED_RECORDS:
                self._record_cache.clear()
            self._record_cache[key_path] = (key, text)

    def write(self, path: Path, text: str, durable: bool = True) -> None:
        """write_atomic, and the cache told what the file now holds."""
        if durable:
            write_atomic(path, text)
        else:
            write_atomic(path, text, durable=False)
        self._remember_written(path, text)

    def _remember_written(self, path: Path, text: str) -> None:
        # Only this store writes these files, and only from the factory's loop, so the file
        # at `path` just after the write is the one written: no racy rule is needed.
        try:
            status = os.lstat(path)
        except OSError:
            return
        self._cache(os.fspath(path), file_key(status), text)

    def mtime(self, path: Path) -> int:
        try:
            return int(os.lstat(path).st_mtime)
        except (OSError, OverflowError, ValueError):
            return int(self.clock())

    def quarantine(self, path: Path, reason: str, replacement: Optional[str] = None) -> None:
        """Rename a corrupt record to `<name>.corrupt-<unix time>`; put `replacement` in its place.

        With a replacement, a regular file is hard-linked aside before the replacement is
        renamed over it, so there is no instant without the record (a kill -9 between the
        two steps leaves the corrupt file, quarantined again next time). A failure here is
        logged and leaves things as they were: the caller's in-memory answer stands.
        """
        aside = self._aside_name(path)
        try:
            if replacement is not None and _is_regular(path):
                os.link(path, aside, follow_symlinks=False)
                try:
                    write_atomic(path, replacement)
                except OSError:
                    os.unlink(aside)
                    raise
            else:
                os.rename(path, aside)
                if replacement is not None:
                    write_atomic(path, replacement)
        except FileNotFoundError:
            return  # another thread (the guest API shares this store) got there first
        except OSError as error:
            log.warning("corrupt record left in place path=%s reason=%s error=%s", path, reason, error)
            return
        with self._quarantine_lock:
            self._quarantined_total += 1
        log.warning("quarantined corrupt record path=%s moved_to=%s reason=%s", path, aside.name, reason)

    def _aside_name(self, path: Path) -> Path:
        base = f"{path.name}{CORRUPT_MARK}{int(self.clock())}"
        candidate = path.with_name(base)
        number = 1
        while os.path.lexists(candidate):
            candidate = path.with_name(f"{base}.{number}")
            number += 1
        return candidate

    def all_cached(self, key_path: str, names: Sequence[str], keys: tuple[Optional[FileKey], ...]) -> bool:
        """Whether the record cache holds each present file (`names`, `keys`) of the directory under its key."""
        with self._cache_lock:
            for name, key in zip(names, keys):
                if key is None:
                    continue
                entry = self._record_cache.get(os.path.join(key_path, name))
                if entry is None or entry[0] != key:
                    return False
        return True

    def forget_directory(self, directory: Path) -> None:
        """Drop the cached records of a directory that was removed."""
        prefix = os.fspath(directory) + os.sep
        with self._cache_lock:
            for key_path in [key_path for key_path in self._record_cache if key_path.startswith(prefix)]:
                del self._record_cache[key_path]


def _wall_clock_ns() -> int:
    # Imported here: core modules import vacd.store (through vacd.guestapi), and must not reach `time`.
    import time

    return time.time_ns()


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
