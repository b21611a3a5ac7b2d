"""Check every file a machine boots from before QEMU is given it (issue 11 item 1).

A VO's image is untrusted input handed to QEMU running as root's delegate. Rules:
- Paths are confined: a relative root_image, root_kernel or root_initrd resolves under the
  machinetype's files/ directory and must still be there after symlinks are resolved; an
  absolute path under /cvmfs must still be under /cvmfs. QEMU is given the resolved path.
  (Other absolute paths can only come from the site's own vac.conf: vacd.pipes refuses
  them from pipes.)
- An image layered under a machine's overlay is probed with `qemu-img info` (argv list,
  `--force-share`, never `--backing-chain`, so qemu-img opens neither a backing file nor an
  external data file), must be raw or qcow2, and must have no backing file and no external
  data file: a qcow2 whose backing file is /etc/shadow would otherwise show the host file to
  the guest. The qcow2 header is read here too, so the rule does not rest on qemu-img's JSON
  alone. The format found is passed explicitly everywhere after (`-f`, `-F`).
- `root_image_sha256` (a vacd addition, accepted from pipes too) and `image_signing_dn`
  (both names, Vac 03's §1.12; Vac 03 enforced only the deprecated `cernvm_signing_dn`) are
  enforced at every creation, for local, /cvmfs and cached http(s) images alike. Both need
  the image's digests, which are computed in one read and kept per file by (device, inode,
  size, mtime, ctime): a multi-GB image is hashed once, not at every creation, and a file
  replaced or rewritten (a new download is a new inode; touch -d changes the ctime) is hashed
  again. A file that changes while it is hashed is refused for this creation.
- Every refusal is an ImageRefused naming the image and the reason; the factory turns it
  into a creation failure with the machinetype's local backoff.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from vacd.config import Machinetype
from vacd.errors import VacError
from vacd.imagesignature import (
    BLOCK_BYTES,
    MINIMUM_IMAGE_BYTES,
    SignatureRefused,
    cernvm_version,
    check_signer,
    load_ca_directory,
    verified_signer,
)

log = logging.getLogger(__name__)

CommandRunner = Callable[[Sequence[str]], str]

CVMFS_DIR = Path("/cvmfs")
# Formats an image under an overlay may have. Others are refused, not probed further: vmdk
# descriptors name extent files anywhere on the host, and qed, vpc, vhdx ... carry backing files.
LAYERED_FORMATS = ("raw", "qcow2")
QCOW2_MAGIC = b"QFI\xfb"
# qcow2 incompatible feature bit 2: the guest data lives in an external data file.
QCOW2_INCOMPATIBLE_DATA_FILE = 1 << 2
QCOW2_HEADER_BYTES = 104
HASH_CHUNK_BYTES = 1024 * 1024
# Digests kept: far more than the images one factory uses at a time.
MAX_DIGESTS = 256


class ImageRefused(VacError):
    """An image (or kernel, initrd) vacd will not give to QEMU, and why."""

    def __init__(self, image: Path, reason: str) -> None:
        self.image = image
        self.reason = reason
        super().__init__(f"image {image} refused: {reason}")


# ---------------------------------------------------------------------------- paths


def confined_file(machinetype: Machinetype, option: str, name: str, *, cvmfs_dir: Path = CVMFS_DIR) -> Path:
    """Where the local file `name` (of `option`) really is, refused if its symlinks lead out.

    Raises:
        ImageRefused: a relative name leaves <machinetype_path>/files, or a /cvmfs path leaves /cvmfs.
    """
    if name.startswith("/"):
        given = Path(name)
        if given.parts[:len(cvmfs_dir.parts)] != cvmfs_dir.parts:
            return given
        root = Path(os.path.realpath(cvmfs_dir))
        where = f"under {cvmfs_dir}"
    else:
        files_dir = machinetype.machinetype_path / "files"
        given = files_dir / name
        root = Path(os.path.realpath(files_dir))
        where = f"under {files_dir}"
    resolved = Path(os.path.realpath(given))
    if not resolved.is_relative_to(root):
        raise ImageRefused(given, f"{option} = {name} resolves to {resolved}, which is not {where}")
    return resolved


# ---------------------------------------------------------------------------- backing files


def qcow2_header_problem(header: bytes) -> Optional[str]:
    """Why a qcow2 header is refused (a backing file or external data file), or None; pure."""
    if len(header) < 72 or header[:4] != QCOW2_MAGIC:
        return "its qcow2 header is truncated or has no qcow2 magic"
    version, backing_file_offset, backing_file_size = struct.unpack(">IQI", header[4:20])
    if backing_file_offset != 0 or backing_file_size != 0:
        return "its qcow2 header names a backing file"
    if version >= 3:
        if len(header) < 80:
            return "its qcow2 version 3 header is truncated"
        (incompatible_features,) = struct.unpack(">Q", header[72:80])
        if incompatible_features & QCOW2_INCOMPATIBLE_DATA_FILE:
            return "its qcow2 header says the data is in an external data file"
    return None


def _qemu_img_info(image: Path, run_command: CommandRunner, image_format: Optional[str]) -> dict[str, Any]:
    # --force-share: running machines hold the image open; reading its header is safe. No
    # --backing-chain: qemu-img info then opens only this file.
    argv = ["qemu-img", "info", "--force-share", "--output=json"]
    if image_format is not None:
        argv += ["-f", image_format]
    output = run_command(argv + [str(image)])
    try:
        info = json.loads(output)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise ImageRefused(image, "qemu-img info gave no JSON object")
    return info


def layered_image_format(image: Path, run_command: CommandRunner) -> str:
    """The format of an image that an overlay will be layered on, after checking it is safe to.

    Raises:
        ImageRefused: not raw or qcow2, or it has a backing file or an external data file.
        CommandFailed: qemu-img could not read it (missing, unreadable).
    """
    image_format = _qemu_img_info(image, run_command, None).get("format")
    if not isinstance(image_format, str) or image_format not in LAYERED_FORMATS:
        raise ImageRefused(image, f"its format is {image_format!r}; vacd layers machines only on "
                                  f"{' or '.join(LAYERED_FORMATS)} images")
    # Read again as the format that -F will declare, so what is judged is what QEMU will read.
    info = _qemu_img_info(image, run_command, image_format)
    if info.get("format") != image_format:
        raise ImageRefused(image, f"qemu-img read it as {info.get('format')!r} with -f {image_format}")
    for key in ("backing-filename", "full-backing-filename"):
        if key in info:
            raise ImageRefused(image, f"it has a backing file {info[key]} that vacd did not create")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and "data-file" in data:
        raise ImageRefused(image, f"it has an external data file {data['data-file']} that vacd did not create")
    if image_format == "qcow2":
        with open(image, "rb") as image_file:
            problem = qcow2_header_problem(image_file.read(QCOW2_HEADER_BYTES))
        if problem is not None:
            raise ImageRefused(image, problem)
    return image_format


# ---------------------------------------------------------------------------- digests and signatures


@dataclass(frozen=True)
class ImageDigests:
    """SHA-256 of a whole image, and of all but its last 32 KiB (what a CernVM signature signs)."""

    sha256: str
    signed_part_sha256: Optional[bytes]
    metadata_block: bytes
    signature_block: bytes


_FileKey = tuple[int, int, int, int, int]


def _file_key(status: os.stat_result) -> _FileKey:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _digests_of_open_file(image_file: Any, size: int) -> ImageDigests:
    whole = hashlib.sha256()
    signed_part: Optional[Any] = None
    signed_bytes = size - BLOCK_BYTES if size >= MINIMUM_IMAGE_BYTES else None
    done = 0
    while True:
        chunk_bytes = HASH_CHUNK_BYTES
        if signed_bytes is not None and done < signed_bytes:
            chunk_bytes = min(chunk_bytes, signed_bytes - done)
        chunk = image_file.read(chunk_bytes)
        if not chunk:
            break
        whole.update(chunk)
        done += len(chunk)
        if signed_bytes is not None and done == signed_bytes and signed_part is None:
            signed_part = whole.copy()
    trailer = b""
    if size >= MINIMUM_IMAGE_BYTES:
        image_file.seek(size - 2 * BLOCK_BYTES)
        trailer = image_file.read(2 * BLOCK_BYTES)
    return ImageDigests(
        sha256=whole.hexdigest(),
        signed_part_sha256=signed_part.digest() if signed_part is not None else None,
        metadata_block=trailer[:BLOCK_BYTES],
        signature_block=trailer[BLOCK_BYTES:],
    )


class ImageVerifier:
    """Confines image paths and enforces root_image_sha256 and image_signing_dn; thread-safe."""

    def __init__(self, certificates_dir: Path, *, cvmfs_dir: Path = CVMFS_DIR,
                 clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc)
                 ) -> None:
        self.certificates_dir = certificates_dir
        self.cvmfs_dir = cvmfs_dir
        self.clock = clock
        self._lock = threading.Lock()
        self._digests: OrderedDict[tuple[str, _FileKey], ImageDigests] = OrderedDict()
        self._path_locks: dict[str, threading.Lock] = {}  # one per image path, few: the configured images
        self.files_hashed = 0  # how many times a file was read in full (the cache's effect)

    def locate(self, machinetype: Machinetype, option: str, name: str) -> Path:
        """The confined, resolved path of a local file name (see `confined_file`)."""
        return confined_file(machinetype, option, name, cvmfs_dir=self.cvmfs_dir)

    def check_boot_files(self, machinetype: Machinetype, root_image: Optional[Path],
                         root_kernel: Optional[Path]) -> None:
        """Enforce root_image_sha256 and image_signing_dn on the image a machine boots from.

        Raises:
            ImageRefused: a digest mismatch, a bad or missing signature, a signer not matching
                the DN, or an option set for a machinetype that boots a kernel, not an image.
        """
        wanted_sha256, dn_pattern = machinetype.root_image_sha256, machinetype.image_signing_dn
        if wanted_sha256 is None and dn_pattern is None:
            return
        if root_image is None:
            option = "root_image_sha256" if wanted_sha256 is not None else "image_signing_dn"
            raise ImageRefused(root_kernel or Path(machinetype.name),
                               f"{option} is set but machinetype {machinetype.name} boots root_kernel, "
                               "which it cannot check")
        digests = self.digests(root_image)
        if wanted_sha256 is not None and digests.sha256 != wanted_sha256.lower():
            raise ImageRefused(root_image, f"its SHA-256 is {digests.sha256}, not root_image_sha256 = "
                                           f"{wanted_sha256.lower()}")
        if dn_pattern is not None:
            self._check_signature(root_image, digests, dn_pattern)

    def digests(self, image: Path) -> ImageDigests:
        """The image's digests, read once per version of the file.

        Creations of one image at once wait for one read: a slot-filling pass must not read a
        20 GiB image once per slot.
        """
        with self._lock:
            path_lock = self._path_locks.setdefault(str(image), threading.Lock())
        with path_lock:
            return self._digests_locked(image)

    def _digests_locked(self, image: Path) -> ImageDigests:
        try:
            with open(image, "rb") as image_file:
                before = os.fstat(image_file.fileno())
                key = (str(image), _file_key(before))
                with self._lock:
                    known = self._digests.get(key)
                    if known is not None:
                        self._digests.move_to_end(key)
                        return known
                digests = _digests_of_open_file(image_file, before.st_size)
                after = os.fstat(image_file.fileno())
        except OSError as error:
            raise ImageRefused(image, f"cannot read it: {error}") from error
        if _file_key(after) != key[1]:
            raise ImageRefused(image, "it changed while it was being checked; the next creation checks it again")
        with self._lock:
            self.files_hashed += 1
            self._digests[key] = digests
            while len(self._digests) > MAX_DIGESTS:
                self._digests.popitem(last=False)
        return digests

    def _check_signature(self, image: Path, digests: ImageDigests, dn_pattern: str) -> None:
        if digests.signed_part_sha256 is None:
            raise ImageRefused(image, f"it is {MINIMUM_IMAGE_BYTES - 1} bytes or less, too small to carry "
                                      "a CernVM signature, and image_signing_dn is set")
        try:
            signer = verified_signer(digests.signed_part_sha256, digests.signature_block,
                                     load_ca_directory(self.certificates_dir), self.clock())
            check_signer(signer, dn_pattern)
        except SignatureRefused as error:
            raise ImageRefused(image, str(error)) from error
        log.info("image signature verified path=%s signer=%s ucernvm_version=%s", image, signer,
                 cernvm_version(digests.metadata_block))
