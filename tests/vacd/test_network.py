"""Tests of vacd.network: the vac NAT network (libvirt test driver), hosts lines, bridge address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterator

import libvirt
import pytest

from vacd.network import (
    DNSMASQ_NAMESPACE,
    NETWORK_NAME,
    DhcpHost,
    NetworkError,
    dhcp_host_changes,
    ensure_hosts_entries,
    ensure_interface_address,
    ensure_libvirt_network,
    hosts_lines,
    hosts_update,
    network_differences,
    network_xml,
    plan_network_change,
)
from vacd.paths import Paths

FACTORY = "f1.example.com"
# libvirt's test driver has no dnsmasq and drops the dnsmasq namespace from network XML, so
# networks there are wanted with dnsmasq_options=() (the real XML is checked separately).


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A private libvirt test driver (its state is this connection's alone)."""
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    libvirt.registerErrorHandler(lambda context, error: None, None)
    opened = libvirt.open(f"test://{node}")
    try:
        yield opened
    finally:
        opened.close()


def test_network_xml_has_nat_gateway_address_and_no_ping() -> None:
    network = ElementTree.fromstring(network_xml(FACTORY, 4))
    assert network.findtext("name") == "vac_169.254.0.0"
    assert network.find("forward").attrib == {"mode": "nat"}  # type: ignore[union-attr]
    address = network.find("ip")
    assert address is not None
    assert (address.get("address"), address.get("netmask")) == ("169.254.169.253", "255.255.0.0")
    options = [o.get("value") for o in network.iter(f"{{{DNSMASQ_NAMESPACE}}}option")]
    assert options == ["no-ping"]


def test_network_xml_has_one_static_host_per_slot_and_no_range() -> None:
    dhcp = ElementTree.fromstring(network_xml(FACTORY, 4)).find("ip/dhcp")
    assert dhcp is not None
    assert dhcp.find("range") is None
    hosts = [host.attrib for host in dhcp.findall("host")]
    assert len(hosts) == 4
    assert hosts[3] == {"mac": "56:4D:A9:FE:A9:03", "name": "f1-03", "ip": "169.254.169.3"}


def test_network_xml_names_its_bridge_without_stp() -> None:
    bridge = ElementTree.fromstring(network_xml(FACTORY, 1)).find("bridge")
    assert bridge is not None and bridge.attrib == {"name": "vacbr0", "stp": "off", "delay": "0"}


def test_network_xml_forwards_through_forward_dev_when_set() -> None:
    forward = ElementTree.fromstring(network_xml(FACTORY, 1, forward_dev="eth1")).find("forward")
    assert forward is not None and forward.attrib == {"mode": "nat", "dev": "eth1"}


def test_network_with_same_facts_needs_no_change() -> None:
    assert network_differences(network_xml(FACTORY, 8), network_xml(FACTORY, 8)) == []


def test_network_with_other_address_or_hosts_or_forward_dev_differs() -> None:
    wanted = network_xml(FACTORY, 8)
    other_address = wanted.replace("169.254.169.253", "192.168.122.1")
    assert "bridge address 192.168.122.1/16, wanted 169.254.169.253/16" in network_differences(other_address, wanted)
    assert "dhcp hosts: 4 to add, 0 to change, 0 conflicting to delete" in network_differences(
        network_xml(FACTORY, 4), wanted)
    assert "dhcp hosts: 0 to add, 8 to change, 0 conflicting to delete" in network_differences(
        network_xml("f2.example.com", 8), wanted)
    assert any("forward dev eth1" in d for d in network_differences(network_xml(FACTORY, 8, "eth1"), wanted))
    no_ping_missing = wanted.replace("no-ping", "log-dhcp")
    assert network_differences(no_ping_missing, wanted) == [
        "dnsmasq option no-ping missing", "dnsmasq option log-dhcp not wanted"]


def test_host_entries_beyond_the_slots_are_left_alone() -> None:
    # Vac 03 defined 100 entries; a factory with 8 slots wants 8 of them, and the rest harm nobody.
    assert network_differences(network_xml(FACTORY, 100), network_xml(FACTORY, 8)) == []


def test_host_changes_are_live_edits_and_everything_else_needs_a_new_definition() -> None:
    wanted = network_xml(FACTORY, 3)
    plan = plan_network_change(network_xml(FACTORY, 1), wanted)
    assert plan.replace_reasons == () and plan.usable
    assert [host.name for host in plan.host_changes.add] == ["f1-01", "f1-02"]
    no_ping_missing = plan_network_change(network_xml(FACTORY, 3, dnsmasq_options=()), wanted)
    assert no_ping_missing.replace_reasons == ("dnsmasq option no-ping missing",) and no_ping_missing.usable
    other_address = plan_network_change(wanted.replace("169.254.169.253", "10.99.0.1"), wanted)
    assert not other_address.usable
    transient = plan_network_change(wanted, wanted, persistent=False)
    assert transient.replace_reasons == ("transient (not defined, so it would not come back after a reboot)",)


def test_a_slot_entry_with_another_name_is_modified_and_one_taking_a_slot_address_is_deleted() -> None:
    wanted = frozenset({DhcpHost("56:4d:a9:fe:a9:00", "f1-00", "169.254.169.0"),
                        DhcpHost("56:4d:a9:fe:a9:01", "f1-01", "169.254.169.1")})
    vac03_name = DhcpHost("56:4d:a9:fe:a9:00", "f1-00.example.com", "169.254.169.0")
    squatter = DhcpHost("52:54:00:12:34:56", "other", "169.254.169.1")
    harmless = DhcpHost("56:4d:a9:fe:a9:63", "f1-99.example.com", "169.254.169.99")
    changes = dhcp_host_changes(frozenset({vac03_name, squatter, harmless}), wanted)
    assert changes.modify == (DhcpHost("56:4d:a9:fe:a9:00", "f1-00", "169.254.169.0"),)
    assert changes.delete == (squatter,)
    assert changes.add == (DhcpHost("56:4d:a9:fe:a9:01", "f1-01", "169.254.169.1"),)


def test_libvirt_mac_case_and_prefix_form_do_not_count_as_differences() -> None:
    wanted = network_xml(FACTORY, 2)
    as_libvirt_prints = wanted.replace("56:4D:A9:FE:A9", "56:4d:a9:fe:a9").replace(
        "netmask=\"255.255.0.0\"", "prefix=\"16\"")
    assert network_differences(as_libvirt_prints, wanted) == []


@pytest.mark.libvirt_test_driver
def test_missing_network_is_defined_started_and_autostarted(connection: libvirt.virConnect) -> None:
    result = ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    network = connection.networkLookupByName(NETWORK_NAME)
    assert result.name == NETWORK_NAME
    assert result.bridge == network.bridgeName()
    assert network.isActive() and network.isPersistent() and network.autostart()
    assert network_differences(network.XMLDesc(0), network_xml(FACTORY, 4, dnsmasq_options=())) == []


@pytest.mark.libvirt_test_driver
def test_ensuring_twice_keeps_the_one_network(connection: libvirt.virConnect) -> None:
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    first_uuid = connection.networkLookupByName(NETWORK_NAME).UUIDString()
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    names = [n.name() for n in connection.listAllNetworks()]
    assert names.count(NETWORK_NAME) == 1
    assert connection.networkLookupByName(NETWORK_NAME).UUIDString() == first_uuid


@pytest.mark.libvirt_test_driver
def test_network_with_a_different_address_is_replaced(connection: libvirt.virConnect) -> None:
    wrong = network_xml(FACTORY, 4, dnsmasq_options=()).replace("169.254.169.253", "10.99.0.1")
    old = connection.networkDefineXML(wrong)
    old.create()
    old_uuid = old.UUIDString()
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=4, dnsmasq_options=())
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() != old_uuid
    assert network.isActive()
    assert network_differences(network.XMLDesc(0), network_xml(FACTORY, 4, dnsmasq_options=())) == []


@pytest.mark.libvirt_test_driver
def test_network_missing_host_entries_gets_them_live_not_replaced(connection: libvirt.virConnect) -> None:
    old = connection.networkDefineXML(network_xml(FACTORY, 2, dnsmasq_options=()))
    old.create()
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=6, dnsmasq_options=())
    network = connection.networkLookupByName(NETWORK_NAME)
    assert network.UUIDString() == old.UUIDString() and network.isActive()
    assert len(ElementTree.fromstring(network.XMLDesc(0)).findall("ip/dhcp/host")) == 6


@pytest.mark.libvirt_test_driver
def test_inactive_network_is_started(connection: libvirt.virConnect) -> None:
    connection.networkDefineXML(network_xml(FACTORY, 3, dnsmasq_options=()))
    ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=3, dnsmasq_options=())
    assert connection.networkLookupByName(NETWORK_NAME).isActive()


@pytest.mark.libvirt_test_driver
def test_libvirt_refusal_becomes_network_error(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text("<node/>")
    connection = libvirt.open(f"test://{node}")
    connection.close()
    with pytest.raises(NetworkError, match=NETWORK_NAME):
        ensure_libvirt_network(connection, factory_name=FACTORY, num_slots=1)


def test_hosts_lines_are_vacs() -> None:
    assert hosts_lines(FACTORY, 2) == [
        "169.254.169.0 f1-00 f1-00.example.com # added by Vac",
        "169.254.169.1 f1-01 f1-01.example.com # added by Vac",
    ]


def test_hosts_file_gains_each_line_exactly_once_under_the_prefix(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    hosts = tmp_path / "etc" / "hosts"
    hosts.parent.mkdir()
    hosts.write_text("127.0.0.1 localhost")  # no final newline
    assert ensure_hosts_entries(paths, FACTORY, 3) == 3
    assert ensure_hosts_entries(paths, FACTORY, 3) == 0
    assert ensure_hosts_entries(paths, FACTORY, 4) == 1
    lines = hosts.read_text().splitlines()
    assert lines[0] == "127.0.0.1 localhost"
    assert lines[1:] == hosts_lines(FACTORY, 4)


def test_hosts_file_is_created_under_a_fresh_prefix(tmp_path: Path) -> None:
    assert ensure_hosts_entries(Paths(tmp_path), FACTORY, 1) == 1
    assert (tmp_path / "etc" / "hosts").read_text() == hosts_lines(FACTORY, 1)[0] + "\n"


HOST_OWN_LINES = b"127.0.0.1 localhost\n# caf\xe9 \xff not UTF-8\n10.0.0.1 gw"  # no final newline


def test_hosts_file_is_updated_in_place_and_the_hosts_own_bytes_are_kept(tmp_path: Path) -> None:
    """The same inode (the unit's bind mount of /etc/hosts stays valid), its bytes untouched."""
    hosts = tmp_path / "etc" / "hosts"
    hosts.parent.mkdir()
    hosts.write_bytes(HOST_OWN_LINES)
    inode = hosts.stat().st_ino
    assert ensure_hosts_entries(Paths(tmp_path), FACTORY, 2) == 2
    assert hosts.stat().st_ino == inode
    assert hosts.read_bytes() == HOST_OWN_LINES + b"\n" + "\n".join(hosts_lines(FACTORY, 2)).encode() + b"\n"
    assert os.listdir(hosts.parent) == ["hosts"]  # no temp file beside it


def test_a_kill_during_the_append_at_any_byte_leaves_the_host_lines_and_the_next_pass_completes_vacs(
        tmp_path: Path) -> None:
    """Every prefix of the appended tail is what a kill -9 (or a crash) mid-write can leave."""
    paths = Paths(tmp_path)
    hosts = tmp_path / "etc" / "hosts"
    hosts.parent.mkdir()
    hosts.write_bytes(HOST_OWN_LINES)
    ensure_hosts_entries(paths, FACTORY, 3)
    complete = hosts.read_bytes()
    for cut in range(len(HOST_OWN_LINES), len(complete) + 1):
        hosts.write_bytes(complete[:cut])
        ensure_hosts_entries(paths, FACTORY, 3)
        assert hosts.read_bytes() == complete, cut
        assert ensure_hosts_entries(paths, FACTORY, 3) == 0


def test_a_torn_copy_of_a_line_already_present_is_cut_off() -> None:
    line = hosts_lines(FACTORY, 1)[0]
    content = b"127.0.0.1 localhost\n" + line.encode() + b"\n" + line.encode()[:20]
    update = hosts_update(content, [line])
    assert update is not None and update.tail == b"" and update.added == 0
    assert update.length == len(content) - 20


def test_an_unterminated_host_line_is_kept_whatever_it_resembles() -> None:
    for last_line in (b"169.254.169.0 my-own-name", b"10.0.0.1 gw", b"169.254.169.10"):
        update = hosts_update(b"127.0.0.1 localhost\n" + last_line, hosts_lines(FACTORY, 1))
        assert update is not None and update.offset == len(b"127.0.0.1 localhost\n" + last_line)
        assert update.tail.startswith(b"\n")


def test_a_hosts_path_that_cannot_be_written_is_a_network_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "etc" / "hosts").mkdir(parents=True)
    with pytest.raises(NetworkError, match=r"etc/hosts: .*Is a directory"):
        ensure_hosts_entries(Paths(tmp_path), FACTORY, 1)


SANDBOXED_VACD = """
import sys
from pathlib import Path
from vacd.network import NetworkError, ensure_hosts_entries
from vacd.paths import Paths
prefix = Path(sys.argv[1])
try:
    (prefix / "etc" / "other").write_text("x")
except OSError as error:
    print(error.strerror, flush=True)
for _ in sys.stdin:
    try:
        print(ensure_hosts_entries(Paths(prefix), "f1.example.com", 2), flush=True)
    except NetworkError as error:
        print(error, flush=True)
"""


@pytest.mark.allow_commands("unshare")
def test_in_the_units_sandbox_vacd_appends_to_hosts_and_a_file_renamed_over_it_is_read_only_until_a_restart(
        tmp_path: Path) -> None:
    """The unit's layout (ProtectSystem=strict, ReadWritePaths=/etc/hosts), made with real mounts.

    vacd runs in a mount namespace where etc/ is read-only and etc/hosts is bound writable;
    the test, outside it, then renames new files over etc/hosts as `sed -i` or Puppet would.
    """
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to make a mount namespace")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_bytes(HOST_OWN_LINES)
    vacs = "\n".join(hosts_lines(FACTORY, 2)).encode() + b"\n"
    script = (f"mount --bind {etc} {etc} && mount -o remount,bind,ro {etc} && "
              f"mount --bind {etc}/hosts {etc}/hosts && mount -o remount,bind,rw {etc}/hosts && "
              f'exec "$0" -c "$1" {tmp_path}')
    inside = subprocess.Popen([unshare, "--mount", "--propagation", "private", "sh", "-c", script, sys.executable,
                               SANDBOXED_VACD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert inside.stdin is not None and inside.stdout is not None

    def pass_inside() -> str:
        assert inside.stdin is not None and inside.stdout is not None
        inside.stdin.write("pass\n")
        inside.stdin.flush()
        return inside.stdout.readline().strip()

    def replace_by_rename(content: bytes) -> None:
        (etc / "hosts.new").write_bytes(content)
        os.replace(etc / "hosts.new", etc / "hosts")

    try:
        first = inside.stdout.readline().strip()
        if not first:
            inside.wait(timeout=30)
            assert inside.stderr is not None
            pytest.skip(f"mounts are not allowed here: {inside.stderr.read().strip()}")
        assert first == "Read-only file system"  # the rest of etc/
        assert pass_inside() == "2"
        assert (etc / "hosts").read_bytes() == HOST_OWN_LINES + b"\n" + vacs
        assert pass_inside() == "0"
        # Replaced with Vac's lines kept (Puppet's host resource): nothing to write, no fault.
        replace_by_rename(b"127.0.0.1 localhost\n" + vacs)
        assert pass_inside() == "0"
        # Replaced without them (sed -i, an editor): read-only now, and the fault says why.
        replace_by_rename(b"127.0.0.1 localhost\n")
        fault = pass_inside()
        assert "etc/hosts" in fault and "Read-only file system" in fault and "systemctl restart vacd" in fault
    finally:
        inside.stdin.close()
        inside.wait(timeout=30)
    assert sorted(os.listdir(etc)) == ["hosts"]


@pytest.fixture
def bridge_in_namespace() -> Iterator[tuple[str, str]]:
    """A bridge inside a network namespace made for this test (removed afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    from pyroute2 import NetNS, netns

    namespace = f"vactest-{uuid.uuid4().hex[:8]}"
    netns.create(namespace)
    try:
        with NetNS(namespace) as handle:
            handle.link("add", ifname="vacbr0", kind="bridge")
        yield namespace, "vacbr0"
    finally:
        netns.remove(namespace)


@pytest.mark.allow_commands("ldconfig")  # pyroute2 runs ldconfig -p to find libc
def test_metadata_address_is_added_to_the_bridge_once(bridge_in_namespace: tuple[str, str]) -> None:
    from pyroute2 import NetNS

    namespace, bridge = bridge_in_namespace
    assert ensure_interface_address(bridge, "169.254.169.254/32", netns=namespace) is True
    assert ensure_interface_address(bridge, "169.254.169.254/32", netns=namespace) is False
    with NetNS(namespace) as handle:
        index = handle.link_lookup(ifname=bridge)[0]
        addresses = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in handle.get_addr(index=index)]
    assert addresses.count(("169.254.169.254", 32)) == 1


@pytest.mark.allow_commands("ldconfig")  # pyroute2 runs ldconfig -p to find libc
def test_address_on_missing_interface_is_a_network_error(bridge_in_namespace: tuple[str, str]) -> None:
    namespace, _ = bridge_in_namespace
    with pytest.raises(NetworkError, match="no interface"):
        ensure_interface_address("vacnothere0", "169.254.169.254/32", netns=namespace)
