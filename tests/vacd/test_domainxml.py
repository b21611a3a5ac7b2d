"""Tests of vacd.backends.domainxml: the domain XML is checked by parsing it, never by text."""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vacd.backends.base import MachineSpec
from vacd.backends.domainxml import Disk, domain_xml, machine_disks
from vacd.lvm import VolumeRequest
from vacd.slots import slot_identity

NETWORK = "vac_169.254.0.0"
MACHINE_UUID = "0b02372e-e68c-47d0-a64c-937a73b63718"


def make_spec(**changes: object) -> MachineSpec:
    identity = slot_identity("f1.example.com", 3)
    spec = MachineSpec(
        name=identity.machine_name,
        uuid=MACHINE_UUID,
        ordinal=3,
        mac_address=identity.mac_address,
        ip_address=identity.ip_address,
        vnc_port=identity.vnc_port,
        processors=2,
        memory_mib=4096,
        machine_dir=Path("/var/lib/vac/machines/1700000000_lhcb_f1-03.example.com"),
        machine_model="vm-raw",
        root_image=Path("/var/lib/vac/imagecache/root.img"),
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def parse(spec: MachineSpec, domain_type: str = "kvm", tmp_dir: Path = Path("/var/lib/vac/tmp"),
          emulator: "str | None" = "/usr/bin/qemu-system-x86_64") -> ElementTree.Element:
    disks = machine_disks(spec, tmp_dir)
    return ElementTree.fromstring(
        domain_xml(spec, domain_type=domain_type, network_name=NETWORK, disks=disks, emulator=emulator)
    )


def test_two_processor_machine_gets_memory_vcpus_and_host_cpu_as_acceptance_9() -> None:
    domain = parse(make_spec())
    assert domain.get("type") == "kvm"
    assert domain.findtext("name") == "f1-03.example.com"
    assert domain.findtext("uuid") == MACHINE_UUID
    memory = domain.find("memory")
    assert memory is not None and memory.text == "4096" and memory.get("unit") == "MiB"
    current = domain.find("currentMemory")
    assert current is not None and current.text == "4096" and current.get("unit") == "MiB"
    assert domain.findtext("vcpu") == "2"
    cpu = domain.find("cpu")
    assert cpu is not None and cpu.get("mode") == "host-passthrough"


def test_guest_end_of_life_events_all_destroy_the_domain() -> None:
    domain = parse(make_spec())
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert domain.findtext(event) == "destroy"


def test_features_clock_and_power_management() -> None:
    domain = parse(make_spec())
    features = domain.find("features")
    assert features is not None
    assert {child.tag for child in features} == {"acpi", "apic", "pae"}
    clock = domain.find("clock")
    assert clock is not None and clock.get("offset") == "utc"
    assert domain.find("pm/suspend-to-mem").get("enabled") == "no"  # type: ignore[union-attr]
    assert domain.find("pm/suspend-to-disk").get("enabled") == "no"  # type: ignore[union-attr]


def test_qemu_domain_has_tcg_cache_and_no_host_cpu() -> None:
    domain = parse(make_spec(), domain_type="qemu")
    assert domain.get("type") == "qemu"
    assert domain.find("cpu") is None
    cache = domain.find("features/tcg/tb-cache")
    assert cache is not None and cache.text == "32" and cache.get("unit") == "MiB"


def test_kvm_domain_has_no_tcg_cache() -> None:
    assert parse(make_spec(), domain_type="kvm").find("features/tcg") is None


def test_nic_is_on_vac_network_with_slot_mac_virtio_no_rom_and_pinned_clean_traffic() -> None:
    interfaces = parse(make_spec()).findall("devices/interface")
    assert len(interfaces) == 1
    interface = interfaces[0]
    assert interface.get("type") == "network"
    assert interface.find("mac").get("address") == "56:4D:A9:FE:A9:03"  # type: ignore[union-attr]
    assert interface.find("source").get("network") == NETWORK  # type: ignore[union-attr]
    assert interface.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert interface.find("rom").get("enabled") == "no"  # type: ignore[union-attr]
    filterref = interface.find("filterref")
    assert filterref is not None and filterref.get("filter") == "clean-traffic"
    parameters = {p.get("name"): p.get("value") for p in filterref.findall("parameter")}
    assert parameters == {"IP": "169.254.169.3"}


def test_serial_console_goes_to_console_log_in_machine_dir() -> None:
    spec = make_spec()
    serial = parse(spec).find("devices/serial")
    assert serial is not None and serial.get("type") == "file"
    assert serial.find("source").get("path") == str(spec.machine_dir / "console.log")  # type: ignore[union-attr]
    assert serial.find("target").get("port") == "0"  # type: ignore[union-attr]


def test_vnc_listens_on_loopback_at_the_slot_port() -> None:
    graphics = parse(make_spec()).find("devices/graphics")
    assert graphics is not None
    assert graphics.get("type") == "vnc"
    assert graphics.get("port") == "5903"
    assert graphics.get("autoport") == "no"
    assert graphics.get("listen") == "127.0.0.1"
    assert graphics.find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]


def test_smbios_says_openstack_nova_with_uuid_serial() -> None:
    domain = parse(make_spec())
    entries = {e.get("name"): e.text for e in domain.findall("sysinfo[@type='smbios']/system/entry")}
    assert entries["product"] == "OpenStack Nova"
    assert entries["serial"] == MACHINE_UUID
    assert domain.find("os/smbios").get("mode") == "sysinfo"  # type: ignore[union-attr]


def test_no_memory_balloon_and_emulator_as_given() -> None:
    domain = parse(make_spec(), emulator="/usr/libexec/qemu-kvm")
    assert domain.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert domain.findtext("devices/emulator") == "/usr/libexec/qemu-kvm"


def test_no_emulator_element_when_caller_found_none() -> None:
    assert parse(make_spec(), emulator=None).find("devices/emulator") is None


def test_vm_raw_root_disk_is_qcow2_overlay_in_tmp_named_by_uuid() -> None:
    spec = make_spec()
    disks = machine_disks(spec, Path("/var/lib/vac/tmp"))
    assert disks == (
        Disk(
            path=Path(f"/var/lib/vac/tmp/{MACHINE_UUID}.vda.qcow2"),
            target_device="vda",
            device="disk",
            format="qcow2",
            backing_image=spec.root_image,
        ),
    )
    domain = parse(spec)
    disk = domain.find("devices/disk")
    assert disk is not None and disk.get("device") == "disk"
    assert disk.find("source").get("file") == str(disks[0].path)  # type: ignore[union-attr]
    driver = disk.find("driver")
    assert driver is not None
    assert (driver.get("type"), driver.get("cache"), driver.get("error_policy")) == ("qcow2", "unsafe", "report")
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert domain.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_root_device_name_without_vd_uses_ide_bus() -> None:
    disk = parse(make_spec(root_device="hda")).find("devices/disk/target")
    assert disk is not None and disk.attrib == {"dev": "hda", "bus": "ide"}


@pytest.mark.parametrize("model", ["cernvm3", "cernvm4"])
def test_cernvm_boots_iso_cdrom_with_sparse_root_disk(model: str) -> None:
    spec = make_spec(machine_model=model, root_image=Path("/images/cernvm.iso"), processors=2)
    disks = machine_disks(spec, Path("/var/lib/vac/tmp"))
    cdrom, root = disks
    assert (cdrom.path, cdrom.target_device, cdrom.device, cdrom.read_only) == (
        Path("/images/cernvm.iso"), "hdc", "cdrom", True)
    assert not cdrom.is_created_by_backend
    # §1.11: 40 GB (10^9) per processor when no size is given.
    assert (root.target_device, root.format, root.sparse_bytes) == ("vda", "raw", 80 * 10**9)
    domain = parse(spec)
    xml_disks = domain.findall("devices/disk")
    assert [d.get("device") for d in xml_disks] == ["cdrom", "disk"]
    assert xml_disks[0].find("readonly") is not None
    assert xml_disks[0].find("target").attrib == {"dev": "hdc", "bus": "ide"}  # type: ignore[union-attr]
    assert domain.find("os/boot").get("dev") == "cdrom"  # type: ignore[union-attr]


def test_cernvm_sparse_disk_uses_the_given_size() -> None:
    spec = make_spec(machine_model="cernvm3", root_image=Path("/images/cernvm.iso"), disk_bytes=10**9)
    assert machine_disks(spec, Path("/tmp"))[1].sparse_bytes == 10**9


def test_direct_kernel_boot_needs_no_disk() -> None:
    spec = make_spec(root_image=None, root_kernel=Path("/guest/vmlinuz"), root_initrd=Path("/guest/initrd.gz"),
                     kernel_command_line="console=ttyS0 panic=-1")
    assert machine_disks(spec, Path("/tmp")) == ()
    domain = parse(spec)
    assert domain.findtext("os/kernel") == "/guest/vmlinuz"
    assert domain.findtext("os/initrd") == "/guest/initrd.gz"
    assert domain.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    assert domain.find("os/boot") is None
    assert domain.find("devices/disk") is None


def test_direct_kernel_boot_with_image_keeps_the_overlay_disk() -> None:
    spec = make_spec(root_kernel=Path("/guest/vmlinuz"))
    assert len(machine_disks(spec, Path("/tmp"))) == 1
    assert parse(spec).find("devices/disk") is not None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"machine_model": "docker"}, "not a VM model"),
        ({"root_image": None}, "neither root_image nor root_kernel"),
        ({"machine_model": "cernvm3", "root_image": None}, "needs a root_image"),
        ({"root_image": Path("relative.img")}, "not absolute"),
        ({"uuid": "not-a-uuid"}, "badly formed"),
    ],
)
def test_unusable_specs_are_refused_by_machine_disks(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        machine_disks(make_spec(**changes), Path("/tmp"))


def test_unknown_domain_type_is_refused() -> None:
    with pytest.raises(ValueError, match="domain type"):
        domain_xml(make_spec(), domain_type="xen", network_name=NETWORK)


# XML 1.0 cannot carry control characters, surrogates or non-characters at all.
XML_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=40)


@given(XML_TEXT)
def test_untrusted_text_cannot_inject_xml(text: str) -> None:
    # Names, paths and command lines are escaped by ElementTree, so whatever they hold they
    # come back unchanged and add no elements.
    spec = make_spec(
        name=text,
        root_image=None,
        root_kernel=Path("/k/" + text.replace("/", "_")),
        kernel_command_line=text,
        machine_dir=Path("/md/" + text.replace("/", "_")),
        uuid=str(uuid.UUID(int=7)),
    )
    domain = parse(spec)
    assert domain.findtext("name") == text
    assert domain.findtext("os/cmdline") == text
    assert len(domain.findall("devices/serial")) == 1
    assert len(domain.findall("devices/interface")) == 1


# --- logical volumes (volume_group set, issue 13) ---------------------------------------------

VOLUME = VolumeRequest("vac_volume_group", "f1-03.example.com", 2, 8, None, "f1.example.com")


def block_disks(spec: MachineSpec) -> list[ElementTree.Element]:
    return parse(spec).findall("devices/disk[@type='block']")


@pytest.mark.parametrize("model", ["cernvm3", "cernvm4"])
def test_cernvm_root_disk_is_the_machines_logical_volume_as_a_raw_block_device(model: str) -> None:
    spec = make_spec(machine_model=model, root_image=Path("/images/cernvm.iso"), logical_volume=VOLUME)
    cdrom, root = machine_disks(spec, Path("/var/lib/vac/tmp"))
    assert cdrom.device == "cdrom" and not cdrom.is_file_made_by_backend
    assert (root.path, root.target_device, root.format, root.sparse_bytes) == (
        Path("/dev/vac_volume_group/f1-03.example.com"), "vda", "raw", None)
    assert root.is_created_by_backend and not root.is_file_made_by_backend
    (disk,) = block_disks(spec)
    assert disk.find("source").attrib == {"dev": "/dev/vac_volume_group/f1-03.example.com"}  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert disk.find("driver").get("type") == "raw"  # type: ignore[union-attr]


def test_vm_raw_gets_the_logical_volume_as_its_scratch_device_beside_the_overlay() -> None:
    spec = make_spec(logical_volume=VOLUME, scratch_device="vdc")
    overlay, scratch = machine_disks(spec, Path("/var/lib/vac/tmp"))
    assert (overlay.target_device, overlay.format) == ("vda", "qcow2")
    assert (scratch.path, scratch.target_device) == (Path("/dev/vac_volume_group/f1-03.example.com"), "vdc")
    assert [disk.find("target").get("dev") for disk in block_disks(spec)] == ["vdc"]  # type: ignore[union-attr]
    assert [disk.get("type") for disk in parse(spec).findall("devices/disk")] == ["file", "block"]


def test_a_kernel_booted_vm_raw_gets_only_the_scratch_volume() -> None:
    spec = make_spec(root_image=None, root_kernel=Path("/guest/vmlinuz"), logical_volume=VOLUME)
    (scratch,) = machine_disks(spec, Path("/tmp"))
    assert scratch.target_device == "vdb"


def test_scratch_on_the_root_device_is_refused() -> None:
    with pytest.raises(ValueError, match="scratch_device and root_device are both vda"):
        machine_disks(make_spec(logical_volume=VOLUME, scratch_device="vda"), Path("/tmp"))


def test_without_a_volume_group_vm_raw_has_no_scratch_disk_as_in_vac03() -> None:
    assert [disk.target_device for disk in machine_disks(make_spec(), Path("/tmp"))] == ["vda"]
