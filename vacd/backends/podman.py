"""Run `docker` machinetypes as podman containers (the container backend of vacd, issue 13).

Rules:
- Implements `vacd.backends.base.Backend` with the `podman` command (argv lists through
  vacd.commands, never a shell; Vac 03 ran `docker run` through one, §1.11). Containers are
  rootful, detached, named after the machine and labelled with its UUID and slot, which is
  what destroy checks before it touches one and what a restarted vacd adopts by: a running
  container whose label matches a live record is listed, so the factory adopts it as it
  adopts a domain.
- Each container has its slot's network namespace (vacd.backends.slotnetwork), so the guest
  API identifies it by address and link exactly as it does a VM, and a cgroup parent of its
  own (vacd.backends.cgroupcpu), where its CPU time is read on cgroup v1 and v2 alike.
- A container that exits is listed once more as SHUTTING_DOWN with its final CPU time (the
  factory writes that into the heartbeat it accounts from), and removed at the next
  listing, with its network and cgroup; the listing after that no longer has it, and the
  factory finalises the machine. A domain that powers off just vanishes; a container's last
  CPU seconds would vanish with it if it did too.
- shutdown() sends SIGTERM to the container's first process and returns (the ACPI button's
  counterpart); destroy() is `podman rm --force` and is idempotent: gone is success, and
  with a UUID only the container with that label is removed.
- Lifecycle events: a `podman events` process, read on a thread, wakes the factory when a
  container dies; the periodic pass is the safety net, as for libvirt. The reader gets a
  parent-death signal, so a vacd killed with SIGKILL leaves none behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from vacd.backends.base import MachineSpec, ObservedMachine, ObservedState
from vacd.backends.cgroupcpu import CgroupLayout, MachineCgroups, cgroup_layout, cgroup_parent_for
from vacd.backends.containerargv import (
    LABEL_MACHINE,
    LABEL_SLOT,
    LABEL_UUID,
    PODMAN_DEFAULT_NOFILE,
    ContainerLimits,
    docker_binds,
    podman_image_reference,
    podman_run_argv,
)
from vacd.backends.slotnetwork import SlotNetwork, remove_slot_network, set_up_slot_network
from vacd.commands import run_command
from vacd.errors import BackendError, CommandFailed, VacError

log = logging.getLogger(__name__)

CommandRunner = Callable[..., str]
# `podman run` pulls a missing image first; a large one over a slow link takes minutes,
# and creation runs on the factory's pool, so a hung registry costs one worker this long.
RUN_TIMEOUT_SECONDS = 900.0
# How long a destroy waits for the container's monitor to leave the cgroup parent.
CGROUP_RELEASE_SECONDS = 3.0
# podman's exit status and message for "no such container" (podman 4: 125 and this text).
_NO_SUCH_CONTAINER = re.compile(r"no such container|no container with (name|ID)", re.IGNORECASE)
# podman 4: "can only kill running containers. ID is in state exited: container state improper".
_NOT_RUNNING = re.compile(r"can only kill running containers|container state improper|not running", re.IGNORECASE)
_LIVE_STATES = {"running": ObservedState.RUNNING, "paused": ObservedState.PAUSED,
                "stopping": ObservedState.SHUTTING_DOWN}
# Stopped, exited, created and never started, or removing: the container's process is gone.
_ENDED_STATES = {"exited", "stopped", "created", "configured", "dead", "removing"}
_SLOT_IN_NAME = re.compile(r"[^.]*-([0-9]{1,6})(?:\.|$)")
_SLOT_LABEL = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class ListedContainer:
    """One vac-labelled container as `podman ps` shows it."""

    container_id: str
    name: str
    uuid: str
    state: str  # podman's word, lower case: running, paused, exited, created ...
    ordinal: Optional[int]


def parse_podman_ps(raw_output: str) -> list[ListedContainer]:
    """`podman ps --all --format json` output, as containers carrying vac's labels.

    Raises BackendError for output that is not a JSON list; entries without vac's labels
    or a name, or with fields of the wrong type, are skipped (not ours to judge).
    """
    try:
        listed = json.loads(raw_output or "[]")
    except ValueError as error:
        raise BackendError("list", "containers", f"podman ps output is not JSON: {error}") from error
    if not isinstance(listed, list):
        raise BackendError("list", "containers", "podman ps output is not a JSON list")
    containers = []
    for item in listed:
        labels = item.get("Labels") if isinstance(item, dict) else None
        names = item.get("Names") if isinstance(item, dict) else None
        if not isinstance(labels, dict) or not isinstance(names, list) or not names:
            continue
        uuid, machine, slot = labels.get(LABEL_UUID), labels.get(LABEL_MACHINE) or names[0], labels.get(LABEL_SLOT)
        if not isinstance(uuid, str) or not isinstance(machine, str):
            continue
        ordinal = (int(slot) if isinstance(slot, str) and _SLOT_LABEL.fullmatch(slot)
                   else slot_of_machine_name(machine))
        containers.append(ListedContainer(str(item.get("Id", "")), machine, uuid, str(item.get("State", "")).lower(),
                                          ordinal))
    return containers


def slot_of_machine_name(machine_name: str) -> Optional[int]:
    """The ordinal in `short-NN.domain` (vacd.slots.machine_name_for), or None."""
    match = _SLOT_IN_NAME.match(machine_name)
    return int(match.group(1)) if match else None


def host_rlimit(which: int, ceiling: int = PODMAN_DEFAULT_NOFILE) -> int:
    """The host's hard limit, capped at `ceiling` (podman's defaults above it fail with EPERM)."""
    _, hard = resource.getrlimit(which)
    return ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)


def host_nproc_limit(pid_max_file: Path = Path("/proc/sys/kernel/pid_max")) -> int:
    """The hard process limit a container can be given: also at most the kernel's pid_max.

    podman lowers its own (and so conmon's and the runtime's) RLIMIT_NPROC to pid_max; a
    container asking for more fails with EPERM (seen here: pid_max 32768, hard limit 96367).
    """
    limit = host_rlimit(resource.RLIMIT_NPROC)
    try:
        return min(limit, int(pid_max_file.read_text()))
    except (OSError, ValueError):
        return limit


def default_runtime(layout: CgroupLayout) -> Optional[str]:
    """runc on cgroup v1 or hybrid hosts (crun refuses hybrid mode); podman's own choice on v2."""
    return "runc" if layout == CgroupLayout.V1 else None


class PodmanBackend:
    """Container machines run by podman, with the slot's network and a cgroup of their own."""

    def __init__(
        self,
        *,
        bridge: str,
        podman: str = "podman",
        cgroups: Optional[MachineCgroups] = None,
        runtime: Optional[str] = "default",
        run_command: CommandRunner = run_command,
        nofile: Optional[int] = None,
        nproc: Optional[int] = None,
        cvmfs_root: Path = Path("/cvmfs"),
    ) -> None:
        self._bridge = bridge
        self._podman = podman
        if cgroups is None:
            cgroups = MachineCgroups(cgroup_layout(), Path("/sys/fs/cgroup"))
        self._cgroups = cgroups
        self._runtime = default_runtime(cgroups.layout) if runtime == "default" else runtime
        self._run_command = run_command
        self._nofile = nofile if nofile is not None else host_rlimit(resource.RLIMIT_NOFILE)
        self._nproc = nproc if nproc is not None else host_nproc_limit()
        self._cvmfs_root = cvmfs_root
        self._lock = threading.Lock()
        self._reported_ended: set[str] = set()
        self._events: Optional[subprocess.Popen[str]] = None
        self._events_thread: Optional[threading.Thread] = None
        self._closed = False

    # Creation ------------------------------------------------------------------------
    def create(self, spec: MachineSpec) -> None:
        if spec.machine_model != "docker" or spec.container_image is None:
            raise BackendError("create", spec.name, f"podman runs docker machines, not {spec.machine_model}")
        slot = SlotNetwork(spec.ordinal, spec.mac_address, spec.ip_address)
        try:
            image = podman_image_reference(spec.container_image)
            binds = docker_binds(spec.machine_dir, has_user_data=self._prepare_user_data(spec.machine_dir),
                                 cvmfs=self._cvmfs_available(spec.cvmfs_repositories),
                                 tmp_binds=self._make_tmp_binds(spec.machine_dir, spec.tmp_binds))
            argv = podman_run_argv(
                name=spec.name, uuid=spec.uuid, ordinal=spec.ordinal, image=image, command=spec.container_command,
                binds=binds, limits=ContainerLimits(spec.processors, spec.memory_mib, self._nofile, self._nproc),
                cgroup_parent=cgroup_parent_for(spec.name), network_namespace=slot.namespace_path,
                runtime=self._runtime, podman=self._podman,
            )
        except (ValueError, OSError) as error:  # a path that cannot be bound, an image name, MD/mnt
            raise BackendError("create", spec.name, str(error)) from error
        try:
            set_up_slot_network(slot, self._bridge)
        except Exception as error:  # pyroute2's NetlinkError is no OSError; any failure is this creation's
            raise BackendError("create", spec.name, f"slot network: {error}") from error
        try:
            container_id = self._run_command(argv, timeout_seconds=RUN_TIMEOUT_SECONDS).strip().splitlines()[-1]
        except (CommandFailed, IndexError) as error:
            # podman leaves a container that failed to start in state "created": remove it,
            # or the next listing would show the slot occupied by it.
            try:
                self._run_command([self._podman, "rm", "--force", "--time", "0", spec.name])
            except CommandFailed as removal:
                if not _NO_SUCH_CONTAINER.search(removal.stderr_tail):
                    log.error("cannot remove failed container name=%s error=%s", spec.name, removal)
            self._remove_leftovers(spec.name, spec.ordinal)
            raise BackendError("create", spec.name, str(error)) from error
        log.info("container started name=%s container_id=%s image=%s", spec.name, container_id[:12], image)

    def _prepare_user_data(self, machine_dir: Path) -> bool:
        """Make MD/user_data executable by the container's root, as Vac 03 did (0755 there).

        Only the owner's bits: the file may hold a proxy and site secrets (vacd.guestapi.
        contextualise writes it 0600), and root in a rootful container is the owner.
        """
        user_data = machine_dir / "user_data"
        if not user_data.is_file():
            return False
        os.chmod(user_data, 0o700)
        return True

    def _cvmfs_available(self, repositories: tuple[str, ...]) -> bool:
        """Whether /cvmfs is bound: asked for, and there; each repository listed to mount it (§1.11)."""
        if not repositories or not self._cvmfs_root.is_dir():
            return False
        for repository in repositories:
            try:
                os.listdir(self._cvmfs_root / repository)
            except OSError as error:
                log.warning("cvmfs repository not mounted repository=%s error=%s", repository, error.strerror)
        return True

    def _make_tmp_binds(self, machine_dir: Path, targets: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
        """A fresh directory in MD/mnt for each tmp_binds path (§1.11: prefix from the path)."""
        if not targets:
            return ()
        mount_dir = machine_dir / "mnt"
        mount_dir.mkdir(mode=0o755, exist_ok=True)
        made = []
        for target in targets:
            directory = Path(tempfile.mkdtemp(prefix=target.replace("/", "_")[:30], dir=mount_dir))
            os.chmod(directory, 0o755)
            made.append((target, directory))
        return tuple(made)

    # Stopping ------------------------------------------------------------------------
    def shutdown(self, name: str) -> None:
        try:
            self._run_command([self._podman, "kill", "--signal", "TERM", name])
        except CommandFailed as error:
            # Gone, or not running (exited, or created and never started): nothing to stop.
            if _NO_SUCH_CONTAINER.search(error.stderr_tail) or _NOT_RUNNING.search(error.stderr_tail):
                return
            raise BackendError("shutdown", name, str(error)) from error

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        container = self._inspect(name)
        if container is not None and uuid is not None and container.uuid != uuid:
            log.debug("not destroying container name=%s: its uuid=%s is not %s", name, container.uuid, uuid)
            return
        if container is not None:
            try:
                self._run_command([self._podman, "rm", "--force", "--time", "0", name])
            except CommandFailed as error:
                if not _NO_SUCH_CONTAINER.search(error.stderr_tail):
                    raise BackendError("destroy", name, str(error)) from error
        # Only a container of ours has its network and cgroup torn down here: a destroy of
        # the name is also sent for VMs and apptainer machines (vacd.backends.bymodel), whose
        # slot network is not podman's. What a crash left between the slot network and
        # `podman run` is replaced by the next creation in the slot.
        if container is not None:
            self._remove_leftovers(name, container.ordinal)

    def _remove_leftovers(self, name: str, ordinal: Optional[int]) -> None:
        """The slot network and the cgroup parent of a container that is gone."""
        if ordinal is not None:
            remove_slot_network(name, ordinal)
        # conmon leaves its cgroup a moment after `podman rm` returns: wait for it, briefly.
        deadline = time.monotonic() + CGROUP_RELEASE_SECONDS
        left = self._cgroups.remove(name)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self._cgroups.remove(name)
        if left:
            log.warning("cgroup of container not removed name=%s left=%s; reused by the slot's next container",
                        name, "; ".join(left))

    # Observing -----------------------------------------------------------------------
    def _inspect(self, name: str) -> Optional[ListedContainer]:
        for entry in self._list():
            if entry.name == name:
                return entry
        return None

    def _list(self) -> list[ListedContainer]:
        argv = [self._podman, "ps", "--all", "--filter", f"label={LABEL_UUID}", "--format", "json"]
        try:
            return parse_podman_ps(self._run_command(argv))
        except CommandFailed as error:
            raise BackendError("list", "containers", str(error)) from error

    def list_machines(self) -> Sequence[ObservedMachine]:
        observed = []
        ended_now = set()
        for entry in self._list():
            name, state = entry.name, entry.state
            cpu_seconds = self._cgroups.cpu_seconds(name) or 0.0
            if state in _LIVE_STATES:
                observed.append(ObservedMachine(name, entry.uuid, _LIVE_STATES[state], cpu_seconds))
                continue
            if state not in _ENDED_STATES:
                log.warning("container in unknown state name=%s state=%s: listed as paused", name, state)
                observed.append(ObservedMachine(name, entry.uuid, ObservedState.PAUSED, cpu_seconds))
                continue
            ended_now.add(entry.container_id)
            with self._lock:
                reported = entry.container_id in self._reported_ended
            if not reported:
                # Once, so the factory records the final CPU time in the heartbeat it accounts from.
                observed.append(ObservedMachine(name, entry.uuid, ObservedState.SHUTTING_DOWN, cpu_seconds))
                continue
            try:
                self.destroy(name, entry.uuid)
                log.info("ended container removed name=%s uuid=%s cpu_seconds=%.1f", name, entry.uuid,
                         cpu_seconds)
            except (BackendError, VacError) as error:
                log.error("cannot remove ended container name=%s error=%s retry=next listing", name, error)
                observed.append(ObservedMachine(name, entry.uuid, ObservedState.SHUTTING_DOWN, cpu_seconds))
        with self._lock:
            # Remember only containers still there; a removed one's ID never comes back.
            self._reported_ended = ended_now
        return observed

    # Events --------------------------------------------------------------------------
    def watch(self, wake: Callable[[str], None]) -> None:
        if self._events is not None or self._closed:
            return
        argv = [self._podman, "events", "--filter", "type=container", "--filter", "event=died",
                "--format", "{{.Name}}"]
        # The reader must not outlive a vacd killed with SIGKILL: setpriv (util-linux, Debian
        # and EL9) sets the parent-death signal and execs podman, which keeps it. The signal
        # follows the thread that started it, so watch() is called from vacd's main thread.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        try:
            self._events = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                            stdin=subprocess.DEVNULL, text=True)
        except OSError as error:
            log.warning("no container events (%s): container ends are seen at the next pass", error)
            return
        events = self._events

        def read_events() -> None:
            assert events.stdout is not None
            for line in events.stdout:
                if line.strip():
                    wake(line.strip())
            if not self._closed:
                log.warning("podman events ended (exit status %s): container ends are seen at the next pass",
                            events.poll())

        self._events_thread = threading.Thread(target=read_events, name="podman-events", daemon=True)
        self._events_thread.start()

    def close(self) -> None:
        self._closed = True
        if self._events is not None:
            self._events.terminate()
            try:
                self._events.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._events.kill()
                self._events.wait()
            if self._events.stdout is not None:
                self._events.stdout.close()
            self._events = None
