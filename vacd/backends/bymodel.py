"""One backend made of several, chosen by machine model: VMs to libvirt, docker to podman.

Rules:
- create() goes to the backend of the spec's machine model; a model with no backend here is
  a BackendError naming the model and what is missing (podman not installed), so the factory
  backs the machinetype off and says why in factory-error.
- Names are the factory's slot names whichever backend runs them, so list_machines() is the
  union of every backend's list, and shutdown() and destroy() go to every backend: each is
  idempotent by name (gone is success), and a destroy with a UUID touches only the machine
  with that UUID, so a backend that does not run the machine does nothing.
- If any backend cannot list, the whole listing fails (BackendError): the factory then makes
  no destroy decision that pass, rather than taking a container for a missing machine.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from vacd.backends.base import Backend, MachineSpec, ObservedMachine
from vacd.errors import BackendError

log = logging.getLogger(__name__)

VM_MODELS = ("cernvm3", "vm-raw")  # cernvm4 reaches the backend as cernvm3 (vacd.machinespec)


class BackendsByModel:
    """Dispatch to a backend per machine model; observe through all of them."""

    def __init__(self, backends: Mapping[str, Backend], missing: Optional[Mapping[str, str]] = None) -> None:
        self._by_model = dict(backends)
        self._missing = dict(missing or {})
        # Each distinct backend once, in the order given, for listing, stopping and closing.
        self._backends: list[Backend] = []
        for backend in self._by_model.values():
            if all(backend is not known for known in self._backends):
                self._backends.append(backend)

    def create(self, spec: MachineSpec) -> None:
        backend = self._by_model.get(spec.machine_model)
        if backend is None:
            reason = self._missing.get(spec.machine_model, "no backend runs this machine model")
            raise BackendError("create", spec.name, f"machine_model {spec.machine_model}: {reason}")
        backend.create(spec)

    def shutdown(self, name: str) -> None:
        self._to_every_backend(lambda backend: backend.shutdown(name))

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        self._to_every_backend(lambda backend: backend.destroy(name, uuid))

    def _to_every_backend(self, action: Callable[[Backend], None]) -> None:
        """Every backend is asked even if one fails (libvirt refuses a container's label as a
        UUID, say): the machine is stopped by the backend that runs it, and the first failure
        is raised afterwards so the factory retries."""
        failure: Optional[BackendError] = None
        for backend in self._backends:
            try:
                action(backend)
            except BackendError as error:
                failure = failure or error
        if failure is not None:
            raise failure

    def list_machines(self) -> Sequence[ObservedMachine]:
        observed: list[ObservedMachine] = []
        for backend in self._backends:
            observed.extend(backend.list_machines())
        return observed

    def watch(self, wake: Callable[[str], None]) -> None:
        for backend in self._backends:
            backend.watch(wake)

    def close(self) -> None:
        for backend in self._backends:
            backend.close()


def machine_backends(vm_backend: Backend, *, bridge: str, state_dir: Path, singularity_user: Optional[str] = None,
                     podman: Optional[str] = None, apptainer: Optional[str] = None,
                     docker_machinetypes: Sequence[str] = (), simulated: bool = False) -> BackendsByModel:
    """libvirt for VMs; podman for docker and apptainer for singularity where they are installed.

    `docker_machinetypes` (those configured at start) only decide how loudly a missing
    podman is said: a warning naming them, else a line at INFO. A `simulated` factory
    (libvirt's test driver: no guest network, no real guests) runs no containers either.
    apptainer needs `singularity_user` too (configuration refuses singularity without it).
    """
    from vacd.backends.apptainer import ApptainerBackend
    from vacd.backends.cgroupcpu import CGROUP_ROOT, MachineCgroups, cgroup_layout
    from vacd.backends.podman import PodmanBackend

    backends: dict[str, Backend] = {model: vm_backend for model in VM_MODELS}
    missing: dict[str, str] = {}
    podman_path = podman or shutil.which("podman")
    apptainer_path = apptainer or shutil.which("apptainer")
    if simulated:
        missing["singularity"] = "libvirt's test driver: this factory runs no real machines, so no containers"
    elif apptainer_path is None:
        missing["singularity"] = "apptainer is not installed on this host (docs/containers.md)"
    elif singularity_user is None:
        missing["singularity"] = "singularity_user is not set in [settings]"
    else:
        backends["singularity"] = ApptainerBackend(
            bridge=bridge, user=singularity_user, state_dir=state_dir, apptainer=apptainer_path,
            cgroups=MachineCgroups(cgroup_layout(CGROUP_ROOT), CGROUP_ROOT))
    if simulated:
        missing["docker"] = "libvirt's test driver: this factory runs no real machines, so no containers"
    elif podman_path is None:
        missing["docker"] = "podman is not installed on this host (install the podman package)"
        if docker_machinetypes:
            log.warning("no podman on this host: docker machinetypes %s cannot be created (install the podman "
                        "package)", " ".join(docker_machinetypes))
        else:
            log.info("no podman on this host: docker machinetypes cannot be created")
    else:
        backends["docker"] = PodmanBackend(bridge=bridge, podman=podman_path)
    return BackendsByModel(backends, missing)
