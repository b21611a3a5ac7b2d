"""cloud-init's own metadata readers against our servers, on a guest network in namespaces.

Two network namespaces joined by a veth pair stand in for the factory and one guest:
- host side `vh`: 169.254.169.253/16, 169.254.169.254/32 and fe80::a9fe:a9fe/64, as the
  factory's bridge has them (§1.9); GuestApiServer runs here on port 80 with the default
  identity mapping (nothing injected);
- guest side `vg`: MAC 56:4D:A9:FE:A9:03, 169.254.169.3/16 and the EUI-64 link-local
  address that MAC gives, i.e. slot 3 of factory f1.example.com.
In the guest namespace the system python3 runs Debian's cloud-init modules:
`cloudinit.sources.helpers.openstack.MetadataReader.read_v2()` (the OpenStack datasource's
crawl, which includes the EC2 `meta-data/` crawl of `helpers.ec2.get_instance_metadata`),
first over IPv4 and then over the IPv6 link-local base cloud-init also probes, plus a
$JOBOUTPUTS PUT and an MJF GET as a payload would make them, and an IMDSv2 session token
got and used through cloud-init's own HTTP client and its EC2 datasource's header names.
It runs with `metadata_tokens` optional and required: the crawl sends no token either way.

Needs root (namespaces, port 80) and Debian's cloud-init, which it installs if missing.
Without either it fails, unless VAC_ALLOW_VM_SKIP=1 is set, when it skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vacd.config import Machinetype, Settings  # noqa: E402
from vacd.guestapi.contextualise import prepare_machine_dir  # noqa: E402
from vacd.paths import Paths  # noqa: E402
from vacd.slots import slot_identity  # noqa: E402
from vacd.records import MachineRecord  # noqa: E402
from vacd.store import Store  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.allow_commands("ip", "apt-get", "python3")]

SYSTEM_PYTHON = "/usr/bin/python3"
FACTORY_NAME = "f1.example.com"
SPACE = "vac01.example.com"
ORDINAL = 3
UUID = "6c1f7a4e-3b2d-4f5a-9e8c-0a1b2c3d4e5f"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIntegrationIntegrationIntegration root@f1.example.com"
TEMPLATE = "#cloud-config\nhostname: ##user_data_machine_hostname##\n# uuid ##user_data_uuid## ##user_data_gone##\n"
IDENTITY = slot_identity(FACTORY_NAME, ORDINAL)

GUEST_SCRIPT = r"""
import json, sys, urllib.request
from cloudinit.sources.helpers import openstack

def crawl(base):
    reader = openstack.MetadataReader(base, timeout=5, retries=2)
    result = reader.read_v2()
    network = openstack.convert_net_json(result["networkdata"], known_macs={sys.argv[2]: "vg"})
    return {
        "versions": reader._fetch_available_versions(),
        "metadata": {key: value for key, value in result["metadata"].items() if key != "random_seed"},
        "userdata": result["userdata"].decode(),
        "vendordata": result.get("vendordata"),
        "network": network,
        "ec2": result["ec2-metadata"],
    }

out = {"ipv4": crawl("http://169.254.169.254"), "ipv6": crawl("http://[fe80::a9fe:a9fe%25vg]")}
request = urllib.request.Request(
    "http://169.254.169.253/joboutputs/shutdown_message", data=b"300 No more work", method="PUT"
)
out["put_status"] = urllib.request.urlopen(request, timeout=5).status
out["job_id"] = urllib.request.urlopen("http://169.254.169.253/jobfeatures/job_id", timeout=5).read().decode()

# IMDSv2 as cloud-init's EC2 datasource asks for it (on AWS), through cloud-init's HTTP client.
from cloudinit import url_helper
from cloudinit.sources import DataSourceEc2
token = url_helper.readurl(
    "http://169.254.169.254/" + DataSourceEc2.API_TOKEN_ROUTE, request_method="PUT",
    headers={DataSourceEc2.AWS_TOKEN_REQ_HEADER: DataSourceEc2.AWS_TOKEN_TTL_SECONDS},
).contents.decode()
vac_path = "http://169.254.169.254/latest/meta-data.json"
out["with_token"] = json.loads(url_helper.readurl(vac_path, headers={DataSourceEc2.AWS_TOKEN_PUT_HEADER: token}).contents)["uuid"]
try:
    out["without_token"] = url_helper.readurl(vac_path, retries=0).code
except url_helper.UrlError as error:
    out["without_token"] = error.code
print(json.dumps(out))
"""


def requirement_missing(reason: str) -> None:
    if os.environ.get("VAC_ALLOW_VM_SKIP") == "1":
        pytest.skip(reason)
    pytest.fail(f"{reason} (set VAC_ALLOW_VM_SKIP=1 to skip instead)")


def run(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def ensure_cloud_init() -> None:
    probe = [SYSTEM_PYTHON, "-c", "import cloudinit.sources.helpers.openstack"]
    if os.path.exists(SYSTEM_PYTHON) and run(*probe, check=False).returncode == 0:
        return
    if shutil.which("apt-get") is None:
        requirement_missing("cloud-init is not installed and apt-get is not available")
    install = run(
        "apt-get", "install", "-y", "--no-install-recommends", "cloud-init", timeout=600, check=False
    )
    if install.returncode != 0 or run(*probe, check=False).returncode != 0:
        requirement_missing(f"cannot install cloud-init: {install.stderr[-500:]}")


def make_machine(prefix: Path, metadata_tokens: str = "optional") -> Settings:
    paths = Paths(prefix)
    paths.ensure_state_dirs()
    settings = Settings(
        vac_space=SPACE, factory_name=FACTORY_NAME, total_processors=4, host_processors=4, gocdb_sitename="UKI-TEST",
        root_public_key=str(paths.under_prefix("/root/.ssh/id_rsa.pub")),  # the parser's default under --prefix
        metadata_tokens=metadata_tokens,
    )
    machinetype_path = paths.machinetypes_dir / "example"
    (machinetype_path / "files").mkdir(parents=True)
    (machinetype_path / "files" / "user_data").write_text(TEMPLATE)
    machinetype = Machinetype(
        name="example", machinegroup="example", machinetype_path=machinetype_path, user_data="user_data"
    )
    key_path = Path(settings.root_public_key)
    key_path.parent.mkdir(parents=True)
    key_path.write_text(PUBLIC_KEY + "\n")
    now = int(time.time())
    record = MachineRecord(
        name=IDENTITY.machine_name,
        ordinal=ORDINAL,
        uuid=UUID,
        machinetype="example",
        machine_model="vm-raw",
        processors=1,
        created_time=now,
        shutdown_time=now + 86400,
        ip_address=IDENTITY.ip_address,
        hs06=1.0,
        mb=2048,
    )
    store = Store(paths)
    directory = store.begin_creation(record)
    prepare_machine_dir(paths, settings, machinetype, record, directory, now=now)
    store.mark_started(record, now)
    return settings


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        requirement_missing("network namespaces and port 80 need root")
    if shutil.which("ip") is None:
        requirement_missing("iproute2 (ip) is not installed")
    suffix = str(os.getpid())
    host, guest = f"vac-ci-host-{suffix}", f"vac-ci-guest-{suffix}"
    created: list[str] = []
    try:
        for namespace in (host, guest):
            run("ip", "netns", "add", namespace)
            created.append(namespace)
        run("ip", "-n", host, "link", "add", "vh", "type", "veth", "peer", "name", "vg", "netns", guest)
        for namespace, device in ((host, "vh"), (guest, "vg")):
            # No duplicate address detection: nobody else is on this link, and tentative
            # addresses cannot be bound or used as a source.
            run("ip", "netns", "exec", namespace, "sysctl", "-qw", f"net.ipv6.conf.{device}.accept_dad=0")
            run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "-n", guest, "link", "set", "vg", "address", IDENTITY.mac_address.lower())
        run("ip", "-n", host, "addr", "add", "169.254.169.253/16", "dev", "vh")
        run("ip", "-n", host, "addr", "add", "169.254.169.254/32", "dev", "vh")
        run("ip", "-n", host, "addr", "add", "fe80::a9fe:a9fe/64", "dev", "vh")
        run("ip", "-n", guest, "addr", "add", f"{IDENTITY.ip_address}/16", "dev", "vg")
        run("ip", "-n", host, "link", "set", "vh", "up")
        run("ip", "-n", guest, "link", "set", "vg", "up")
        yield host, guest
    finally:
        for namespace in created:
            run("ip", "netns", "del", namespace, check=False)


def start_server(host: str, prefix: Path, settings: Settings) -> subprocess.Popen:
    server = subprocess.Popen(
        ["ip", "netns", "exec", host, sys.executable, __file__, "serve", str(prefix), json.dumps(asdict(settings))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if not line.startswith("listening"):
        server.kill()
        raise AssertionError(f"server did not start: {line!r} {server.stderr.read() if server.stderr else ''}")
    return server


def stop_server(server: subprocess.Popen) -> str:
    server.terminate()
    try:
        _out, errors = server.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        _out, errors = server.communicate()
    return errors


# cloud-init's OpenStack datasource sends no session token: its paths never need one (issue 11 item 3).
@pytest.mark.parametrize("metadata_tokens", ["optional", "required"])
def test_cloud_init_reads_our_metadata_as_slot_3(namespaces: tuple[str, str], tmp_path: Path,
                                                 metadata_tokens: str) -> None:
    host, guest = namespaces
    ensure_cloud_init()
    settings = make_machine(tmp_path, metadata_tokens)
    server = start_server(host, tmp_path, settings)
    server_log: Optional[str] = None
    try:
        completed = run(
            "ip", "netns", "exec", guest, SYSTEM_PYTHON, "-c", GUEST_SCRIPT, "x", IDENTITY.mac_address.lower(),
            timeout=120, check=False,
        )
    finally:
        server_log = stop_server(server)
    assert completed.returncode == 0, f"{completed.stderr[-3000:]}\nserver log:\n{server_log[-3000:]}"
    result = json.loads(completed.stdout)

    for family in ("ipv4", "ipv6"):
        crawl = result[family]
        assert "2018-08-27" in crawl["versions"] and "latest" in crawl["versions"]
        metadata = crawl["metadata"]
        assert metadata["instance-id"] == UUID
        assert metadata["local-hostname"] == IDENTITY.machine_name
        assert metadata["public_keys"] == {"0": PUBLIC_KEY}
        assert metadata["meta"]["machinetype"] == "example"
        assert crawl["userdata"] == f"#cloud-config\nhostname: {IDENTITY.machine_name}\n# uuid {UUID} \n"
        assert crawl["vendordata"] == {}
        ec2 = crawl["ec2"]
        assert ec2["instance-id"] == UUID
        assert ec2["local-hostname"] == IDENTITY.machine_name
        assert ec2["local-ipv4"] == IDENTITY.ip_address
        assert ec2["public-keys"] == {"root": PUBLIC_KEY}
        assert ec2["placement"] == {"availability-zone": FACTORY_NAME}
        (interface, nameserver) = crawl["network"]["config"]
        assert (interface["name"], interface["mac_address"]) == ("vg", IDENTITY.mac_address.lower())
        assert interface["subnets"][0]["address"] == IDENTITY.ip_address
        assert interface["subnets"][0]["routes"][0]["gateway"] == "169.254.169.253"
        assert nameserver == {"type": "nameserver", "address": "169.254.169.253"}
    assert result["put_status"] == 201
    assert result["job_id"] == UUID
    assert result["with_token"] == UUID
    assert result["without_token"] == (401 if metadata_tokens == "required" else 200)
    machine_dir = next((tmp_path / "var/lib/vac/machines").iterdir())
    assert (machine_dir / "joboutputs" / "shutdown_message").read_text() == "300 No more work"


def serve(prefix: str, settings_json: str) -> None:
    """Run GuestApiServer on the guest network addresses until SIGTERM (in the host namespace)."""
    import asyncio
    import logging
    import signal

    from vacd.guestapi.server import GuestApiServer

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    fields = json.loads(settings_json)
    fields["factories"] = tuple(fields["factories"])
    fields["vacmon_hostport"] = tuple(fields["vacmon_hostport"])
    settings = Settings(**fields)
    paths = Paths(Path(prefix))

    async def main() -> None:
        server = GuestApiServer(
            paths,
            Store(paths),
            lambda: settings,
            metadata_addresses=("169.254.169.254", "fe80::a9fe:a9fe%vh"),
            mjf_addresses=("169.254.169.253",),
            port=80,
        )
        await server.start()
        print("listening", [(entry.part, entry.host, entry.port) for entry in server.listening], flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2], sys.argv[3])
