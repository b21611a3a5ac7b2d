"""Fixtures for tests that boot real guests through libvirt and QEMU (`@pytest.mark.vm`).

Rules:
- libvirtd is started if needed (tools/libvirtd-up). If it cannot be reached the tests FAIL,
  unless VAC_ALLOW_VM_SKIP=1 is set (a developer machine without libvirt): CI must never
  skip VM tests silently.
- The test guest is built once and cached (tests/guest/build-guest) where QEMU can read it;
  the session fails naming the path and the user if QEMU could not.
- Every test factory on the host shares the one `vac_169.254.0.0` network, made for
  TEST_FACTORY_NAME with TEST_NUM_SLOTS slots so that all tests want the same network and
  none replaces it under another's guests. A network this session created is removed at
  its end; one that was there before is left alone.
- Every domain a test creates is registered with `domain_reaper` and destroyed (by UUID) on
  teardown, whatever the test did.
- `libvirt_backend` gives each VM slot its own tap pinned by vacd's nftables table, as vacd
  does (vacd.backends.slottaps); `filterref_backend` is the fallback, `<filterref>` per domain.
  Slot taps outlive their domains by design, so the session removes every one no domain
  holds, with its binding, at its end.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Optional

import libvirt
import pytest

from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from vacd.backends.slottaps import remove_idle_slot_taps_and_filter
from vacd.hypervisor import DomainTypeChoice, decide_domain_type
from vacd.network import NETWORK_NAME, ensure_guest_network
from vacd.paths import Paths
from vacd.qemuaccess import NotReadableByQemu, check_readable_by_qemu, host_qemu_identity
from vacd.slots import slot_identity

REPOSITORY = Path(__file__).resolve().parents[2]
LIBVIRT_URI = "qemu:///system"
TEST_FACTORY_NAME = "vactest.example.org"
TEST_NUM_SLOTS = 16
# The test-guest notes: 64 MiB fails silently, 96 MiB works.
GUEST_MEMORY_MIB = 128
ALLOW_SKIP_VARIABLE = "VAC_ALLOW_VM_SKIP"


def _unavailable(reason: str) -> NoReturn:
    """Skip if the developer allowed it, else fail loudly (CI must run the VM tests)."""
    if os.environ.get(ALLOW_SKIP_VARIABLE) == "1":
        pytest.skip(f"VM tests skipped ({ALLOW_SKIP_VARIABLE}=1): {reason}")
    pytest.fail(f"VM tests cannot run: {reason} (set {ALLOW_SKIP_VARIABLE}=1 to skip them)", pytrace=False)


@dataclass(frozen=True)
class TestGuest:
    """The cached test guest: direct kernel boot files and command line."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    kernel: Path
    initrd: Path
    kernel_command_line: str


@dataclass(frozen=True)
class VacNetwork:
    """The shared guest network as the tests use it."""

    name: str
    bridge: str
    factory_name: str
    num_slots: int


@pytest.fixture(scope="session")
def libvirtd() -> str:
    """Start libvirtd if needed; return the URI to use."""
    if os.geteuid() != 0:
        _unavailable("not root (libvirt networks and qemu:///system need root)")
    try:
        completed = subprocess.run([str(REPOSITORY / "tools" / "libvirtd-up")], capture_output=True, text=True,
                                   timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        _unavailable(f"tools/libvirtd-up did not run: {error}")
    if completed.returncode != 0:
        _unavailable(f"tools/libvirtd-up failed: {completed.stderr.strip()}")
    return LIBVIRT_URI


@pytest.fixture(scope="session")
def domain_type() -> DomainTypeChoice:
    """kvm or qemu for this host, as vacd would choose (VAC_HYPERVISOR overrides `auto`)."""
    return decide_domain_type(os.environ.get("VAC_HYPERVISOR", "auto"))


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    """Build (once; cached across sessions) the tiny guest and return its files."""
    completed = subprocess.run([str(REPOSITORY / "tests" / "guest" / "build-guest"), "--json"],
                               capture_output=True, text=True, timeout=900, check=False)
    if completed.returncode != 0:
        pytest.fail(f"tests/guest/build-guest failed: {completed.stderr.strip()}", pytrace=False)
    built = json.loads(completed.stdout)
    guest = TestGuest(Path(built["kernel"]), Path(built["initrd"]), built["cmdline"])
    # As vacd does before each creation (issue 8 item 12): a guest QEMU cannot open (a
    # VAC_GUEST_CACHE under a mode-700 home) fails here by name, not as 7 "Failed to start".
    identity = host_qemu_identity()
    if identity is not None:
        for path in (guest.kernel, guest.initrd):
            try:
                check_readable_by_qemu(path, identity)
            except NotReadableByQemu as error:
                pytest.fail(f"the test guest is not usable: {error}", pytrace=False)
    return guest


@pytest.fixture(scope="session")
def vac_network(libvirtd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VacNetwork]:
    """The vac NAT network with 169.254.169.254 on its bridge (hosts lines under a tmp prefix)."""
    connection = libvirt.open(libvirtd)
    try:
        existed = NETWORK_NAME in connection.listNetworks() + connection.listDefinedNetworks()
    finally:
        connection.close()
    prefix = tmp_path_factory.mktemp("network-prefix")
    guest_network = ensure_guest_network(libvirtd, Paths(prefix), factory_name=TEST_FACTORY_NAME,
                                         num_slots=TEST_NUM_SLOTS)
    try:
        yield VacNetwork(guest_network.name, guest_network.bridge, TEST_FACTORY_NAME, TEST_NUM_SLOTS)
    finally:
        # Every slot tap no domain holds and, with none left, vacd's filter table.
        remove_idle_slot_taps_and_filter(guest_network.bridge)
        if not existed:
            _remove_network(libvirtd)


def _remove_network(uri: str) -> None:
    connection = libvirt.open(uri)
    try:
        network = connection.networkLookupByName(NETWORK_NAME)
        if network.isActive():
            network.destroy()
        network.undefine()
    except libvirt.libvirtError:
        # Already gone, or replaced by another session: nothing of ours is left to remove.
        return
    finally:
        connection.close()


class DomainReaper:
    """Destroys, on teardown, every domain a test registered (by UUID, so never another's)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.tracked: list[tuple[str, str]] = []

    def track(self, spec: MachineSpec) -> MachineSpec:
        self.tracked.append((spec.name, spec.uuid))
        return spec

    def remove_leftover(self, name: str) -> None:
        """Destroy a domain of a test factory's name left by an earlier, killed test run."""
        if not name.startswith(TEST_FACTORY_NAME.partition(".")[0] + "-"):
            raise ValueError(f"{name} is not a test factory's machine")
        connection = libvirt.open(self.uri)
        try:
            connection.lookupByName(name).destroy()
        except libvirt.libvirtError:
            return
        finally:
            connection.close()

    def destroy_all(self) -> None:
        connection = libvirt.open(self.uri)
        try:
            for _name, machine_uuid in self.tracked:
                try:
                    connection.lookupByUUIDString(machine_uuid).destroy()
                except libvirt.libvirtError:
                    continue  # gone already (powered off): the usual case
        finally:
            connection.close()


@pytest.fixture
def domain_reaper(libvirtd: str) -> Iterator[DomainReaper]:
    reaper = DomainReaper(libvirtd)
    try:
        yield reaper
    finally:
        reaper.destroy_all()


@pytest.fixture
def libvirt_backend(libvirtd: str, domain_type: DomainTypeChoice, vac_network: VacNetwork,
                    tmp_path: Path) -> Iterator[LibvirtBackend]:
    """A LibvirtBackend on qemu:///system and the vac network with slot taps (as vacd), closed after the test."""
    yield from _backend_on_vac_network(libvirtd, domain_type, vac_network, tmp_path, slot_taps=True)


@pytest.fixture
def filterref_backend(libvirtd: str, domain_type: DomainTypeChoice, vac_network: VacNetwork,
                      tmp_path: Path) -> Iterator[LibvirtBackend]:
    """A LibvirtBackend without slot taps: every domain on the network with `<filterref>` (the fallback)."""
    yield from _backend_on_vac_network(libvirtd, domain_type, vac_network, tmp_path, slot_taps=False)


def _backend_on_vac_network(libvirtd: str, domain_type: DomainTypeChoice, vac_network: VacNetwork,
                            tmp_path: Path, *, slot_taps: bool) -> Iterator[LibvirtBackend]:
    backend = LibvirtBackend(libvirtd, domain_type=domain_type.domain_type, network_name=vac_network.name,
                             tmp_dir=tmp_path / "tmp", slot_taps=slot_taps)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def guest_spec(test_guest: TestGuest, vac_network: VacNetwork, domain_reaper: DomainReaper,
               tmp_path: Path) -> Callable[..., MachineSpec]:
    """Make a MachineSpec that boots the test guest in a test factory slot (tracked for teardown)."""

    def make(ordinal: int, memory_mib: int = GUEST_MEMORY_MIB, machine_dir: Optional[Path] = None) -> MachineSpec:
        identity = slot_identity(vac_network.factory_name, ordinal)
        directory = machine_dir or tmp_path / "machines" / identity.machine_name
        directory.mkdir(parents=True, exist_ok=True)
        domain_reaper.remove_leftover(identity.machine_name)
        return domain_reaper.track(
            MachineSpec(
                name=identity.machine_name,
                uuid=str(uuid.uuid4()),
                ordinal=ordinal,
                mac_address=identity.mac_address,
                ip_address=identity.ip_address,
                vnc_port=identity.vnc_port,
                processors=1,
                memory_mib=memory_mib,
                machine_dir=directory,
                root_kernel=test_guest.kernel,
                root_initrd=test_guest.initrd,
                kernel_command_line=test_guest.kernel_command_line,
            )
        )

    return make
