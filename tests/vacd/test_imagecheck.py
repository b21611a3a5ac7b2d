"""vacd.imagecheck: confined image paths, refused backing files, root_image_sha256 and its digest cache.

The qemu-img tests make their images with the real qemu-img in tmp_path (issue 11 item 1).
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.vacd.test_config import PIPE_SETTINGS, SETTINGS, only_problem, parse
from vacd.commands import run_command
from vacd.config import Machinetype
from vacd.imagecheck import (
    ImageRefused,
    ImageVerifier,
    confined_file,
    layered_image_format,
    qcow2_header_problem,
)
from vacd.pipes import expand_pipe


def make_machinetype(tmp_path: Path, **options: object) -> Machinetype:
    fields: dict[str, object] = dict(name="lhcb", machinegroup="lhcb", machinetype_path=tmp_path / "machinetypes" / "lhcb",
                                     machine_model="vm-raw")
    fields.update(options)
    machinetype = Machinetype(**fields)  # type: ignore[arg-type]
    (machinetype.machinetype_path / "files").mkdir(parents=True, exist_ok=True)
    return machinetype


def qemu_img(*arguments: str) -> None:
    run_command(["qemu-img", *arguments])


# ---------------------------------------------------------------------------- confined paths


def test_relative_name_resolves_under_files_and_to_the_real_file(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path)
    files = machinetype.machinetype_path / "files"
    (files / "images").mkdir()
    (files / "images" / "root-1.img").write_bytes(b"image")
    (files / "root.img").symlink_to("images/root-1.img")
    assert confined_file(machinetype, "root_image", "root.img") == (files / "images" / "root-1.img").resolve()


def test_relative_name_with_dot_dot_out_of_files_is_refused(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path)
    (machinetype.machinetype_path / "x509key.pem").write_text("secret")
    with pytest.raises(ImageRefused, match=r"root_image = \.\./x509key\.pem resolves to .*x509key\.pem, which is "
                                           r"not under .*/machinetypes/lhcb/files"):
        confined_file(machinetype, "root_image", "../x509key.pem")


def test_symlink_in_files_pointing_out_is_refused(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path)
    (machinetype.machinetype_path / "files" / "vmlinuz").symlink_to("/etc/passwd")
    with pytest.raises(ImageRefused, match=r"root_kernel = vmlinuz resolves to /etc/passwd"):
        confined_file(machinetype, "root_kernel", "vmlinuz")


def test_symlinked_directory_inside_files_pointing_out_is_refused(tmp_path: Path) -> None:
    machinetype = make_machinetype(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "initrd.gz").write_bytes(b"initrd")
    (machinetype.machinetype_path / "files" / "boot").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageRefused, match="root_initrd = boot/initrd.gz resolves to"):
        confined_file(machinetype, "root_initrd", "boot/initrd.gz")


def test_cvmfs_path_inside_cvmfs_is_allowed_and_resolved(tmp_path: Path) -> None:
    cvmfs = tmp_path / "cvmfs"
    (cvmfs / "cernvm-prod.cern.ch" / "cvm4").mkdir(parents=True)
    (cvmfs / "cernvm-prod.cern.ch" / "cvm4" / "cernvm4-2024.iso").write_bytes(b"iso")
    (cvmfs / "cernvm-prod.cern.ch" / "cvm4" / "latest.iso").symlink_to("cernvm4-2024.iso")
    name = str(cvmfs / "cernvm-prod.cern.ch" / "cvm4" / "latest.iso")
    assert confined_file(make_machinetype(tmp_path), "root_image", name, cvmfs_dir=cvmfs) == \
        (cvmfs / "cernvm-prod.cern.ch" / "cvm4" / "cernvm4-2024.iso").resolve()


@pytest.mark.parametrize("inside", ["../etc/shadow", "repo.example.org/../../etc/shadow", "repo.example.org/escape"])
def test_cvmfs_path_leaving_cvmfs_by_dot_dot_or_symlink_is_refused(tmp_path: Path, inside: str) -> None:
    cvmfs = tmp_path / "cvmfs"
    (cvmfs / "repo.example.org").mkdir(parents=True)
    (cvmfs / "repo.example.org" / "escape").symlink_to("/etc/shadow")
    with pytest.raises(ImageRefused, match=rf"resolves to \S*/etc/shadow, which is not under {cvmfs}"):
        confined_file(make_machinetype(tmp_path), "root_image", f"{cvmfs}/{inside}", cvmfs_dir=cvmfs)


def test_absolute_path_of_the_sites_own_config_is_used_as_given(tmp_path: Path) -> None:
    assert confined_file(make_machinetype(tmp_path), "root_kernel", "/var/lib/vac/guest/vmlinuz",
                         cvmfs_dir=tmp_path / "cvmfs") == Path("/var/lib/vac/guest/vmlinuz")


# ---------------------------------------------------------------------------- backing files (real qemu-img)


@pytest.mark.allow_commands("qemu-img")
def test_qcow2_with_a_host_file_as_backing_file_is_refused_naming_it(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.qcow2"
    # -u: qemu-img only writes the name into the header; the guest would read /etc/shadow.
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", str(hostile), "1M")
    with pytest.raises(ImageRefused) as refused:
        layered_image_format(hostile, run_command)
    assert str(refused.value) == (f"image {hostile} refused: it has a backing file /etc/shadow that vacd did not "
                                  "create")


@pytest.mark.allow_commands("qemu-img")
def test_qcow2_with_an_external_data_file_is_refused_naming_it(tmp_path: Path) -> None:
    host_file = tmp_path / "host-disk.raw"
    host_file.write_bytes(b"\0" * 65536)
    hostile = tmp_path / "hostile-data.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={host_file}", str(hostile), "1M")
    with pytest.raises(ImageRefused, match=rf"{hostile} refused: it has an external data file {host_file} that vacd "
                                           "did not create"):
        layered_image_format(hostile, run_command)


@pytest.mark.allow_commands("qemu-img")
def test_vmdk_is_refused_since_its_descriptor_can_name_any_host_file(tmp_path: Path) -> None:
    image = tmp_path / "root.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", str(image), "1M")
    with pytest.raises(ImageRefused, match="its format is 'vmdk'; vacd layers machines only on raw or qcow2 images"):
        layered_image_format(image, run_command)


@pytest.mark.allow_commands("qemu-img")
def test_plain_qcow2_and_raw_images_are_accepted_with_their_format(tmp_path: Path) -> None:
    qcow2 = tmp_path / "root.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(qcow2), "1M")
    raw = tmp_path / "root.img"
    raw.write_bytes(b"\0" * 1024 * 1024)
    assert layered_image_format(qcow2, run_command) == "qcow2"
    assert layered_image_format(raw, run_command) == "raw"


@pytest.mark.allow_commands("qemu-img")
def test_the_image_is_read_again_with_the_probed_format_and_never_with_its_backing_chain(tmp_path: Path) -> None:
    image = tmp_path / "root.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    argvs: list[list[str]] = []

    def recording(argv: object) -> str:
        argvs.append(list(argv))  # type: ignore[call-overload]
        return run_command(argv)  # type: ignore[arg-type]

    layered_image_format(image, recording)
    assert argvs == [["qemu-img", "info", "--force-share", "--output=json", str(image)],
                     ["qemu-img", "info", "--force-share", "--output=json", "-f", "qcow2", str(image)]]


def test_qcow2_header_naming_a_backing_file_is_refused_even_if_qemu_img_said_nothing() -> None:
    header = bytearray(104)
    header[:4] = b"QFI\xfb"
    struct.pack_into(">IQI", header, 4, 3, 0x200, 11)
    assert qcow2_header_problem(bytes(header)) == "its qcow2 header names a backing file"


def test_qcow2_header_with_the_external_data_file_bit_is_refused() -> None:
    header = bytearray(104)
    header[:4] = b"QFI\xfb"
    struct.pack_into(">I", header, 4, 3)
    struct.pack_into(">Q", header, 72, 1 << 2)
    assert qcow2_header_problem(bytes(header)) == "its qcow2 header says the data is in an external data file"


def test_plain_qcow2_header_passes_and_a_truncated_one_does_not() -> None:
    header = bytearray(104)
    header[:4] = b"QFI\xfb"
    struct.pack_into(">I", header, 4, 3)
    assert qcow2_header_problem(bytes(header)) is None
    assert qcow2_header_problem(bytes(header[:40])) == "its qcow2 header is truncated or has no qcow2 magic"


# ---------------------------------------------------------------------------- root_image_sha256


def image_with(tmp_path: Path, content: bytes) -> Path:
    image = tmp_path / "root.img"
    image.write_bytes(content)
    return image


def test_matching_sha256_passes_and_a_mismatch_is_refused_naming_both(tmp_path: Path) -> None:
    content = os.urandom(300_000)
    image = image_with(tmp_path, content)
    right = hashlib.sha256(content).hexdigest()
    verifier = ImageVerifier(tmp_path / "certificates")
    verifier.check_boot_files(make_machinetype(tmp_path, root_image_sha256=right.upper().lower()), image, None)
    wrong = "0" * 64
    with pytest.raises(ImageRefused, match=rf"{image} refused: its SHA-256 is {right}, not root_image_sha256 = {wrong}"):
        verifier.check_boot_files(make_machinetype(tmp_path, root_image_sha256=wrong), image, None)


def test_an_unchanged_image_is_hashed_once_across_creations(tmp_path: Path) -> None:
    content = os.urandom(200_000)
    image = image_with(tmp_path, content)
    machinetype = make_machinetype(tmp_path, root_image_sha256=hashlib.sha256(content).hexdigest())
    verifier = ImageVerifier(tmp_path / "certificates")
    for _ in range(5):
        verifier.check_boot_files(machinetype, image, None)
    assert verifier.files_hashed == 1


def test_an_image_rewritten_in_place_with_its_old_size_and_mtime_is_hashed_again(tmp_path: Path) -> None:
    content = os.urandom(200_000)
    image = image_with(tmp_path, content)
    machinetype = make_machinetype(tmp_path, root_image_sha256=hashlib.sha256(content).hexdigest())
    verifier = ImageVerifier(tmp_path / "certificates")
    verifier.check_boot_files(machinetype, image, None)
    before = image.stat()
    with open(image, "r+b") as rewrite:  # same inode, same size
        rewrite.write(b"\xff" * 16)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime: only the ctime tells
    with pytest.raises(ImageRefused, match="its SHA-256 is"):
        verifier.check_boot_files(machinetype, image, None)
    assert verifier.files_hashed == 2


def test_an_image_replaced_by_a_new_download_is_hashed_again(tmp_path: Path) -> None:
    content = os.urandom(100_000)
    image = image_with(tmp_path, content)
    machinetype = make_machinetype(tmp_path, root_image_sha256=hashlib.sha256(content).hexdigest())
    verifier = ImageVerifier(tmp_path / "certificates")
    verifier.check_boot_files(machinetype, image, None)
    replacement = tmp_path / "download.tmp"
    replacement.write_bytes(os.urandom(100_000))
    os.utime(replacement, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns))
    os.replace(replacement, image)  # as vacd.fetch renames a download into the cache
    with pytest.raises(ImageRefused, match="its SHA-256 is"):
        verifier.check_boot_files(machinetype, image, None)


def test_sha256_set_for_a_machinetype_booting_a_kernel_is_refused_not_ignored(tmp_path: Path) -> None:
    kernel = image_with(tmp_path, b"kernel")
    machinetype = make_machinetype(tmp_path, root_image_sha256="a" * 64)
    with pytest.raises(ImageRefused, match="root_image_sha256 is set but machinetype lhcb boots root_kernel"):
        ImageVerifier(tmp_path / "certificates").check_boot_files(machinetype, None, kernel)


def test_no_sha256_and_no_signing_dn_reads_nothing(tmp_path: Path) -> None:
    verifier = ImageVerifier(tmp_path / "certificates")
    verifier.check_boot_files(make_machinetype(tmp_path), tmp_path / "not-even-there.img", None)
    assert verifier.files_hashed == 0


# ---------------------------------------------------------------------------- the option, in vac.conf and pipes


def test_root_image_sha256_is_read_in_lower_case_and_a_bad_one_names_the_option() -> None:
    config = parse(SETTINGS + f"[machinetype a]\nroot_image = a.img\nroot_image_sha256 = {'AB' * 32}\n")
    assert config.machinetypes["a"].root_image_sha256 == "ab" * 32
    problem = only_problem(SETTINGS + "[machinetype a]\nroot_image = a.img\nroot_image_sha256 = deadbeef\n")
    assert (problem.section, problem.option) == ("machinetype a", "root_image_sha256")
    assert "expected a SHA-256 digest of 64 hexadecimal digits, got 'deadbeef'" in str(problem)


def test_root_image_sha256_is_accepted_from_a_vacuum_pipe() -> None:
    config = parse(PIPE_SETTINGS)
    document = {"machinetypes": [{"suffix": "a", "target_share": 1, "machine_model": "vm-raw",
                                  "root_image": "https://images.example.org/a.img", "root_image_sha256": "0f" * 32}]}
    expansion = expand_pipe(config.vacuum_pipes[0], document, config)
    assert expansion.machinetypes["ex-a"].root_image_sha256 == "0f" * 32
    assert not [warning for warning in expansion.warnings if "root_image_sha256" in warning]


def test_creations_of_one_image_at_once_share_one_read_of_it(tmp_path: Path) -> None:
    content = os.urandom(4 * 1024 * 1024)
    image = image_with(tmp_path, content)
    machinetype = make_machinetype(tmp_path, root_image_sha256=hashlib.sha256(content).hexdigest())
    verifier = ImageVerifier(tmp_path / "certificates")
    with ThreadPoolExecutor(max_workers=8) as pool:  # as the factory's action pool runs creations
        checks = [pool.submit(verifier.check_boot_files, machinetype, image, None) for _ in range(8)]
        for check in checks:
            check.result(timeout=60)
    assert verifier.files_hashed == 1
