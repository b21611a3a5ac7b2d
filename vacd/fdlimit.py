"""vacd's file-descriptor budget: raise the soft limit at start, and split it between parts.

Issue 8 item 11: 1,100 idle guest connections exhausted the default soft limit of 1,024
and the factory loop died on EMFILE. Rules:

* `raise_fd_limit()` is called once from `vacd.daemoncli.main()`: the soft RLIMIT_NOFILE goes
  up to FD_LIMIT_TARGET, or to the hard limit if that is lower, and the outcome is logged.
  The units set the limit too (etc/vacd.service `LimitNOFILE=`, `ulimit -n` in
  etc/init.d/vacd), so the hard limit normally allows the target.
* The guest API may hold at most `guest_connection_cap(limit)` connections, which keeps
  a quarter of the descriptors (at least FACTORY_FD_HEADROOM) for the factory: libvirt,
  the store, image downloads, qemu-img, logs and the VacQuery sockets.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Well above what 4,096 guest connections and the factory need, and what the units set.
FD_LIMIT_TARGET = 65536
# Descriptors the factory keeps whatever the guests do: one pass opens a few per slot
# (records, heartbeats), libvirt a handful, each image download and command a few more.
FACTORY_FD_HEADROOM = 128
# vacd.guestapi.connection.ConnectionLimits' default: the most a factory's guests need.
MAX_GUEST_CONNECTIONS = 4096
# Below this the guest API would be useless; a limit this low is reported at start.
MIN_GUEST_CONNECTIONS = 16


def current_fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (RLIM_INFINITY counts as the target)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FD_LIMIT_TARGET if soft == resource.RLIM_INFINITY else int(soft)


def raise_fd_limit(target: int = FD_LIMIT_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE to `target`, or to the hard limit if lower; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, int(hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as error:
            log.warning("cannot raise the file descriptor limit soft=%s hard=%s wanted=%s error=%s",
                        soft, hard, wanted, error)
        else:
            log.info("file descriptor limit raised from=%s to=%s hard=%s", soft, wanted, hard)
    limit = current_fd_limit()
    if limit < target:
        # The guests get less than MAX_GUEST_CONNECTIONS: say where to raise it.
        log.warning("file descriptor limit is %s, below %s: raise LimitNOFILE (vacd.service) or "
                    "ulimit -n; guest connections are capped at %s", limit, target, guest_connection_cap(limit))
    return limit


def guest_connection_cap(fd_limit: int) -> int:
    """How many guest connections fit under `fd_limit` with the factory's share left over."""
    headroom = max(FACTORY_FD_HEADROOM, fd_limit // 4)
    return max(MIN_GUEST_CONNECTIONS, min(MAX_GUEST_CONNECTIONS, fd_limit - headroom))
