"""CPU time of a container machine, read from its own cgroup, on cgroup v1 and v2 hosts.

Every container machine gets a cgroup parent of its own, `/vac/<machine name>`
(vacd.backends.containerargv); the runtime makes the container's cgroup under it. The
parent outlives the container: on v1 `cpuacct.usage` is charged up the hierarchy as the
container runs, and on v2 a removed child's usage is folded into its parent's `cpu.stat`,
so the CPU time a finished container used can still be read, for accounting, after it
exited. The parent is removed when the machine is destroyed.

Layouts (issue 13 item 3):
- v2 (EL9): `/sys/fs/cgroup/cgroup.controllers` exists; CPU time is `usage_usec` in
  `/sys/fs/cgroup/vac/NAME/cpu.stat`.
- v1 or hybrid (this Debian host: v1 controllers and an empty `unified` hierarchy): CPU
  time is `cpuacct.usage` (nanoseconds) in `/sys/fs/cgroup/cpuacct/vac/NAME/`.

The cgroup root is an argument, so the tests read made-up trees of both layouts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")
# The cgroup parent of every container machine, and the tree vacd owns under each controller.
VAC_CGROUP = "vac"
# The child cgroup podman's cgroupfs manager gives the container monitor under the parent.
CONMON_CGROUP = "conmon"


class CgroupLayout(str, Enum):
    V1 = "v1"  # includes hybrid: the controllers are v1, the unified tree holds none
    V2 = "v2"


def cgroup_layout(root: Path = CGROUP_ROOT) -> CgroupLayout:
    """Which cgroup layout the host runs."""
    return CgroupLayout.V2 if (root / "cgroup.controllers").exists() else CgroupLayout.V1


def cgroup_parent_for(machine_name: str) -> str:
    """The cgroupfs path given to the runtime as this machine's cgroup parent."""
    return f"/{VAC_CGROUP}/{machine_name}"


@dataclass(frozen=True)
class MachineCgroups:
    """Where one machine's cgroup lives on this host."""

    layout: CgroupLayout
    root: Path

    def cpu_seconds(self, machine_name: str) -> Optional[float]:
        """CPU time used by the machine's processes, or None if its cgroup is not there.

        podman puts the container's monitor (conmon) in a `conmon` child of the parent; its
        few milliseconds are the factory's, not the payload's, so they are taken off.
        """
        parent = self._usage(self._accounting_dir(machine_name))
        if parent is None:
            return None
        monitor = self._usage(self._accounting_dir(machine_name) / CONMON_CGROUP) or 0.0
        return max(0.0, parent - monitor)

    def _accounting_dir(self, machine_name: str) -> Path:
        if self.layout == CgroupLayout.V2:
            return self.root / VAC_CGROUP / machine_name
        return self.root / "cpuacct" / VAC_CGROUP / machine_name

    def _usage(self, directory: Path) -> Optional[float]:
        try:
            if self.layout == CgroupLayout.V2:
                for line in (directory / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
                return None
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def directories(self, machine_name: str) -> list[Path]:
        """Every directory of this machine's cgroup parent, deepest layout first (for removal)."""
        if self.layout == CgroupLayout.V2:
            candidates = [self.root / VAC_CGROUP / machine_name]
        else:
            candidates = [controller / VAC_CGROUP / machine_name for controller in sorted(self.root.iterdir())
                          if controller.is_dir() and not controller.is_symlink()]
        return [path for path in candidates if path.is_dir()]

    def remove(self, machine_name: str) -> list[str]:
        """Remove the machine's cgroup parent wherever it exists; return the ones left, with why.

        A cgroup directory is removed with rmdir (its files are the kernel's); one that still
        holds a process or a child cgroup stays, and is tried again at the next destroy.
        """
        left = []
        for directory in self.directories(machine_name):
            # Children first: the runtime normally removes its own, but not after a crash.
            for child in sorted((path for path in directory.rglob("*") if path.is_dir()), reverse=True):
                try:
                    os.rmdir(child)
                except OSError as error:
                    left.append(f"{child}: {error.strerror}")
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError as error:
                left.append(f"{directory}: {error.strerror}")
        return left
