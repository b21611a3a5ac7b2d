"""vacd itself running docker machinetypes as real podman containers (issue 13).

Each test runs the real `vacd` re-rooted in tmp_path, on the shared test network (the
containers' veths join its bridge), with a tiny image the session builds from the host's
static busybox by `podman import` (no registry). The payload is the machine's user_data,
run as container_command; it reads its MJF from the binds, asks the guest API who it is,
and writes $JOBOUTPUTS/shutdown_message. Every container, slot namespace and cgroup the
tests leave is removed at teardown through the backend's own destroy; vacd is stopped by PID.

Run under the machine-wide lock (COMMON.md): these tests use the libvirt network's bridge
and the guest API ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid as uuid_module
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import TEST_FACTORY_NAME, TestGuest, VacNetwork
from tests.integration.test_vacd_real_vms import REPOSITORY, RunningFactory, slot_name
from vacd.backends.podman import PodmanBackend
from vacd.backends.slotnetwork import NETNS_DIR, SlotNetwork, tear_down_slot_network
from vacd.network import BRIDGE_NAME
from vacd.slots import ip_address_for, mac_address_for

pytestmark = [pytest.mark.vm, pytest.mark.allow_commands("podman", sys.executable)]

BUSYBOX = Path("/bin/busybox")
VACQUERY_PORT = 29961
SETTINGS = f"""[settings]
vac_space = vacspace.example.org
factory_name = {TEST_FACTORY_NAME}
factories = {TEST_FACTORY_NAME}=127.0.0.1
vacquery_port = {VACQUERY_PORT}
vacquery_bind_address = 127.0.0.1
host_processors = 16
mb_per_processor = 128
cycle_seconds = 3
hs06_per_processor = 10
shutdown_grace_seconds = 5
# The load gate (§4.1) is not under test: other helpers' work keeps this 2-core host loaded.
overload_per_processor = 100
"""
# The payload: read the MJF binds, burn some CPU for the accounting, ask the guest API for
# its own job_id (as its slot), try to take the neighbour's address, then report and end.
PAYLOAD = """#!/bin/sh
exec > $JOBOUTPUTS/payload.log 2>&1
cat /etc/jobfeatures/job_id > $JOBOUTPUTS/mjf_job_id
cat /etc/machinefeatures/total_cpu > $JOBOUTPUTS/mjf_total_cpu
ls /etc/jobfeatures > $JOBOUTPUTS/jobfeatures_listing
i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done
timeout 20 wget -q -O $JOBOUTPUTS/api_job_id http://169.254.169.253/jobfeatures/job_id
if ip addr add ##user_data_option_neighbour##/16 dev eth0; then echo took > $JOBOUTPUTS/neighbour; \
else echo refused > $JOBOUTPUTS/neighbour; fi
if arping -q -U -c 1 -s ##user_data_option_neighbour## -I eth0 169.254.169.253; then echo sent > $JOBOUTPUTS/raw; \
else echo refused > $JOBOUTPUTS/raw; fi
##user_data_option_then##
echo '200 Success' > $JOBOUTPUTS/shutdown_message
"""


def podman(*arguments: str, check: bool = True) -> str:
    result = subprocess.run(["podman", *arguments], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(arguments)} exited {result.returncode}: {result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-binary image: the host's static busybox and its applets, imported as a tarball."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (tools/install-deps installs it)", pytrace=False)
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    tarball = tmp_path_factory.mktemp("image") / "rootfs.tar"
    with tarfile.open(tarball, "w") as archive:
        for directory in ("bin", "etc", "tmp", "var", "var/spool", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            archive.addfile(info)
        archive.add(str(BUSYBOX), "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                archive.addfile(info)
    reference = f"localhost/vac-test-busybox:{uuid_module.uuid4().hex[:12]}"
    podman("import", str(tarball), reference)
    try:
        yield reference
    finally:
        podman("rmi", "--force", reference, check=False)


class ContainerFactory(RunningFactory):
    def write_config(self, text: str, payloads: dict[str, str]) -> None:
        (self.prefix / "etc").mkdir(parents=True, exist_ok=True)
        for name, payload in payloads.items():
            files = self.prefix / "var/lib/vac/machinetypes" / name / "files"
            files.mkdir(parents=True, exist_ok=True)
            (files / "payload.sh").write_text(payload)
        (self.prefix / "etc/vac.conf").write_text(text)

    def containers(self) -> dict[str, dict[str, str]]:
        listed = json.loads(podman("ps", "--all", "--filter", "label=vac.uuid", "--format", "json") or "[]")
        return {entry["Labels"]["vac.machine"]: {"id": entry["Id"], "uuid": entry["Labels"]["vac.uuid"],
                                                 "state": entry["State"]}
                for entry in listed if entry["Labels"]["vac.machine"].startswith("vactest-")}

    def vac(self, *arguments: str) -> str:
        environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
        result = subprocess.run([sys.executable, "-m", "vacd.cli", "--prefix", str(self.prefix), *arguments],
                                capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def factory(tmp_path: Path, libvirtd: str, vac_network: VacNetwork) -> Iterator[ContainerFactory]:
    running = ContainerFactory(tmp_path / "prefix", libvirtd)
    running.prefix.mkdir()
    try:
        yield running
    finally:
        running.kill()
        running.destroy_everything()
        backend = PodmanBackend(bridge=BRIDGE_NAME)
        for name in running.containers():
            backend.destroy(name)
        backend.close()
        for ordinal in range(4):  # what a failed test may have left between namespace and container
            tear_down_slot_network(SlotNetwork(ordinal, mac_address_for(ip_address_for(ordinal)),
                                               ip_address_for(ordinal)))


def event_readers(vacd_pid: int) -> list[int]:
    """The `podman events` processes whose parent is `vacd_pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == vacd_pid and b"events" in command:
            found.append(int(entry.name))
    return found


def docker_machinetype(image: str, *, share: int = 1, then: str = "", neighbour: str = "169.254.169.1",
                       processors: int = 1) -> str:
    return f"""target_share = {share}
machine_model = docker
root_image = docker://{image}
user_data = payload.sh
user_data_option_then = {then}
user_data_option_neighbour = {neighbour}
min_processors = {processors}
max_processors = {processors}
fizzle_seconds = 1
backoff_seconds = 5
"""


def test_container_reads_its_mjf_reports_success_and_is_accounted_with_its_cpu_time(
    factory: ContainerFactory, busybox_image: str
) -> None:
    factory.write_config(SETTINGS + "total_processors = 1\n[machinetype box]\n" + docker_machinetype(busybox_image),
                         {"box": PAYLOAD})
    factory.start()
    factory.wait_for("a finished container", lambda: any(
        record["finished"] is not None for record in factory.records()), timeout=120)
    record = next(record for record in factory.records() if record["finished"] is not None)
    outputs = Path(record["directory"]) / "joboutputs"
    assert record["ordinal"] == 0 and record["machine_model"] == "docker"
    assert (outputs / "mjf_job_id").read_text().strip() == record["uuid"], (outputs / "payload.log").read_text()
    assert (outputs / "mjf_total_cpu").read_text().strip() == "1"
    # The guest API knew the container as slot 0's machine by its address and link (its own netns).
    assert (outputs / "api_job_id").read_text().strip() == record["uuid"], (outputs / "payload.log").read_text()
    assert record["finished"]["shutdown_message"] == "200 Success"
    # Real CPU time from the container's own cgroup, in the finish record and the APEL record.
    assert record["finished"]["cpu_seconds"] >= 1.0, record["finished"]
    # gocdb_sitename is unset, so the record is archived rather than queued for APEL.
    apel = "".join(path.read_text() for path in (factory.prefix / "var/lib/vac/apel-archive").rglob("*")
                   if path.is_file())
    assert f"LocalJobId: {record['uuid']}" in apel
    cpu_duration = int(next(line for line in apel.splitlines() if line.startswith("CpuDuration:")).split()[1])
    assert cpu_duration >= 1 and abs(cpu_duration - record["finished"]["cpu_seconds"]) <= 1, apel
    # The ended container is removed, with its slot's namespace (the slot is refilled meanwhile).
    factory.wait_for("the first container removed", lambda: all(
        entry["uuid"] != record["uuid"] for entry in factory.containers().values()), timeout=60)


def test_two_containers_each_see_only_their_own_machine(factory: ContainerFactory, busybox_image: str) -> None:
    # Slot 0 tries to take slot 1's address and the reverse: neither may (no CAP_NET_ADMIN),
    # and each is served its own job_id by the guest API, never the other's.
    factory.write_config(
        SETTINGS + "total_processors = 2\n[machinetype a]\n"
        + docker_machinetype(busybox_image, neighbour="169.254.169.1", then="sleep 600"),
        {"a": PAYLOAD})
    factory.start()
    factory.wait_for("two containers that asked the guest API", lambda: len(factory.records()) == 2 and all(
        (Path(record["directory"]) / "joboutputs/neighbour").exists() for record in factory.records()), timeout=120)
    records = factory.records()
    assert {record["ordinal"] for record in records} == {0, 1}
    for record in records:
        outputs = Path(record["directory"]) / "joboutputs"
        assert (outputs / "neighbour").read_text().strip() == "refused", (outputs / "payload.log").read_text()
        # Nor send an ARP claiming it (no CAP_NET_RAW).
        assert (outputs / "raw").read_text().strip() == "refused", (outputs / "payload.log").read_text()
        assert (outputs / "api_job_id").read_text().strip() == record["uuid"]
        assert (outputs / "mjf_job_id").read_text().strip() == record["uuid"]
    assert records[0]["uuid"] != records[1]["uuid"]


def test_sigkilled_vacd_restarted_adopts_running_containers(factory: ContainerFactory, busybox_image: str) -> None:
    factory.write_config(SETTINGS + "total_processors = 2\n[machinetype long]\n"
                         + docker_machinetype(busybox_image, then="sleep 600"), {"long": PAYLOAD})
    factory.start()
    factory.wait_for("two running containers", lambda: len(
        [entry for entry in factory.containers().values() if entry["state"] == "running"]) == 2, timeout=120)
    before = factory.containers()
    assert factory.process is not None
    readers = event_readers(factory.process.pid)
    assert readers, "vacd started no podman events reader"
    factory.kill(signal.SIGKILL)
    # The events reader dies with vacd (parent-death signal), not at the next container event.
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in readers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in readers), readers
    (factory.prefix / "var/lib/vac/vacd.pid").unlink(missing_ok=True)
    factory.start()
    first_time = factory.status().get("time", 0)
    factory.wait_for("two passes after the restart", lambda: factory.status().get("time", 0) >= first_time + 6,
                     timeout=60)
    assert factory.containers() == before
    assert len(factory.records()) == 2 and all(record["finished"] is None for record in factory.records())
    slots = {slot["name"]: slot["state"] for slot in factory.status()["slots"]}
    assert slots[slot_name(0)] == "Running" and slots[slot_name(1)] == "Running"
    assert (NETNS_DIR / "vac-slot-00").exists() and (NETNS_DIR / "vac-slot-01").exists()


def test_mixed_factory_runs_a_vm_and_a_container_and_vac_machines_lists_both(
    factory: ContainerFactory, busybox_image: str, test_guest: TestGuest
) -> None:
    factory.write_config(SETTINGS + f"""total_processors = 2
[machinetype vm]
target_share = 1
machine_model = vm-raw
root_kernel = {test_guest.kernel}
root_initrd = {test_guest.initrd}
kernel_command_line = {test_guest.kernel_command_line}
user_data = payload.sh
fizzle_seconds = 5
backoff_seconds = 5
[machinetype box]
""" + docker_machinetype(busybox_image, then="sleep 600"), {"vm": "#!/bin/sh\nsleep 600\n", "box": PAYLOAD})
    factory.start()
    factory.wait_for("a VM and a container running", lambda: len(factory.running_domains()) == 1 and len(
        [entry for entry in factory.containers().values() if entry["state"] == "running"]) == 1, timeout=150)
    factory.wait_for("both slots Running", lambda: sorted(
        slot["state"] for slot in factory.status().get("slots", [])[:2]) == ["Running", "Running"], timeout=60)
    models = {record["name"]: record["machine_model"] for record in factory.records()}
    assert sorted(models.values()) == ["docker", "vm-raw"]
    listing = factory.vac("machines", "-t", "10")
    rows = {line.split()[0]: line for line in listing.splitlines()[1:] if line.strip()}
    for name, model in models.items():
        row = rows[name.partition(".")[0]]
        machinetype, model_column = ("box", "DC") if model == "docker" else ("vm", "VM")
        assert row.split()[1:3] == [machinetype, "Running"] and model_column in row.split(), listing


def test_container_past_max_wallclock_seconds_is_stopped_and_finalised(
    factory: ContainerFactory, busybox_image: str
) -> None:
    # The payload's sleep is PID 1 and ignores SIGTERM: the hard removal after the grace ends it.
    factory.write_config(SETTINGS + "total_processors = 1\n[machinetype long]\n"
                         + docker_machinetype(busybox_image, then="sleep 600")
                         + "max_wallclock_seconds = 8\nmin_wallclock_seconds = 8\n", {"long": PAYLOAD})
    factory.start()
    factory.wait_for("the first container finalised", lambda: bool(factory.records())
                     and factory.records()[0]["finished"] is not None, timeout=120)
    first = factory.records()[0]
    assert first["finished"]["shutdown_message"] == "700 Exceeded max_wallclock_seconds"
    assert first["uuid"] not in [entry["uuid"] for entry in factory.containers().values()]


def test_zombie_container_in_a_slot_name_is_removed(factory: ContainerFactory, busybox_image: str) -> None:
    podman("run", "--detach", "--runtime", "runc", "--network", "none", "--ulimit", "nofile=1024:1024",
           "--ulimit", "nproc=1024:1024", "--name", slot_name(3), "--label", "vac.uuid=not-a-record",
           "--label", f"vac.machine={slot_name(3)}", "--label", "vac.slot=3", busybox_image, "sleep", "600")
    assert slot_name(3) in factory.containers()
    factory.write_config(SETTINGS + "total_processors = 1\ndraining = yes\n[machinetype box]\n"
                         + docker_machinetype(busybox_image), {"box": PAYLOAD})
    factory.start()
    factory.wait_for("the zombie removed", lambda: slot_name(3) not in factory.containers(), timeout=60)
    assert factory.records() == []
