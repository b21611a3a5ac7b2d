"""A guest's serial console log is bounded: virtlogd, not QEMU, writes it (issue 8 item 4).

The domain XML gives the serial port as a `file` character device. With libvirt's default
`stdio_handler = "logd"` (qemu.conf), libvirt hands QEMU a pipe to virtlogd for it, and
virtlogd rolls the file over at its `max_size` (2 MiB by default, `max_backups` 3 kept),
so a guest printing without end cannot fill the state directory. This test shows, on the
real libvirt, that QEMU holds no descriptor of console.log and virtlogd does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend

pytestmark = pytest.mark.vm

# A slot no other VM test uses, so concurrent runs do not collide on a name.
ORDINAL = 14
CONSOLE_DEADLINE_SECONDS = 120.0


def descriptors_to(pid: int, target: Path) -> list[str]:
    """The /proc/PID/fd entries of `pid` that are open on `target`."""
    fd_dir = Path(f"/proc/{pid}/fd")
    found = []
    for entry in fd_dir.iterdir():
        try:
            if os.readlink(entry) == str(target):
                found.append(entry.name)
        except OSError:
            continue  # closed while we looked
    return found


def pids_named(command_name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command_name:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_console_log_is_written_by_virtlogd_which_rotates_it(
    libvirt_backend: LibvirtBackend, guest_spec: Callable[..., MachineSpec]
) -> None:
    spec = guest_spec(ORDINAL)
    console = spec.machine_dir / "console.log"
    libvirt_backend.create(spec)
    try:
        deadline = time.monotonic() + CONSOLE_DEADLINE_SECONDS
        while time.monotonic() < deadline and not (console.exists() and console.stat().st_size > 0):
            time.sleep(0.5)
        assert console.exists() and console.stat().st_size > 0, "the guest wrote nothing to its console"
        qemu_pid = int(Path(f"/run/libvirt/qemu/{spec.name}.pid").read_text().strip())
        assert descriptors_to(qemu_pid, console) == [], "QEMU writes console.log itself: it is unbounded"
        holders = [pid for pid in pids_named("virtlogd") if descriptors_to(pid, console)]
        assert holders, "no virtlogd holds console.log (qemu.conf stdio_handler is not logd?)"
    finally:
        libvirt_backend.destroy(spec.name, spec.uuid)
