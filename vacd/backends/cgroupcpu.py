"""A container machine's own cgroup, on cgroup v1 and v2 hosts: CPU time read, limits made.

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

podman makes its cgroups itself; for apptainer, which runs no monitor of its own, vacd makes
the machine's cgroup (`create`) with the same limits podman sets: a CFS quota of the
machine's processors, `cpu.shares` 1024 per processor (Vac 03's), and a hard memory limit.

The cgroup root is an argument, so the tests read and make trees of both layouts.
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


# The CFS period podman uses for --cpus; the quota is processors times this.
CFS_PERIOD_MICROSECONDS = 100000
# v1 controllers a machine's cgroup is made in: its limits (cpu, memory), its CPU time
# (cpuacct) and its process count (pids, so destroy can find every process).
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")


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

    def create(self, machine_name: str, processors: int, memory_mib: int) -> list[Path]:
        """Make the machine's cgroup with its limits; return the cgroup.procs files to join.

        Raises OSError naming the file that could not be made or written.
        """
        quota = processors * CFS_PERIOD_MICROSECONDS
        memory_bytes = memory_mib * 1024 * 1024
        if self.layout == CgroupLayout.V2:
            # Controllers reach a child only if every ancestor enables them for its children.
            for parent in (self.root, self.root / VAC_CGROUP):
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+cpu +memory +pids\n")
            directory = self.root / VAC_CGROUP / machine_name
            directory.mkdir(exist_ok=True)
            (directory / "cpu.max").write_text(f"{quota} {CFS_PERIOD_MICROSECONDS}\n")
            (directory / "cpu.weight").write_text(f"{min(10000, 100 * processors)}\n")
            (directory / "memory.max").write_text(f"{memory_bytes}\n")
            return [directory / "cgroup.procs"]
        procs: list[Path] = []
        seen: set[Path] = set()
        for controller in V1_CONTROLLERS:
            mount = self.root / controller
            if not mount.exists() or mount.resolve() in seen:
                continue  # cpu and cpuacct are one hierarchy (cpu,cpuacct) on some hosts
            seen.add(mount.resolve())
            directory = mount / VAC_CGROUP / machine_name
            directory.mkdir(parents=True, exist_ok=True)
            if (directory / "cpu.cfs_quota_us").exists() or controller == "cpu":
                (directory / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_MICROSECONDS}\n")
                (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
                (directory / "cpu.shares").write_text(f"{1024 * processors}\n")
            if controller == "memory":
                (directory / "memory.limit_in_bytes").write_text(f"{memory_bytes}\n")
            procs.append(directory / "cgroup.procs")
        return procs

    def process_ids(self, machine_name: str) -> list[int]:
        """Every process in the machine's cgroup (its pids or v2 cgroup, and all below)."""
        directory = (self.root / VAC_CGROUP / machine_name if self.layout == CgroupLayout.V2
                     else self.root / "pids" / VAC_CGROUP / machine_name)
        found: set[int] = set()
        for procs in [directory / "cgroup.procs", *directory.rglob("*/cgroup.procs")] if directory.is_dir() else []:
            try:
                found.update(int(line) for line in procs.read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(found)

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
