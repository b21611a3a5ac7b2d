"""Turn a machine record and its machinetype into the spec a backend creates.

Kept from Vac 03 (§1.11): an image name starting with `/` is used as it is; any other name
is `<machinetype_path>/files/<name>`; http(s) images come from the image cache. Memory is
processors x mb_per_processor (acceptance 9). A docker machine's spec carries its
`docker://` image and container_command as written (vacd.backends.podman resolves and runs
them); a singularity machine's image is resolved here as Vac 03 resolved it (a cached
URL, an absolute path or tree such as /cvmfs/unpacked.cern.ch/..., or a name under files/)
and run by vacd.backends.apptainer.

Under qemu:///system every file handed to QEMU (root image, kernel, initrd) is checked
with `qemu_access` first (vacd.qemuaccess, issue 8 item 12), so a file QEMU cannot open
is a creation failure naming the path, the user and the directory in the way, with the
usual backoff, rather than "Permission denied" from deep inside libvirt.

Every local file name goes through vacd.imagecheck (issue 11 item 1): a relative name must
stay under files/ and a /cvmfs path under /cvmfs once symlinks are resolved, and the
resolved path is what QEMU gets; root_image_sha256 and image_signing_dn are then enforced
on the image, cached or local.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from vacd.backends.base import MachineSpec
from vacd.config import VM_MACHINE_MODELS, Machinetype, Settings
from vacd.errors import VacError
from vacd.imagecheck import ImageVerifier
from vacd.lvm import VolumeRequest, volume_gb_per_processor
from vacd.paths import Paths
from vacd.qemuaccess import SYSTEM_URI
from vacd.slots import SlotIdentity
from vacd.records import MachineRecord

# Vac's default sparse root disk for cernvm3 machines: 40 GB per processor (Appendix C).
DEFAULT_DISK_GB_PER_PROCESSOR = 40


class UnsupportedMachineModel(VacError):
    pass


def machine_spec(
    settings: Settings,
    machinetype: Machinetype,
    record: MachineRecord,
    identity: SlotIdentity,
    machine_dir: Path,
    fetch_image: Optional[Callable[[str], Path]] = None,
    qemu_access: Optional[Callable[[Path], None]] = None,
    image_verifier: Optional[ImageVerifier] = None,
) -> MachineSpec:
    """The spec for `record`; raises VacError if a file is missing, refused or QEMU could not open it.

    `image_verifier` (vacd.imagecheck, issue 11 item 1) confines local paths and enforces
    root_image_sha256 and image_signing_dn; without one, a throwaway verifier of the
    default CA directory does the same with no digest cache.
    """
    verifier = image_verifier or ImageVerifier(Paths().certificates_dir)
    if machinetype.machine_model == "docker":
        return container_spec(machinetype, record, identity, machine_dir, machinetype.root_image)
    if machinetype.machine_model == "singularity":
        return container_spec(machinetype, record, identity, machine_dir,
                              singularity_image(machinetype, fetch_image))
    if machinetype.machine_model not in VM_MACHINE_MODELS:
        raise UnsupportedMachineModel(
            f"machinetype {machinetype.name}: machine_model {machinetype.machine_model} is not supported by this "
            "vacd (VM models cernvm3, cernvm4, vm-raw, and docker under podman)"
        )

    def locate(option: str, name: Optional[str]) -> Optional[Path]:
        if name is None:
            return None
        if name.startswith(("http://", "https://")):
            if fetch_image is None:
                raise VacError(f"machinetype {machinetype.name}: {name}: no image cache to fetch it with")
            return fetch_image(name)
        return verifier.locate(machinetype, option, name)

    root_kernel = locate("root_kernel", machinetype.root_kernel)
    root_image = None if root_kernel is not None else locate("root_image", machinetype.root_image)
    if root_kernel is None and root_image is None:
        raise VacError(f"machinetype {machinetype.name}: neither root_image nor root_kernel is set")
    root_initrd = locate("root_initrd", machinetype.root_initrd)
    for path in (root_kernel, root_image, root_initrd):
        if path is not None and not path.is_file():
            raise VacError(f"machinetype {machinetype.name}: {path} does not exist")
    verifier.check_boot_files(machinetype, root_image, root_kernel)
    if qemu_access is not None and SYSTEM_URI.fullmatch(settings.libvirt_uri):
        for path in (root_kernel, root_image, root_initrd):
            if path is not None:
                qemu_access(path)
    disk_gb = machinetype.disk_gb_per_processor or settings.disk_gb_per_processor or DEFAULT_DISK_GB_PER_PROCESSOR
    return MachineSpec(
        name=record.name,
        uuid=record.uuid,
        ordinal=record.ordinal,
        mac_address=identity.mac_address,
        ip_address=identity.ip_address,
        vnc_port=identity.vnc_port,
        processors=record.processors,
        memory_mib=record.mb,
        machine_dir=machine_dir,
        machine_model="cernvm3" if machinetype.machine_model == "cernvm4" else machinetype.machine_model,
        root_image=root_image,
        root_kernel=root_kernel,
        root_initrd=root_initrd,
        kernel_command_line=machinetype.kernel_command_line,
        root_device=machinetype.root_device,
        scratch_device=machinetype.scratch_device,
        disk_bytes=disk_gb * record.processors * 10**9,
        logical_volume=machine_volume(settings, machinetype, record),
    )


def machine_volume(settings: Settings, machinetype: Machinetype, record: MachineRecord) -> Optional[VolumeRequest]:
    """The machine's logical volume when volume_group is set (§1.11): named as the machine, sized as Vac 03."""
    if settings.volume_group is None:
        return None
    return VolumeRequest(
        volume_group=settings.volume_group,
        name=record.name,
        processors=record.processors,
        total_processors=max(settings.total_processors, record.processors),
        gb_per_processor=volume_gb_per_processor(machinetype.disk_gb_per_processor, settings.disk_gb_per_processor),
        factory_name=settings.factory_name,
    )


def singularity_image(machinetype: Machinetype, fetch_image: Optional[Callable[[str], Path]]) -> str:
    """What apptainer runs (§1.11): a cached URL, a docker:// reference, an image file or a tree."""
    name = machinetype.root_image
    if name is None:
        raise VacError(f"machinetype {machinetype.name}: machine_model singularity needs a root_image")
    if name.startswith("docker://"):
        return name
    if name.startswith(("http://", "https://")):
        if fetch_image is None:
            raise VacError(f"machinetype {machinetype.name}: {name}: no image cache to fetch it with")
        return str(fetch_image(name))
    path = Path(machinetype.resolve_file(name))
    if not path.exists():
        raise VacError(f"machinetype {machinetype.name}: {path} does not exist")
    return str(path)


def container_spec(machinetype: Machinetype, record: MachineRecord, identity: SlotIdentity,
                   machine_dir: Path, image: Optional[str]) -> MachineSpec:
    """The spec of a container machine: its image, command and binds, with the slot's identity."""
    if image is None or (machinetype.machine_model == "docker" and not image.startswith("docker://")):
        raise VacError(f"machinetype {machinetype.name}: machine_model docker needs root_image = docker://IMAGE, "
                       f"got {image!r}")
    return MachineSpec(
        name=record.name,
        uuid=record.uuid,
        ordinal=record.ordinal,
        mac_address=identity.mac_address,
        ip_address=identity.ip_address,
        vnc_port=identity.vnc_port,
        processors=record.processors,
        memory_mib=record.mb,
        machine_dir=machine_dir,
        machine_model=machinetype.machine_model,
        container_image=image,
        container_command=machinetype.container_command,
        cvmfs_repositories=tuple(machinetype.cvmfs_repositories),
        tmp_binds=tuple(machinetype.tmp_binds),
    )
