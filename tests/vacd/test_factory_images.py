"""The factory with the real libvirt backend (test:/// driver) and the real qemu-img refuses hostile images.

Issue 11 item 1, "Must show": qemu-img makes a VO image whose own backing file is a host
file (or whose data lives in an external host file); its creation is refused with an error
naming the image and the file, and the factory backs that machinetype off locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.vacd.test_factory import Harness, make_machinetype, make_settings
from vacd.backends.libvirt import LibvirtBackend
from vacd.commands import run_command
from vacd.outcomes import FAILED_TO_START


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LibvirtBackend]:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    made = LibvirtBackend(f"test://{node}", domain_type="qemu", network_name="vac_169.254.0.0",
                          tmp_dir=tmp_path / "tmp")
    try:
        yield made
    finally:
        made.close()


def hostile_harness(tmp_path: Path, backend: LibvirtBackend, *qemu_img_create: str) -> tuple[Harness, Path]:
    machinetype = make_machinetype(tmp_path, "atlas", root_kernel=None, root_image="atlas.qcow2",
                                   backoff_seconds=600)
    image = machinetype.machinetype_path / "files" / "atlas.qcow2"
    image.parent.mkdir(parents=True)
    run_command(["qemu-img", "create", "-q", "-f", "qcow2", *qemu_img_create, str(image), "1M"])
    settings = make_settings(total_processors=1, host_processors=1)
    return Harness(tmp_path, settings, machinetype, backend=backend), image  # type: ignore[arg-type]


def assert_refused_and_backed_off(harness: Harness, backend: LibvirtBackend, expected_error: str) -> None:
    harness.run_pass()
    assert backend.list_machines() == []
    assert expected_error in harness.paths.factory_error_file.read_text()
    report = harness.run_pass()  # finalises the failed slot, then backs the machinetype off
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert report.decisions.creates == ()
    assert "atlas" in report.decisions.outlook.backoff_until
    assert backend.list_machines() == []


@pytest.mark.allow_commands("qemu-img")
def test_image_with_etc_shadow_as_backing_file_is_refused_and_the_machinetype_backs_off(
    tmp_path: Path, backend: LibvirtBackend
) -> None:
    harness, image = hostile_harness(tmp_path, backend, "-u", "-b", "/etc/shadow", "-F", "raw")
    assert_refused_and_backed_off(harness, backend, f"image {image.resolve()} refused: it has a backing file "
                                                    "/etc/shadow that vacd did not create")


@pytest.mark.allow_commands("qemu-img")
def test_image_with_a_host_file_as_external_data_file_is_refused_and_the_machinetype_backs_off(
    tmp_path: Path, backend: LibvirtBackend
) -> None:
    host_file = tmp_path / "host-disk.raw"
    host_file.write_bytes(b"\0" * 65536)
    harness, image = hostile_harness(tmp_path, backend, "-o", f"data_file={host_file}")
    assert_refused_and_backed_off(harness, backend, f"image {image.resolve()} refused: it has an external data "
                                                    f"file {host_file} that vacd did not create")


@pytest.mark.allow_commands("qemu-img")
def test_plain_qcow2_image_is_created_on_its_overlay(tmp_path: Path, backend: LibvirtBackend) -> None:
    harness, _ = hostile_harness(tmp_path, backend)
    harness.run_pass()
    assert [machine.name for machine in backend.list_machines()] == ["f1-00.example.com"]
    assert not harness.paths.factory_error_file.exists()


def test_local_image_with_another_sha256_is_refused_and_the_machinetype_backs_off(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path, "atlas", root_kernel=None, root_image="atlas.img",
                                   root_image_sha256="0" * 64, backoff_seconds=600)
    image = machinetype.machinetype_path / "files" / "atlas.img"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"not the image the VO published")
    harness = Harness(tmp_path, make_settings(total_processors=1, host_processors=1), machinetype)
    harness.run_pass()
    assert harness.backend.created_names() == []
    assert f"image {image.resolve()} refused: its SHA-256 is " in harness.paths.factory_error_file.read_text()
    report = harness.run_pass()
    assert report.finished[0][1].shutdown_message == FAILED_TO_START
    assert "atlas" in report.decisions.outlook.backoff_until
