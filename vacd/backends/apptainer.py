"""Run `singularity` machinetypes with apptainer, where an apptainer binary is installed (issue 13).

Rules:
- Implements `vacd.backends.base.Backend`. apptainer has no daemon and no monitor, so a
  machine is a process tree: vacd starts vacd.backends.apptainerlaunch in a session of its
  own, which joins the machine's cgroup (vacd.backends.cgroupcpu.create: CPU quota, shares,
  memory limit), enters the slot's network namespace (vacd.backends.slotnetwork, as for
  podman), sets the host name in a UTS namespace of its own, drops to `singularity_user`
  and execs `apptainer exec` with Vac 03's binds (vacd.backends.containerargv).
- What vacd knows of a machine is a record in `state_dir/NAME.json` (UUID, slot, head pid
  and its start time in clock ticks), written atomically before the machine counts as
  created: a restarted vacd adopts a machine whose head process is still the one recorded
  (pid and start time, so a reused pid is not taken for it).
- The head process ending is the machine ending: the next listing shows it once as
  SHUTTING_DOWN with its final CPU time (from the cgroup, which outlives it), and the one
  after removes whatever is left: every process in its cgroup is killed (Vac 03's SIGKILL
  of the Singularity user's processes, §1.7, limited to this machine's), then the cgroup,
  the namespace and the record go.
- shutdown() sends SIGTERM to every process in the machine's cgroup; destroy() SIGKILL,
  and is idempotent, and with a UUID touches only the machine recorded with that UUID.
- No apptainer ran on the project's test host (Debian 12 has none): the tests run this
  backend with a stand-in executable in apptainer's place, which exercises everything here
  but apptainer itself (docs/containers.md).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from vacd.atomicfile import write_atomic
from vacd.backends.base import MachineSpec, ObservedMachine, ObservedState
from vacd.backends.cgroupcpu import MachineCgroups
from vacd.backends.containerargv import (
    SINGULARITY_JOBFEATURES,
    SINGULARITY_JOBOUTPUTS,
    SINGULARITY_MACHINEFEATURES,
    apptainer_exec_argv,
    singularity_binds,
)
from vacd.backends.slotnetwork import SlotNetwork, remove_slot_network, set_up_slot_network
from vacd.errors import BackendError

log = logging.getLogger(__name__)

# How long destroy waits for SIGKILLed processes to leave the cgroup before it gives up
# for this pass (a process in uninterruptible sleep on a hung /cvmfs); the next pass retries.
KILL_WAIT_SECONDS = 10.0
CONSOLE_LOG = "console.log"


def process_start_ticks(pid: int) -> Optional[int]:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if no such live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


class ApptainerBackend:
    """Singularity machines as apptainer process trees in their own cgroup and slot network."""

    def __init__(self, *, bridge: str, user: str, state_dir: Path, cgroups: MachineCgroups,
                 apptainer: str = "apptainer", python: str = sys.executable) -> None:
        self._bridge = bridge
        self._user = user
        self._state_dir = state_dir
        self._cgroups = cgroups
        self._apptainer = apptainer
        self._python = python
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._reported_ended: set[str] = set()
        self._wake: Optional[Callable[[str], None]] = None

    # Creation ------------------------------------------------------------------------
    def create(self, spec: MachineSpec) -> None:
        if spec.machine_model != "singularity" or spec.container_image is None:
            raise BackendError("create", spec.name, f"apptainer runs singularity machines, not {spec.machine_model}")
        try:
            account = pwd.getpwnam(self._user)
        except KeyError as error:
            raise BackendError("create", spec.name, f"singularity_user {self._user} does not exist") from error
        slot = SlotNetwork(spec.ordinal, spec.mac_address, spec.ip_address)
        try:
            workdir = spec.machine_dir / "mnt"
            workdir.mkdir(mode=0o700, exist_ok=True)
            # Vac 03 chowned these two to the Singularity user (§1.11): the payload writes them.
            for directory in (workdir, spec.machine_dir / "joboutputs"):
                os.chown(directory, account.pw_uid, account.pw_gid)
            user_data = spec.machine_dir / "user_data"
            has_user_data = user_data.is_file()
            if has_user_data:
                # Readable and runnable by the payload's user only (it may hold a proxy).
                os.chown(user_data, account.pw_uid, account.pw_gid)
                os.chmod(user_data, 0o500)
            cvmfs = bool(spec.cvmfs_repositories) and Path("/cvmfs").is_dir()
            argv = apptainer_exec_argv(image=spec.container_image, command=spec.container_command,
                                       binds=singularity_binds(spec.machine_dir, has_user_data=has_user_data,
                                                               cvmfs=cvmfs),
                                       workdir=workdir, apptainer=self._apptainer)
            set_up_slot_network(slot, self._bridge)
            procs = self._cgroups.create(spec.name, spec.processors, spec.memory_mib)
        except Exception as error:  # OSError, ValueError, pyroute2's NetlinkError: this creation's
            self._remove_leftovers(spec.name, spec.ordinal)
            raise BackendError("create", spec.name, str(error)) from error
        launch = {
            "argv": argv, "hostname": spec.name, "network_namespace": str(slot.namespace_path),
            "cgroup_procs": [str(path) for path in procs], "uid": account.pw_uid, "gid": account.pw_gid,
            "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C",
                            "MACHINEFEATURES": SINGULARITY_MACHINEFEATURES, "JOBFEATURES": SINGULARITY_JOBFEATURES,
                            "JOBOUTPUTS": SINGULARITY_JOBOUTPUTS},
        }
        console = open(spec.machine_dir / CONSOLE_LOG, "ab")
        try:
            child = subprocess.Popen([self._python, "-m", "vacd.backends.apptainerlaunch", json.dumps(launch)],
                                     stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                     start_new_session=True, cwd="/")
        except OSError as error:
            self._remove_leftovers(spec.name, spec.ordinal)
            raise BackendError("create", spec.name, f"cannot start the launcher: {error}") from error
        finally:
            console.close()
        start_ticks = process_start_ticks(child.pid)
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._state_dir / f"{spec.name}.json", json.dumps(
            {"uuid": spec.uuid, "ordinal": spec.ordinal, "pid": child.pid, "start_ticks": start_ticks}))
        with self._lock:
            self._children[spec.name] = child
        threading.Thread(target=self._wait_for, args=(spec.name, child), name=f"apptainer-{spec.ordinal}",
                         daemon=True).start()
        log.info("apptainer machine started name=%s pid=%d image=%s", spec.name, child.pid, spec.container_image)

    def _wait_for(self, name: str, child: "subprocess.Popen[bytes]") -> None:
        """Reap our own child when it ends (no zombie) and wake the factory."""
        child.wait()
        wake = self._wake
        if wake is not None:
            wake(name)

    # Observing -----------------------------------------------------------------------
    def _records(self) -> list[tuple[str, dict[str, object]]]:
        if not self._state_dir.is_dir():
            return []
        found = []
        for path in sorted(self._state_dir.glob("*.json")):
            try:
                found.append((path.name[:-len(".json")], json.loads(path.read_text())))
            except (OSError, ValueError) as error:
                log.error("unreadable apptainer machine record %s error=%s", path, error)
        return found

    def _is_alive(self, name: str, record: dict[str, object]) -> bool:
        pid, start_ticks = record.get("pid"), record.get("start_ticks")
        with self._lock:
            child = self._children.get(name)
        if child is not None and child.pid == pid:
            return child.poll() is None
        return isinstance(pid, int) and start_ticks is not None and process_start_ticks(pid) == start_ticks

    def list_machines(self) -> Sequence[ObservedMachine]:
        observed = []
        ended_now = set()
        for name, record in self._records():
            uuid = str(record.get("uuid", ""))
            cpu_seconds = self._cgroups.cpu_seconds(name) or 0.0
            if self._is_alive(name, record):
                observed.append(ObservedMachine(name, uuid, ObservedState.RUNNING, cpu_seconds))
                continue
            ended_now.add(name + uuid)
            with self._lock:
                reported = name + uuid in self._reported_ended
            if not reported:
                observed.append(ObservedMachine(name, uuid, ObservedState.SHUTTING_DOWN, cpu_seconds))
                continue
            try:
                self.destroy(name, uuid)
            except BackendError as error:
                log.error("cannot clear ended apptainer machine name=%s error=%s retry=next listing", name, error)
                observed.append(ObservedMachine(name, uuid, ObservedState.SHUTTING_DOWN, cpu_seconds))
        with self._lock:
            self._reported_ended = ended_now
        return observed

    # Stopping ------------------------------------------------------------------------
    def _signal_all(self, name: str, signal_number: int) -> list[int]:
        pids = self._cgroups.process_ids(name)
        for pid in pids:
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                continue
        return pids

    def shutdown(self, name: str) -> None:
        if (self._state_dir / f"{name}.json").exists():
            self._signal_all(name, signal.SIGTERM)

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        path = self._state_dir / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return  # not an apptainer machine of ours, or gone: success
        except (OSError, ValueError) as error:
            raise BackendError("destroy", name, f"unreadable record {path}: {error}") from error
        if uuid is not None and record.get("uuid") != uuid:
            return
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while self._signal_all(name, signal.SIGKILL):
            if time.monotonic() > deadline:
                raise BackendError("destroy", name, f"processes still in its cgroup after SIGKILL and "
                                                    f"{KILL_WAIT_SECONDS:.0f} s: {self._cgroups.process_ids(name)}")
            time.sleep(0.1)
        with self._lock:
            child = self._children.pop(name, None)
        if child is not None:
            child.wait()
        ordinal = record.get("ordinal")
        self._remove_leftovers(name, ordinal if isinstance(ordinal, int) else None)
        path.unlink(missing_ok=True)
        log.info("apptainer machine removed name=%s uuid=%s", name, record.get("uuid"))

    def _remove_leftovers(self, name: str, ordinal: Optional[int]) -> None:
        if ordinal is not None:
            remove_slot_network(name, ordinal)
        left = self._cgroups.remove(name)
        if left:
            log.warning("cgroup of apptainer machine not removed name=%s left=%s", name, "; ".join(left))

    def watch(self, wake: Callable[[str], None]) -> None:
        self._wake = wake

    def close(self) -> None:
        """Nothing to release: machines keep running, and are adopted at the next start."""
        self._wake = None
