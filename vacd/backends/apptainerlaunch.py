"""The process between vacd and `apptainer exec`: it puts itself in the machine's place, then execs.

Run by vacd.backends.apptainer as `python -m vacd.backends.apptainerlaunch LAUNCH_JSON`, in a
session of its own. Before exec'ing apptainer it does what Vac 03's forked child did for a
singularity machine (§1.11), in an order that only works this way round:

1. joins the machine's cgroups (its limits and CPU time; every child apptainer makes stays
   in them, so destroy finds every process);
2. enters the slot's network namespace (vacd.backends.slotnetwork), so the guest API knows
   the machine by its slot's address and link, as it knows a VM or a podman container;
3. makes a UTS namespace of its own and sets the machine's host name there;
4. drops to `singularity_user` (groups, gid, then uid: after this nothing above is allowed);
5. changes to /tmp and execs apptainer with a clean environment holding the MJF variables.

A separate process rather than `preexec_fn`, which is unsafe in a process with threads
(vacd has a thread pool), and rather than `os.setns`/`os.unshare`, which need Python 3.12.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys
from typing import Any

CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def launch(launch_spec: dict[str, Any]) -> None:
    """Do steps 1 to 5; never returns (execv) unless a step fails, which raises OSError."""
    for procs in launch_spec["cgroup_procs"]:
        with open(procs, "w") as handle:
            handle.write(f"{os.getpid()}\n")
    libc = _libc()
    namespace = os.open(launch_spec["network_namespace"], os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(libc.setns(namespace, CLONE_NEWNET), f"setns {launch_spec['network_namespace']}")
    finally:
        os.close(namespace)
    _check(libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")
    socket.sethostname(launch_spec["hostname"])
    os.setgroups([])
    os.setgid(launch_spec["gid"])
    os.setuid(launch_spec["uid"])
    os.chdir("/tmp")
    argv = launch_spec["argv"]
    os.execve(argv[0], argv, launch_spec["environment"])


def main() -> int:
    try:
        launch(json.loads(sys.argv[1]))
    except (OSError, KeyError, IndexError, ValueError) as error:
        print(f"vacd apptainer launcher: {error}", file=sys.stderr)
        return 1
    return 1  # not reached: execve replaced this process


if __name__ == "__main__":
    sys.exit(main())
