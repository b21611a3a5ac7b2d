"""vacd.machinespec: what a machine's disks are made of, by the configuration (issue 13)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.vacd.test_qemuaccess import make
from vacd.lvm import VolumeRequest
from vacd.machinespec import machine_spec, machine_volume
from vacd.slots import slot_identity


def test_without_volume_group_a_machine_has_no_logical_volume(tmp_path: Path) -> None:
    settings, machinetype, record = make(tmp_path, "test:///default")
    spec = machine_spec(settings, machinetype, record, slot_identity(settings.factory_name, 0), tmp_path)
    assert spec.logical_volume is None


def test_with_volume_group_the_machines_volume_is_named_as_it_and_sized_by_vac03s_rule(tmp_path: Path) -> None:
    settings, machinetype, record = make(tmp_path, "test:///default")
    settings = dataclasses.replace(settings, volume_group="vac_volume_group", disk_gb_per_processor=50,
                                   total_processors=8, host_processors=8)
    machinetype = dataclasses.replace(machinetype, disk_gb_per_processor=80)
    record = dataclasses.replace(record, processors=2)
    spec = machine_spec(settings, machinetype, record, slot_identity(settings.factory_name, 0), tmp_path)
    # The machinetype's 80 GB is above [settings]' 50, so 50 it is (§1.11).
    assert spec.logical_volume == VolumeRequest("vac_volume_group", "f1-00.example.com", 2, 8, 50, "f1.example.com")


def test_a_machinetype_size_within_the_settings_one_is_used(tmp_path: Path) -> None:
    settings, machinetype, record = make(tmp_path, "test:///default")
    settings = dataclasses.replace(settings, volume_group="vg", disk_gb_per_processor=50)
    assert machine_volume(settings, dataclasses.replace(machinetype, disk_gb_per_processor=20),
                          record).gb_per_processor == 20  # type: ignore[union-attr]
    assert machine_volume(dataclasses.replace(settings, disk_gb_per_processor=None), machinetype,
                          record).gb_per_processor is None  # type: ignore[union-attr]
