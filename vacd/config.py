"""Read Vac-03-compatible configuration into typed, validated Settings and Machinetypes.

THIS FILE IS A CONTRACT STUB: the dataclasses below are the agreed interface; the parser
(load_config / parse_config) is being written to fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

MACHINE_MODELS = ("cernvm3", "cernvm4", "vm-raw", "docker", "singularity")
VM_MACHINE_MODELS = ("cernvm3", "cernvm4", "vm-raw")


@dataclass(frozen=True)
class FactoryAddress:
    """One entry of [settings] factories: a canonical FQDN and, optionally, a fixed address."""

    name: str
    address: Optional[str] = None


@dataclass(frozen=True)
class Machinetype:
    """One [machinetype NAME] section with Vac 03's defaults (§2.4, acceptance 3)."""

    name: str
    machinegroup: str
    machinetype_path: Path
    target_share: float = 0.0
    machine_model: str = "cernvm3"
    root_image: Optional[str] = None
    root_kernel: Optional[str] = None
    root_initrd: Optional[str] = None
    kernel_command_line: str = ""
    user_data: Optional[str] = None
    user_data_options: Mapping[str, str] = field(default_factory=dict)
    user_data_files: Mapping[str, str] = field(default_factory=dict)
    user_data_proxy: bool = False
    legacy_proxy: bool = False
    min_processors: int = 1
    max_processors: int = 1
    max_wallclock_seconds: int = 86400
    min_wallclock_seconds: int = 86400
    backoff_seconds: int = 10
    fizzle_seconds: int = 600
    heartbeat_file: Optional[str] = None
    heartbeat_seconds: int = 0
    accounting_fqan: Optional[str] = None
    machines_dir_days: float = 3.0
    disk_gb_per_processor: Optional[int] = None
    root_device: str = "vda"
    scratch_device: str = "vdb"
    image_signing_dn: Optional[str] = None
    cvmfs_repositories: tuple[str, ...] = ()
    tmp_binds: tuple[str, ...] = ()
    container_command: str = "/user_data"


@dataclass(frozen=True)
class Settings:
    """The [settings] section with Vac 03's defaults (§2.2, Appendix C) and vacd's additions."""

    vac_space: str
    factory_name: str
    total_processors: int
    host_processors: int
    gocdb_sitename: str
    description: str = ""
    factories: tuple[FactoryAddress, ...] = ()
    processors_per_superslot: int = 1
    mb_per_processor: int = 2048
    hs06_per_processor: Optional[float] = None
    disk_gb_per_processor: Optional[int] = None
    volume_group: Optional[str] = None
    overload_per_processor: float = 1.25
    shutdown_time: Optional[int] = None
    draining: bool = False
    udp_timeout_seconds: float = 10.0
    vacmon_hostport: tuple[str, ...] = ()
    version_logger: int = 1
    gocdb_cert_file: Optional[str] = None
    gocdb_key_file: Optional[str] = None
    root_public_key: str = "/root/.ssh/id_rsa.pub"
    singularity_user: Optional[str] = None
    fix_networking: bool = True
    forward_dev: Optional[str] = None
    machinefeatures_options: Mapping[str, str] = field(default_factory=dict)
    user_data_options: Mapping[str, str] = field(default_factory=dict)
    user_data_files: Mapping[str, str] = field(default_factory=dict)
    # vacd additions (documented in vac.conf.5)
    hypervisor: str = "auto"
    libvirt_uri: str = "qemu:///system"
    max_creations_per_cycle: int = 4
    cycle_seconds: float = 30.0
    shutdown_grace_seconds: int = 30
    vacquery_port: int = 995
    vacquery_bind_address: str = "0.0.0.0"
    vacquery_key_file: Optional[str] = None
    metrics_address: Optional[str] = None
    joboutputs_quota_bytes: int = 100 * 1024 * 1024
    metadata_port: int = 80
    log_destination: str = "file"

    @property
    def num_machine_slots(self) -> int:
        """Vac 03 made one slot per host processor (§1.5)."""
        return self.host_processors


@dataclass(frozen=True)
class Config:
    """One complete, valid reading of the configuration."""

    settings: Settings
    machinetypes: Mapping[str, Machinetype]
    warnings: tuple[str, ...] = ()
    sources: tuple[Path, ...] = ()
