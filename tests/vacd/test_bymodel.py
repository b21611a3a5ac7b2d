"""Machines run by the backend of their model (vacd.backends.bymodel) and docker specs (vacd.machinespec)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from tests.fakes import FakeBackend
from vacd.backends.base import MachineSpec
from vacd.backends.bymodel import BackendsByModel
from vacd.config import Machinetype, Settings
from vacd.errors import BackendError, VacError
from vacd.machinespec import machine_spec
from vacd.slots import slot_identity
from vacd.records import MachineRecord

SETTINGS = Settings(vac_space="vac01.example.com", factory_name="f1.example.com", total_processors=2,
                    host_processors=2, gocdb_sitename="example.com")


def spec(name: str, model: str, uuid: str = "u") -> MachineSpec:
    return MachineSpec(name=name, uuid=uuid, ordinal=0, mac_address="56:4D:A9:FE:A9:00", ip_address="169.254.169.0",
                       vnc_port=5900, processors=1, memory_mib=128, machine_dir=Path("/md"), machine_model=model)


def backends() -> tuple[BackendsByModel, FakeBackend, FakeBackend]:
    vms, containers = FakeBackend(), FakeBackend()
    return BackendsByModel({"vm-raw": vms, "cernvm3": vms, "docker": containers},
                           {"singularity": "apptainer is not run"}), vms, containers


def test_a_machine_is_created_by_the_backend_of_its_model() -> None:
    combined, vms, containers = backends()
    combined.create(spec("f1-00.example.com", "vm-raw"))
    combined.create(spec("f1-01.example.com", "docker"))
    assert vms.created_names() == ["f1-00.example.com"] and containers.created_names() == ["f1-01.example.com"]
    assert sorted(machine.name for machine in combined.list_machines()) == ["f1-00.example.com", "f1-01.example.com"]


def test_a_model_without_a_backend_fails_its_creation_saying_why() -> None:
    combined, vms, containers = backends()
    with pytest.raises(BackendError, match="machine_model singularity: apptainer is not run"):
        combined.create(spec("f1-00.example.com", "singularity"))
    assert vms.actions == [] and containers.actions == []


def test_destroy_with_a_uuid_removes_only_that_machine_whichever_backend_runs_it() -> None:
    combined, vms, containers = backends()
    combined.create(spec("f1-00.example.com", "docker", uuid="container"))
    combined.destroy("f1-00.example.com", "another")
    assert [machine.uuid for machine in combined.list_machines()] == ["container"]
    combined.destroy("f1-00.example.com", "container")
    assert combined.list_machines() == []
    assert ("destroy", "f1-00.example.com") in vms.actions  # asked, and had nothing of that name


class RefusingBackend(FakeBackend):
    """libvirt's answer to a UUID it cannot parse (a container's label), for every name."""

    def destroy(self, name: str, uuid: Optional[str] = None) -> None:
        super().destroy(name, uuid)
        raise BackendError("destroy", name, "Invalid UUID")


def test_a_backend_that_fails_a_destroy_does_not_stop_the_one_that_runs_the_machine() -> None:
    containers = FakeBackend()
    combined = BackendsByModel({"vm-raw": RefusingBackend(), "docker": containers})
    combined.create(spec("f1-03.example.com", "docker", uuid="not-a-uuid"))
    with pytest.raises(BackendError, match="Invalid UUID"):
        combined.destroy("f1-03.example.com", "not-a-uuid")
    assert combined.list_machines() == []


def test_one_backend_that_cannot_list_fails_the_whole_listing() -> None:
    # Else the pass would take the other backend's machines for all there are (no destroys on a partial view).
    combined, _, containers = backends()
    containers.fail_listing = True
    with pytest.raises(BackendError):
        combined.list_machines()


def docker_machinetype(root_image: str) -> Machinetype:
    return Machinetype(name="lhcb", machinegroup="lhcb", machinetype_path=Path("/mt"), machine_model="docker",
                       root_image=root_image, container_command="/user_data", cvmfs_repositories=("lhcb.cern.ch",),
                       tmp_binds=("/scratch",))


def docker_record() -> MachineRecord:
    identity = slot_identity(SETTINGS.factory_name, 1)
    return MachineRecord(name=identity.machine_name, ordinal=1, uuid="1b4e28ba-2fa1-11d2-883f-000000000001",
                         machinetype="lhcb", machine_model="docker", processors=2, created_time=1, shutdown_time=2,
                         ip_address=identity.ip_address, hs06=1.0, mb=256)


def test_a_docker_spec_carries_the_image_command_binds_and_the_slots_identity(tmp_path: Path) -> None:
    identity = slot_identity(SETTINGS.factory_name, 1)
    made = machine_spec(SETTINGS, docker_machinetype("docker://lhcb/vac:1"), docker_record(), identity, tmp_path)
    assert (made.machine_model, made.container_image, made.container_command) == (
        "docker", "docker://lhcb/vac:1", "/user_data")
    assert (made.mac_address, made.ip_address, made.processors, made.memory_mib) == (
        identity.mac_address, identity.ip_address, 2, 256)
    assert made.cvmfs_repositories == ("lhcb.cern.ch",) and made.tmp_binds == ("/scratch",)
    assert made.root_image is None and made.disk_bytes is None


def test_a_docker_machinetype_without_a_docker_image_fails_its_creation(tmp_path: Path) -> None:
    identity = slot_identity(SETTINGS.factory_name, 1)
    with pytest.raises(VacError, match="needs root_image = docker://IMAGE"):
        machine_spec(SETTINGS, docker_machinetype("image.qcow2"), docker_record(), identity, tmp_path)
