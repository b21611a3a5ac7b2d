"""Which machine a request comes from, and its files, read from the store with a stat cache.

Rules (behaviour reference §6.1, design rule 7):
- Identity is the source address only: 169.254.169.n (and beyond, vacd.slots) is slot n;
  an IPv6 link-local address built from a slot's MAC (EUI-64, `56:4D:<IPv4 octets>`) is
  that slot too. Anything else belongs to no slot. Tests inject their own mapping.
- The slot's machine is `Store.slot_binding(<slot's machine name>)`. A slot with no
  binding, a broken record or a finished machine is served nothing. A machine the factory
  has decided to stop is still served during its shutdown grace, so it can PUT its own
  final shutdown_message (which then takes precedence over the factory's).
- Reading the store per request is kept cheap by caching on stat signatures (inode,
  mtime_ns, size): every store write is an atomic rename, which changes the file's inode
  and its directory's mtime, so a changed file or a new marker (`finished`,
  `destroy_requested`) is seen by the next request. Anything modified in the last
  RACY_SECONDS is not cached, because directory mtimes are only as fine as the kernel's
  coarse clock ("racy git" problem): two changes within one tick look like one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vacd.config import Settings
from vacd.errors import StoreError
from vacd.guestapi.guest import GuestMachine
from vacd.paths import Paths
from vacd.slots import SlotIdentity, ordinal_for_ip_address, slot_identity
from vacd.store import Store

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0
# A machine directory holds about 30 small files; 64 machines need about 2,000 entries.
MAX_CACHED_FILES = 8192
# user_data is the largest file served; Nova caps it at 64 KiB, we allow far more.
MAX_SERVED_FILE_BYTES = 16 * 1024 * 1024
# The MAC prefix of every slot (vacd.slots.mac_address_for).
SLOT_MAC_PREFIX = bytes([0x56, 0x4D])

Signature = tuple[int, int, int]


def default_source_to_ordinal(source_address: str) -> Optional[int]:
    """The slot of a guest source address, or None (IPv4 slot address, or EUI-64 link-local)."""
    address_text = source_address.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return ordinal_for_ip_address(str(address.ipv4_mapped))
        if not address.is_link_local:
            return None
        interface_id = address.packed[8:]
        # EUI-64: MAC bytes 0-2, ff:fe, bytes 3-5, with the universal/local bit flipped.
        if interface_id[3:5] != b"\xff\xfe":
            return None
        mac = bytes([interface_id[0] ^ 0x02]) + interface_id[1:3] + interface_id[5:8]
        if mac[:2] != SLOT_MAC_PREFIX:
            return None
        # A slot's MAC is 56:4D followed by the four octets of its IPv4 address.
        return ordinal_for_ip_address(str(ipaddress.IPv4Address(mac[2:6])))
    return ordinal_for_ip_address(str(address))


def _signature(status: os.stat_result) -> Signature:
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def _stat_or_none(path: str) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class StatCache:
    """File contents (and values parsed from them) keyed by path and stat signature."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = MAX_CACHED_FILES) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Signature, Optional[bytes]]] = OrderedDict()

    def read(self, path: str) -> Optional[bytes]:
        """The content of a regular file, or None if it is missing, not regular or too large."""
        status = _stat_or_none(path)
        if status is None or not stat.S_ISREG(status.st_mode):
            return None
        signature = _signature(status)
        entry = self._entries.get(path)
        if entry is not None and entry[0] == signature:
            return entry[1]
        content, signature_read = self._read_fresh(path)
        if signature_read is not None and self._clock() - signature_read[1] / 1e9 > RACY_SECONDS:
            self._entries[path] = (signature_read, content)
            self._entries.move_to_end(path)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return content

    def forget_under(self, directory: str) -> None:
        """Drop every entry below `directory` (its machine went away)."""
        prefix = directory.rstrip("/") + "/"
        for path in [path for path in self._entries if path.startswith(prefix)]:
            del self._entries[path]

    @staticmethod
    def _read_fresh(path: str) -> tuple[Optional[bytes], Optional[Signature]]:
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None, None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_SERVED_FILE_BYTES:
                return None, None
            chunks = []
            remaining = status.st_size + 1
            while remaining > 0:
                chunk = os.read(descriptor, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            content = b"".join(chunks)
            if len(content) != status.st_size:
                # Being written in place: serve what was read, cache nothing.
                return content, None
            return content, _signature(status)
        finally:
            os.close(descriptor)


class CachedMachineFiles:
    """MachineFiles over one machine directory, through a shared StatCache.

    Files directly in MD (user_data, root_public_key) are also remembered by this object
    without a stat: replacing one is a rename in MD, which changes MD's signature, and the
    resolver then builds a new binding with a new CachedMachineFiles. Files in
    subdirectories (machinefeatures/, jobfeatures/) change without touching MD, so each
    read of one checks its own signature.
    """

    def __init__(self, directory: Path, cache: StatCache, remember_top_level: bool = True) -> None:
        self.directory = directory
        # Plain strings: pathlib costs more than the stat it wraps (measured in bench/).
        self._prefix = str(directory) + "/"
        self._cache = cache
        self._remember_top_level = remember_top_level
        self._top_level: dict[str, Optional[bytes]] = {}

    def read(self, relative_path: str) -> Optional[bytes]:
        if "/" in relative_path or not self._remember_top_level:
            return self._cache.read(self._prefix + relative_path)
        if relative_path in self._top_level:
            return self._top_level[relative_path]
        content = self._cache.read(self._prefix + relative_path)
        self._top_level[relative_path] = content
        return content

    def list(self, subdirectory: str) -> list[str]:
        target = self._prefix + subdirectory
        try:
            with os.scandir(target) as entries:
                return sorted(entry.name for entry in entries if entry.is_file(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []


@dataclass(frozen=True)
class _Binding:
    slot_signature: Optional[Signature]
    directory_signature: Optional[Signature]
    machine: Optional[GuestMachine]
    directory: str
    cacheable: bool


class MachineResolver:
    """Finds the live machine of a slot, caching the answer until the store changes."""

    def __init__(self, paths: Paths, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.paths = paths
        self.store = store
        self._clock = clock
        self.file_cache = StatCache(clock)
        self._identities: dict[tuple[str, int], tuple[SlotIdentity, str]] = {}
        self._bindings: dict[tuple[str, str, int], _Binding] = {}

    def machine_for(self, ordinal: int, settings: Settings) -> Optional[GuestMachine]:
        """The unfinished, not-being-destroyed machine bound to slot `ordinal`, or None."""
        found = self._identity(settings.factory_name, ordinal)
        if found is None:
            return None
        identity, slot_file = found
        key = (settings.factory_name, settings.vac_space, ordinal)
        slot_status = _stat_or_none(slot_file)
        slot_signature = _signature(slot_status) if slot_status is not None else None
        cached = self._bindings.get(key)
        if cached is not None and cached.cacheable and cached.slot_signature == slot_signature:
            if cached.machine is None:
                return None
            directory_status = _stat_or_none(cached.directory)
            if directory_status is not None and _signature(directory_status) == cached.directory_signature:
                return cached.machine
        binding = self._load(identity, settings, slot_status)
        self._bindings[key] = binding
        return binding.machine

    def _identity(self, factory_name: str, ordinal: int) -> Optional[tuple[SlotIdentity, str]]:
        found = self._identities.get((factory_name, ordinal))
        if found is None:
            try:
                identity = slot_identity(factory_name, ordinal)
            except ValueError:
                return None
            found = (identity, str(self.paths.slots_dir / identity.machine_name))
            self._identities[(factory_name, ordinal)] = found
        return found

    def _load(self, identity: SlotIdentity, settings: Settings, slot_status: Optional[os.stat_result]) -> _Binding:
        now = self._clock()
        slot_signature = _signature(slot_status) if slot_status is not None else None
        if slot_status is None:
            return _Binding(None, None, None, "", cacheable=True)
        slot_is_recent = now - slot_status.st_mtime <= RACY_SECONDS
        # The directory is stat-ed before it is read, so a change after this is seen next time.
        directory = self._directory_of(identity.machine_name)
        directory_status = _stat_or_none(str(directory)) if directory is not None else None
        try:
            stored = self.store.slot_binding(identity.machine_name)
        except (StoreError, OSError) as error:
            log.warning("guest request for unreadable machine slot=%s error=%s", identity.ordinal, error)
            return _Binding(slot_signature, None, None, "", cacheable=False)
        if stored is None or stored.has_finished:
            if stored is not None:
                self.file_cache.forget_under(str(stored.directory))
            return _Binding(slot_signature, None, None, "", cacheable=not slot_is_recent)
        if directory_status is None or stored.directory != directory:
            return _Binding(slot_signature, None, None, "", cacheable=False)
        cacheable = not slot_is_recent and now - directory_status.st_mtime > RACY_SECONDS
        machine = GuestMachine(
            record=stored.record,
            directory=stored.directory,
            mac_address=identity.mac_address,
            factory_name=settings.factory_name,
            vac_space=settings.vac_space,
            # Only a binding that is cached is invalidated by MD's signature.
            files=CachedMachineFiles(stored.directory, self.file_cache, remember_top_level=cacheable),
        )
        return _Binding(slot_signature, _signature(directory_status), machine, str(stored.directory), cacheable)

    def _directory_of(self, machine_name: str) -> Optional[Path]:
        # The store's own reading of slots/<name> (§1.4), to stat MD first; never raises.
        return self.store.bound_directory(machine_name)

