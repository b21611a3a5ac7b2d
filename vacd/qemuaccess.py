"""Whether the user QEMU runs as can open a file vacd hands it (root image, kernel, initrd).

Issue 8 item 12: in a clone under /root (mode 0700), QEMU, running as `libvirt-qemu`,
could not open the test guest's kernel, so every machine failed with "Permission denied"
deep inside libvirt. vacd now checks first and refuses with an error that names the path,
the user and the directory in the way. Rules:

* `access_problem` is pure: the file's path, the QEMU user's identity and a stat function
  in, the reason it cannot be opened (or None) out. It reads mode bits as the kernel does:
  the owner class, else the group class, else other, never a union of them.
* libvirt's DAC driver, with `dynamic_ownership` on (the default), chowns the images and
  kernels of a domain to the QEMU user, but never the directories above them: with it on,
  only the directories must be traversable; with it off, the file must also be readable.
* A directory or file with a POSIX ACL is not judged (its mode bits do not tell), and a
  QEMU user of uid 0 can open everything.
* `host_qemu_identity` is the edge: it reads `user` and `dynamic_ownership` from
  /etc/libvirt/qemu.conf, else takes Debian's `libvirt-qemu` or EL's `qemu`.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vacd.config import Config
from vacd.errors import VacError

log = logging.getLogger(__name__)

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# The users distributions build libvirt to run QEMU as when qemu.conf does not say.
DEFAULT_QEMU_USERS = ("libvirt-qemu", "qemu")
# Only the system driver runs QEMU as another user; test:/// runs nothing.
SYSTEM_URI = re.compile(r"qemu(\+[a-z]+)?:///system")
_ACL_XATTR = "system.posix_acl_access"
_SETTING = re.compile(r'^\s*(user|dynamic_ownership)\s*=\s*"?([^"#\s]*)"?\s*(?:#.*)?$')

StatFunction = Callable[[str], os.stat_result]


@dataclass(frozen=True)
class QemuIdentity:
    """Who QEMU runs as, and whether libvirt chowns a domain's files to that user."""

    user: str
    uid: int
    gids: frozenset[int]
    dynamic_ownership: bool = True


class NotReadableByQemu(VacError):
    """`/root/vac/cache/vmlinuz: not readable by libvirt-qemu: /root is mode 0700 owner root`."""

    def __init__(self, path: str, user: str, reason: str) -> None:
        self.path = path
        self.user = user
        self.reason = reason
        super().__init__(f"{path}: not readable by {user}: {reason}")


def _allows(status: os.stat_result, identity: QemuIdentity, owner_bit: int, group_bit: int, other_bit: int) -> bool:
    if identity.uid == 0:
        return True
    if status.st_uid == identity.uid:
        return bool(status.st_mode & owner_bit)
    if status.st_gid in identity.gids:
        return bool(status.st_mode & group_bit)
    return bool(status.st_mode & other_bit)


def _describe(path: str, status: os.stat_result, owner_name: Callable[[int], str]) -> str:
    return f"{path} is mode {stat.S_IMODE(status.st_mode):04o} owner {owner_name(status.st_uid)}"


def access_problem(
    path: str,
    identity: QemuIdentity,
    stat_function: StatFunction = os.stat,
    *,
    owner_name: Callable[[int], str] = str,
    has_acl: Callable[[str], bool] = lambda _path: False,
) -> Optional[str]:
    """Why QEMU, running as `identity`, cannot open the file at the absolute, resolved `path`; None if it can."""
    if not path.startswith("/"):
        return f"{path} is not an absolute path"
    parts = [part for part in path.split("/") if part]
    directories = ["/" + "/".join(parts[:index]) for index in range(len(parts))]
    for directory in directories:
        try:
            status = stat_function(directory)
        except OSError as error:
            return f"{directory}: {error.strerror or error}"
        if not _allows(status, identity, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) and not has_acl(directory):
            return _describe(directory, status, owner_name)
    try:
        status = stat_function(path)
    except OSError as error:
        return f"{path}: {error.strerror or error}"
    if identity.dynamic_ownership or has_acl(path):
        return None  # libvirt chowns the file itself to the QEMU user
    if not _allows(status, identity, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return _describe(path, status, owner_name) + " (dynamic_ownership is off)"
    return None


# --- the host --------------------------------------------------------------------------------

def parse_qemu_conf(text: str) -> tuple[Optional[str], bool]:
    """(`user`, `dynamic_ownership`) as /etc/libvirt/qemu.conf sets them; (None, True) by default."""
    user: Optional[str] = None
    dynamic_ownership = True
    for line in text.splitlines():
        match = _SETTING.match(line)
        if match is None:
            continue
        name, value = match.groups()
        if name == "user":
            user = value or None
        else:
            dynamic_ownership = value != "0"
    return user, dynamic_ownership


def _identity_of(user: str, dynamic_ownership: bool) -> Optional[QemuIdentity]:
    try:
        # qemu.conf allows "+UID" for a numeric user.
        entry = pwd.getpwuid(int(user[1:])) if user.startswith("+") else pwd.getpwnam(user)
    except (KeyError, ValueError):
        return None
    gids = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if entry.pw_name in group.gr_mem}
    return QemuIdentity(entry.pw_name, entry.pw_uid, frozenset(gids), dynamic_ownership)


def host_qemu_identity(qemu_conf: Path = QEMU_CONF) -> Optional[QemuIdentity]:
    """Who the system libvirt runs QEMU as on this host; None if that cannot be told."""
    try:
        user, dynamic_ownership = parse_qemu_conf(qemu_conf.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        user, dynamic_ownership = None, True
    candidates = (user,) if user is not None else DEFAULT_QEMU_USERS
    for candidate in candidates:
        identity = _identity_of(candidate, dynamic_ownership)
        if identity is not None:
            return identity
    log.warning("cannot tell which user QEMU runs as (qemu.conf user=%s): image access is not checked", user)
    return None


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _has_acl(path: str) -> bool:
    try:
        return _ACL_XATTR in os.listxattr(path)
    except OSError:
        return False


def check_readable_by_qemu(path: Path, identity: QemuIdentity) -> None:
    """Raise NotReadableByQemu unless QEMU, as `identity`, can open `path` (symbolic links followed)."""
    resolved = os.path.realpath(path)
    reason = access_problem(resolved, identity, os.stat, owner_name=_owner_name, has_acl=_has_acl)
    if reason is not None:
        raise NotReadableByQemu(str(path), identity.user, reason)


def config_access_warnings(config: Config, identity: QemuIdentity) -> list[str]:
    """`vacd --check-config`: one warning per configured local root_image, root_kernel or root_initrd QEMU cannot open."""
    warnings: list[str] = []
    if not SYSTEM_URI.fullmatch(config.settings.libvirt_uri):
        return warnings
    for name, machinetype in sorted(config.machinetypes.items()):
        if not machinetype.is_vm:
            continue
        for option in ("root_image", "root_kernel", "root_initrd"):
            value = getattr(machinetype, option)
            if value is None or "://" in value:
                continue
            try:
                check_readable_by_qemu(Path(machinetype.resolve_file(value)), identity)
            except NotReadableByQemu as error:
                warnings.append(str(config.problem_at(f"machinetype {name}", option, str(error))))
    return warnings
