"""The argv lists that start container machines: podman for docker, apptainer for singularity.

Pure: paths, limits and names in, an argv list out; nothing here runs a command or reads
the host. The binds are Vac 03's (§1.11), so a payload written for Vac 03's containers finds
its files where it always did:

| Inside the container           | From the host                 | docker | singularity |
|--------------------------------|-------------------------------|--------|-------------|
| machinefeatures (read-only)    | MD/machinefeatures            | /etc/machinefeatures | /tmp/machinefeatures |
| jobfeatures (read-only)        | MD/jobfeatures                | /etc/jobfeatures     | /tmp/jobfeatures     |
| $JOBOUTPUTS (read-write)       | MD/joboutputs                 | /var/spool/joboutputs | /tmp/joboutputs     |
| /user_data (read-only)         | MD/user_data, if there is one | /user_data           | /user_data           |
| /cvmfs (read-only)             | /cvmfs, if cvmfs_repositories | /cvmfs               | /cvmfs               |
| each tmp_binds path            | a fresh directory in MD/mnt   | yes                  | no (Vac 03: docker only) |

Rules:
- `container_command` is one argv element, never a shell string (Vac 03 ran `docker run`
  through a shell, anti-pattern 2): config parsing already refuses spaces in it.
- A host path that would change the meaning of a bind option (`:` in `--volume`, `,` in
  apptainer's `--bind` list) is refused with ValueError naming it, never quoted around.
- Vac 03's limits were soft (`--cpu-shares`, `--memory-reservation`); these are hard, so a
  container gets what the scheduler counted for it and no more: `--cpus` (CFS quota) and
  `--memory`, with `--cpu-shares` kept as Vac 03 set it for contention within the quota.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DOCKER_SCHEME = "docker://"
# Docker's default registry, which a bare `docker://name` meant to Vac 03's docker (§1.11);
# podman would otherwise ask its short-name resolution, which may prompt or differ per host.
DOCKER_DEFAULT_REGISTRY = "docker.io"
# podman's --ulimit defaults (1048576 open files) exceed this kind of host's hard limits
# and fail with EPERM (issue 13 item 3), so limits are capped at the host's hard limits.
PODMAN_DEFAULT_NOFILE = 1048576
LABEL_UUID = "vac.uuid"
LABEL_MACHINE = "vac.machine"
LABEL_SLOT = "vac.slot"

# Where a container model's files appear inside the container (§1.11).
DOCKER_MACHINEFEATURES = "/etc/machinefeatures"
DOCKER_JOBFEATURES = "/etc/jobfeatures"
DOCKER_JOBOUTPUTS = "/var/spool/joboutputs"
SINGULARITY_MACHINEFEATURES = "/tmp/machinefeatures"
SINGULARITY_JOBFEATURES = "/tmp/jobfeatures"
SINGULARITY_JOBOUTPUTS = "/tmp/joboutputs"
USER_DATA_PATH = "/user_data"
CVMFS = "/cvmfs"

_IMAGE_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")


@dataclass(frozen=True)
class Bind:
    """One host path made visible at `target` inside the container."""

    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerLimits:
    """The cgroup and rlimit settings for one container."""

    processors: int
    memory_mib: int
    nofile: int  # soft = hard, within the host's hard limit
    nproc: int


def podman_image_reference(root_image: str) -> str:
    """`docker://IMAGE` as Vac 03 wrote it, as the full reference Docker would have pulled.

    `docker://busybox` -> `docker.io/library/busybox`; `docker://lhcb/x:1` ->
    `docker.io/lhcb/x:1`; a first part with a dot, a colon or `localhost` is a registry
    and is kept (`docker://localhost/vac-test:1`, `docker://gitlab-registry.cern.ch/...`).
    """
    if not root_image.startswith(DOCKER_SCHEME):
        raise ValueError(f"expected docker://IMAGE, got {root_image!r}")
    reference = root_image[len(DOCKER_SCHEME):]
    if not _IMAGE_REFERENCE.fullmatch(reference) or ".." in reference:
        raise ValueError(f"not an image reference: {root_image!r}")
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return reference
    if not slash:
        return f"{DOCKER_DEFAULT_REGISTRY}/library/{reference}"
    return f"{DOCKER_DEFAULT_REGISTRY}/{reference}"


def docker_binds(machine_dir: Path, *, has_user_data: bool, cvmfs: bool,
                 tmp_binds: tuple[tuple[str, Path], ...] = ()) -> tuple[Bind, ...]:
    """Vac 03's binds for a docker machine (§1.11); tmp_binds pairs are (target, host dir)."""
    return _machine_binds(machine_dir, (DOCKER_MACHINEFEATURES, DOCKER_JOBFEATURES, DOCKER_JOBOUTPUTS),
                          has_user_data=has_user_data, cvmfs=cvmfs) + tuple(
        Bind(host, target, False) for target, host in tmp_binds)


def singularity_binds(machine_dir: Path, *, has_user_data: bool, cvmfs: bool) -> tuple[Bind, ...]:
    """Vac 03's binds for a singularity machine (§1.11)."""
    return _machine_binds(
        machine_dir, (SINGULARITY_MACHINEFEATURES, SINGULARITY_JOBFEATURES, SINGULARITY_JOBOUTPUTS),
        has_user_data=has_user_data, cvmfs=cvmfs)


def _machine_binds(machine_dir: Path, feature_targets: tuple[str, str, str], *, has_user_data: bool,
                   cvmfs: bool) -> tuple[Bind, ...]:
    """MJF read-only, joboutputs writable, then user_data and /cvmfs: the order both models use.

    `feature_targets` are the model's paths for machinefeatures, jobfeatures and joboutputs.
    """
    machinefeatures, jobfeatures, joboutputs = feature_targets
    binds = [
        Bind(machine_dir / "machinefeatures", machinefeatures, True),
        Bind(machine_dir / "jobfeatures", jobfeatures, True),
        Bind(machine_dir / "joboutputs", joboutputs, False),
    ]
    if has_user_data:
        binds.append(Bind(machine_dir / "user_data", USER_DATA_PATH, True))
    if cvmfs:
        binds.append(Bind(Path(CVMFS), CVMFS, True))
    return tuple(binds)


def _checked(path: str, forbidden: str, what: str) -> str:
    if not path.startswith("/") or any(character in path for character in forbidden):
        raise ValueError(f"{what} {path!r} must be absolute and contain none of {forbidden!r}")
    return path


def podman_run_argv(
    *,
    name: str,
    uuid: str,
    ordinal: int,
    image: str,
    command: str,
    binds: tuple[Bind, ...],
    limits: ContainerLimits,
    cgroup_parent: str,
    network_namespace: Optional[Path],
    runtime: Optional[str],
    podman: str = "podman",
) -> list[str]:
    """`podman run --detach ...` for one docker machine; stdout of it is the container ID.

    `cgroup_parent` is a cgroupfs path of this machine's own (`/vac/NAME`): the container's
    CPU time is read there, and it survives the container's exit (vacd.backends.cgroupcpu).
    `network_namespace` is the slot's namespace (vacd.backends.slotnetwork); None means no
    network at all. The labels carry the record's UUID, the ownership check of destroy and
    of adoption after a restart.
    """
    argv = [podman, "--cgroup-manager", "cgroupfs", "run", "--detach", "--name", name, "--hostname", name,
            "--label", f"{LABEL_UUID}={uuid}", "--label", f"{LABEL_MACHINE}={name}",
            "--label", f"{LABEL_SLOT}={ordinal}",
            "--cgroup-parent", _checked(cgroup_parent, ":, ", "cgroup parent"),
            "--cpus", str(limits.processors), "--cpu-shares", str(1024 * limits.processors),
            "--memory", f"{limits.memory_mib}m",
            "--ulimit", f"nofile={limits.nofile}:{limits.nofile}",
            "--ulimit", f"nproc={limits.nproc}:{limits.nproc}",
            "--network", "none" if network_namespace is None
            else "ns:" + _checked(str(network_namespace), ":,", "network namespace"),
            # Whatever the host's containers.conf grants: with either of these a container
            # could speak with another slot's address or MAC on the guest bridge.
            "--cap-drop", "NET_ADMIN", "--cap-drop", "NET_RAW"]
    if runtime is not None:
        argv += ["--runtime", runtime]
    for bind in binds:
        source = _checked(str(bind.source), ":,", "bind source")
        target = _checked(bind.target, ":,", "bind target")
        argv += ["--volume", f"{source}:{target}:{'ro' if bind.read_only else 'rw'}"]
    # The MJF variables (HEPiX MJF: $MACHINEFEATURES, $JOBFEATURES) and $JOBOUTPUTS name the
    # bound directories, so a payload need not know which model it runs under.
    for variable, target in (("MACHINEFEATURES", DOCKER_MACHINEFEATURES), ("JOBFEATURES", DOCKER_JOBFEATURES),
                             ("JOBOUTPUTS", DOCKER_JOBOUTPUTS)):
        argv += ["--env", f"{variable}={target}"]
    argv += [image, command]
    return argv


def apptainer_exec_argv(
    *,
    image: str,
    command: str,
    binds: tuple[Bind, ...],
    workdir: Path,
    apptainer: str = "apptainer",
) -> list[str]:
    """`apptainer exec ...` for one singularity machine, as Vac 03 ran `singularity exec` (§1.11).

    Options are apptainer's documented ones (`apptainer exec --help`, 1.0 and later):
    `--contain` (no host /home, /tmp, /var/tmp), `--workdir DIR` (where those come from
    instead), `--bind SRC:DST[:ro]` (repeatable). The host name, network and cgroups are not
    apptainer's to set: vacd.backends.apptainerlaunch enters the slot's namespaces and the
    machine's cgroups before it execs this, as Vac 03's forked child did, and apptainer
    (no `--net`, no `--uts`) keeps them.
    """
    argv = [apptainer, "exec", "--contain", "--workdir", _checked(str(workdir), ":,", "workdir")]
    for bind in binds:
        source = _checked(str(bind.source), ":,", "bind source")
        target = _checked(bind.target, ":,", "bind target")
        argv += ["--bind", f"{source}:{target}" + (":ro" if bind.read_only else "")]
    argv += [image, command]
    return argv
