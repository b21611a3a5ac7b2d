"""Singularity machines under vacd.backends.apptainer, run for real with a stand-in for apptainer.

No apptainer binary exists on the project's test host (Debian 12 has none), so a shell
script takes its place: it receives the argv vacd built (checked against apptainer's
documented options in test_containerargv.py), finds the host directory bound at
/tmp/joboutputs, and records what the machine is: its user, host name, address, cgroup and
environment. Everything else is real: the launcher process, the cgroup made on this host's
cgroup tree, the slot's network namespace on a bridge the test makes, the user switch, the
SIGKILL of the machine's processes and the adoption by a second backend (a restarted vacd).
Where a real apptainer is installed, the last test runs a payload through it.

Slot 96 and a bridge of the test's own: no factory's slot or the guest network is touched.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import sys
import tempfile
import time
import uuid as uuid_module
from pathlib import Path
from typing import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from vacd.backends.apptainer import ApptainerBackend
from vacd.backends.base import MachineSpec, ObservedState
from vacd.backends.cgroupcpu import CGROUP_ROOT, MachineCgroups, cgroup_layout
from vacd.backends.slotnetwork import SlotNetwork, slot_network_exists
from vacd.slots import ip_address_for, mac_address_for

pytestmark = pytest.mark.allow_commands(sys.executable, "ldconfig")

ORDINAL = 96
NAME = f"vacapptest-{ORDINAL}.example.org"
USER = "nobody"
STAND_IN = """#!/bin/sh
# In apptainer's place: record what the machine is, then behave as the payload is told to.
for argument; do case "$argument" in *:/tmp/joboutputs) out=${argument%%:*};; esac; done
{
  echo "uid=$(id -u)"
  echo "hostname=$(hostname)"
  echo "address=$(ip -4 -o addr show dev eth0 | awk '{print $4}')"
  echo "cgroup=$(grep -E ':(cpuacct|cpu,cpuacct|):' /proc/self/cgroup | head -1)"
  echo "JOBOUTPUTS=$JOBOUTPUTS"
  echo "argv=$*"
} > "$out/facts"
i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done
case "$(cat "$out/../behaviour")" in
  end) echo '200 Success' > "$out/shutdown_message" ;;
  *) exec sleep 600 ;;
esac
"""


@pytest.fixture
def world() -> Iterator[tuple[Path, str]]:
    """A 0755 scratch directory (the payload runs as nobody) and a bridge of the test's own."""
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups, namespaces and a user switch")
    base = Path(tempfile.mkdtemp(prefix="vac-apptainer-"))
    base.chmod(0o755)
    bridge = "vacab" + uuid_module.uuid4().hex[:8]
    with IPRoute() as host:
        host.link("add", ifname=bridge, kind="bridge")
    try:
        yield base, bridge
    finally:
        with IPRoute() as host:
            for index in host.link_lookup(ifname=bridge):
                host.link("del", index=index)
        shutil.rmtree(base, ignore_errors=True)


def make_backend(base: Path, bridge: str, apptainer: Path) -> ApptainerBackend:
    return ApptainerBackend(bridge=bridge, user=USER, state_dir=base / "state", apptainer=str(apptainer),
                            cgroups=MachineCgroups(cgroup_layout(CGROUP_ROOT), CGROUP_ROOT))


def make_machine(base: Path, behaviour: str) -> MachineSpec:
    machine_dir = base / "machines" / NAME
    for subdirectory in ("machinefeatures", "jobfeatures", "joboutputs"):
        (machine_dir / subdirectory).mkdir(parents=True, mode=0o755)
    (machine_dir / "behaviour").write_text(behaviour)
    (machine_dir / "user_data").write_text("#!/bin/sh\n")
    machine_dir.chmod(0o755)
    return MachineSpec(name=NAME, uuid=str(uuid_module.uuid4()), ordinal=ORDINAL,
                       mac_address=mac_address_for(ip_address_for(ORDINAL)), ip_address=ip_address_for(ORDINAL),
                       vnc_port=5900 + ORDINAL, processors=1, memory_mib=128, machine_dir=machine_dir,
                       machine_model="singularity", container_image="/cvmfs/unpacked.example/x",
                       container_command="/user_data")


def stand_in(base: Path) -> Path:
    path = base / "apptainer"
    path.write_text(STAND_IN)
    path.chmod(0o755)
    return path


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def facts(spec: MachineSpec) -> dict[str, str]:
    text = (spec.machine_dir / "joboutputs/facts").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_machine_runs_as_the_user_in_its_slot_network_cgroup_and_hostname_and_is_adopted_and_destroyed(
    world: tuple[Path, str]
) -> None:
    base, bridge = world
    backend = make_backend(base, bridge, stand_in(base))
    spec = make_machine(base, "run")
    try:
        backend.create(spec)
        wait_until("the payload's facts", lambda: (spec.machine_dir / "joboutputs/facts").exists()
                   and "argv=" in (spec.machine_dir / "joboutputs/facts").read_text())
        seen = facts(spec)
        assert seen["uid"] == str(pwd.getpwnam(USER).pw_uid)
        assert seen["hostname"] == NAME
        assert seen["address"] == f"{ip_address_for(ORDINAL)}/16"
        assert seen["cgroup"].endswith(f"/vac/{NAME}")
        assert seen["JOBOUTPUTS"] == "/tmp/joboutputs"
        assert seen["argv"].startswith("exec --contain --workdir")
        assert stat.S_IMODE((spec.machine_dir / "user_data").stat().st_mode) == 0o500
        (running,) = backend.list_machines()
        assert (running.name, running.uuid, running.state) == (NAME, spec.uuid, ObservedState.RUNNING)

        # A restarted vacd: a new backend with nothing in memory adopts it from its record.
        restarted = make_backend(base, bridge, stand_in(base))
        (adopted,) = restarted.list_machines()
        assert (adopted.uuid, adopted.state) == (spec.uuid, ObservedState.RUNNING)
        wait_until("some CPU time", lambda: restarted.list_machines()[0].cpu_seconds > 0)

        restarted.destroy(NAME, "another-uuid")
        assert restarted.list_machines()[0].state == ObservedState.RUNNING
        restarted.destroy(NAME, spec.uuid)
        assert restarted.list_machines() == [] and backend.list_machines() == []
        assert not slot_network_exists(SlotNetwork(ORDINAL, spec.mac_address, spec.ip_address))
        assert not any(path.exists() for path in MachineCgroups(cgroup_layout(CGROUP_ROOT), CGROUP_ROOT)
                       .directories(NAME))
        restarted.destroy(NAME, spec.uuid)  # gone is success
    finally:
        backend.destroy(NAME)


def test_a_machine_that_ends_is_listed_once_with_its_cpu_time_then_cleared(world: tuple[Path, str]) -> None:
    base, bridge = world
    backend = make_backend(base, bridge, stand_in(base))
    spec = make_machine(base, "end")
    woken: list[str] = []
    backend.watch(woken.append)
    try:
        backend.create(spec)
        wait_until("the machine's end", lambda: woken == [NAME])
        (ended,) = backend.list_machines()
        assert ended.state == ObservedState.SHUTTING_DOWN and ended.cpu_seconds > 0
        assert (spec.machine_dir / "joboutputs/shutdown_message").read_text() == "200 Success\n"
        assert backend.list_machines() == []
        assert not (base / "state" / f"{NAME}.json").exists()
    finally:
        backend.destroy(NAME)


def test_a_real_apptainer_runs_the_payload_where_one_is_installed(world: tuple[Path, str]) -> None:
    apptainer = shutil.which("apptainer")
    if apptainer is None:
        pytest.skip("no apptainer binary on this host (Debian 12 packages none): the stand-in tests above ran")
    base, bridge = world
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    for directory in ("tmp", "proc", "sys", "dev", "etc"):
        (root / directory).mkdir()
    backend = make_backend(base, bridge, Path(apptainer))
    spec = make_machine(base, "end")
    (spec.machine_dir / "user_data").write_text("#!/bin/sh\ncat /tmp/jobfeatures/job_id > $JOBOUTPUTS/job_id\n"
                                                "echo '200 Success' > $JOBOUTPUTS/shutdown_message\n")
    (spec.machine_dir / "jobfeatures/job_id").write_text(spec.uuid + "\n")
    spec = MachineSpec(**{**spec.__dict__, "container_image": str(root)})
    try:
        backend.create(spec)
        wait_until("the payload's message", lambda: (spec.machine_dir / "joboutputs/shutdown_message").exists(),
                   timeout=120)
        assert (spec.machine_dir / "joboutputs/job_id").read_text().strip() == spec.uuid, json.dumps(
            (spec.machine_dir / "console.log").read_text())
    finally:
        backend.destroy(NAME)
