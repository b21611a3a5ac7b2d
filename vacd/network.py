"""Ensure the guests' network: libvirt NAT network `vac_169.254.0.0`, metadata address, /etc/hosts.

Rules (behaviour reference §1.9, acceptance 8):
- One libvirt NAT network named `vac_169.254.0.0`: bridge address 169.254.169.253/16, a
  static DHCP `<host mac name ip>` entry for every slot 0..num_slots-1 (`vacd.slots`), no
  DHCP range, dnsmasq option `no-ping` (else every lease waits 3 s for a ping that never
  answers; test-guest notes), `<forward mode='nat'>` with `dev` if `forward_dev` is set.
- It is defined if missing and replaced (destroy, undefine, define) only if its address,
  forwarding, dnsmasq options or host entries differ from what is wanted; it is never
  duplicated; it is started if inactive and set to autostart. Several factories on one
  host (tests) share it.
- 169.254.169.254/32, the metadata address, is put on the network's bridge with pyroute2,
  idempotently. Vac 03 used a `dummy0` interface (§1.9), but some kernels have no dummy
  interfaces (CONFIG_DUMMY unset) and the bridge works everywhere.
- /etc/hosts gains `169.254.169.n short-NN short-NN.domain # added by Vac` for each slot,
  each line exactly once, in the file under the Paths prefix (the real one only when the
  prefix is /).
- The wanted network is built and compared by pure functions; only the `ensure_*`
  functions touch libvirt, interfaces or files. `ensure_network(uri, paths, settings)` does
  all of it for a factory; the parts are separate for tests and tools.
"""

from __future__ import annotations

import ipaddress
import logging
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Optional

import libvirt  # type: ignore[import-untyped,unused-ignore]  # no stubs or py.typed

from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.config import Settings
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.slots import GATEWAY_ADDRESS, GUEST_NETWORK, METADATA_ADDRESS, slot_identity

log = logging.getLogger(__name__)

NETWORK_NAME = "vac_169.254.0.0"
DNSMASQ_NAMESPACE = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DNSMASQ_OPTIONS = ("no-ping",)
# A fixed bridge name, so the metadata address and an admin's firewall rules (the admin
# guide's static rule set names the bridge) find it; libvirt's own names are virbr0, virbr1...
BRIDGE_NAME = "vacbr0"
HOSTS_LINE_MARK = "# added by Vac"


class NetworkError(VacError):
    """The guest network could not be made as wanted; raised from the cause."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation}: {reason}")


@dataclass(frozen=True)
class DhcpHost:
    mac_address: str  # lower case, as libvirt reports it
    name: str
    ip_address: str


@dataclass(frozen=True)
class NetworkFacts:
    """What matters about a network definition, normalised so two can be compared."""

    name: str
    forward_mode: Optional[str]
    forward_dev: Optional[str]
    interface: Optional[str]  # address/prefix of the bridge, e.g. 169.254.169.253/16
    has_dhcp_range: bool
    hosts: frozenset[DhcpHost]
    dnsmasq_options: frozenset[str]


@dataclass(frozen=True)
class GuestNetwork:
    """The guest network as ensured: its libvirt name and the host bridge carrying it."""

    name: str
    bridge: str


def dhcp_host_name(machine_name: str) -> str:
    """The DHCP host name of a slot: its short name.

    dnsmasq refuses a dhcp-host name whose domain differs from its own `domain` (libvirt
    sets none), so the FQDN goes into /etc/hosts and the metadata, the short name here.
    """
    return machine_name.partition(".")[0]


def wanted_hosts(factory_name: str, num_slots: int) -> frozenset[DhcpHost]:
    hosts = set()
    for ordinal in range(num_slots):
        identity = slot_identity(factory_name, ordinal)
        hosts.add(DhcpHost(identity.mac_address.lower(), dhcp_host_name(identity.machine_name),
                           identity.ip_address))
    return frozenset(hosts)


def network_xml(
    factory_name: str,
    num_slots: int,
    forward_dev: Optional[str] = None,
    dnsmasq_options: tuple[str, ...] = DNSMASQ_OPTIONS,
) -> str:
    """The libvirt network XML for a factory with `num_slots` slots (§1.9)."""
    ElementTree.register_namespace("dnsmasq", DNSMASQ_NAMESPACE)
    network = ElementTree.Element("network")
    ElementTree.SubElement(network, "name").text = NETWORK_NAME
    forward = ElementTree.SubElement(network, "forward", mode="nat")
    if forward_dev:
        forward.set("dev", forward_dev)
    # STP off: the bridge has no loops (only guest taps) and no listening delay is wanted.
    ElementTree.SubElement(network, "bridge", name=BRIDGE_NAME, stp="off", delay="0")
    guest_network = ipaddress.IPv4Network(GUEST_NETWORK)
    address = ElementTree.SubElement(
        network, "ip", address=GATEWAY_ADDRESS, netmask=str(guest_network.netmask)
    )
    dhcp = ElementTree.SubElement(address, "dhcp")
    # No <range>: only the slots' MACs get leases (§1.9). Sorted by ordinal for readable XML.
    for ordinal in range(num_slots):
        identity = slot_identity(factory_name, ordinal)
        ElementTree.SubElement(
            dhcp,
            "host",
            mac=identity.mac_address,
            name=dhcp_host_name(identity.machine_name),
            ip=identity.ip_address,
        )
    if dnsmasq_options:
        options = ElementTree.SubElement(network, f"{{{DNSMASQ_NAMESPACE}}}options")
        for option in dnsmasq_options:
            ElementTree.SubElement(options, f"{{{DNSMASQ_NAMESPACE}}}option", value=option)
    ElementTree.indent(network)
    return ElementTree.tostring(network, encoding="unicode")


def network_facts(xml_text: str) -> NetworkFacts:
    """Parse a network definition (ours or libvirt's XMLDesc) into comparable facts."""
    network = ElementTree.fromstring(xml_text)
    forward = network.find("forward")
    interface = None
    has_dhcp_range = False
    hosts = set()
    for address in network.findall("ip"):
        if address.get("family", "ipv4") != "ipv4" or address.get("address") is None:
            continue
        prefix = address.get("prefix") or address.get("netmask") or "32"
        interface = str(ipaddress.IPv4Interface(f"{address.get('address')}/{prefix}"))
        dhcp = address.find("dhcp")
        if dhcp is not None:
            has_dhcp_range = dhcp.find("range") is not None
            for host in dhcp.findall("host"):
                hosts.add(DhcpHost((host.get("mac") or "").lower(), host.get("name") or "",
                                   host.get("ip") or ""))
        break
    options = frozenset(
        option.get("value") or ""
        for option in network.iter(f"{{{DNSMASQ_NAMESPACE}}}option")
    )
    return NetworkFacts(
        name=network.findtext("name") or "",
        forward_mode=None if forward is None else forward.get("mode", "nat"),
        forward_dev=None if forward is None else forward.get("dev"),
        interface=interface,
        has_dhcp_range=has_dhcp_range,
        hosts=frozenset(hosts),
        dnsmasq_options=options,
    )


def network_differences(existing_xml: str, wanted_xml: str) -> list[str]:
    """What differs between an existing network and the wanted one; empty if it will do."""
    existing, wanted = network_facts(existing_xml), network_facts(wanted_xml)
    differences = []
    for field in ("forward_mode", "forward_dev", "interface", "has_dhcp_range", "dnsmasq_options"):
        if getattr(existing, field) != getattr(wanted, field):
            differences.append(f"{field}: {getattr(existing, field)} != {getattr(wanted, field)}")
    if existing.hosts != wanted.hosts:
        differences.append(
            f"dhcp hosts: {len(existing.hosts - wanted.hosts)} unwanted, "
            f"{len(wanted.hosts - existing.hosts)} missing"
        )
    return differences


def ensure_libvirt_network(
    connection: libvirt.virConnect,
    *,
    factory_name: str,
    num_slots: int,
    forward_dev: Optional[str] = None,
    dnsmasq_options: tuple[str, ...] = DNSMASQ_OPTIONS,
) -> GuestNetwork:
    """Define, fix, start and autostart the vac network; return it with its bridge name.

    `dnsmasq_options` is for libvirt drivers without dnsmasq (the test driver drops them).

    Raises:
        NetworkError: libvirt refused a step (raised from the libvirtError).
    """
    wanted_xml = network_xml(factory_name, num_slots, forward_dev, dnsmasq_options)
    operation = "look up network"
    try:
        network = _lookup_network(connection)
        if network is not None:
            operation = "read network"
            differences = network_differences(network.XMLDesc(0), wanted_xml)
            if differences or not network.isPersistent():
                log.warning(
                    "replacing network name=%s differences=%s persistent=%s "
                    "(guests on it lose their connection)",
                    NETWORK_NAME, "; ".join(differences) or "none", bool(network.isPersistent()),
                )
                if network.isActive():
                    operation = "destroy network"
                    network.destroy()
                if network.isPersistent():
                    operation = "undefine network"
                    network.undefine()
                network = None
        if network is None:
            operation = "define network"
            network = connection.networkDefineXML(wanted_xml)
            log.info("defined network name=%s slots=%d forward_dev=%s", NETWORK_NAME, num_slots,
                     forward_dev or "-")
        if not network.isActive():
            operation = "start network"
            network.create()
            log.info("started network name=%s bridge=%s", NETWORK_NAME, network.bridgeName())
        if not network.autostart():
            operation = "set network autostart"
            network.setAutostart(1)
        operation = "read network bridge"
        return GuestNetwork(NETWORK_NAME, network.bridgeName())
    except libvirt.libvirtError as error:
        raise NetworkError(f"{operation} {NETWORK_NAME}", str(error)) from error


def _lookup_network(connection: libvirt.virConnect) -> Optional[libvirt.virNetwork]:
    try:
        return connection.networkLookupByName(NETWORK_NAME)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise


def ensure_interface_address(interface: str, address: str, netns: Optional[str] = None) -> bool:
    """Put `address` (CIDR, e.g. 169.254.169.254/32) on `interface` unless it is there already.

    `netns` names a network namespace to work in (tests use their own). Returns True if
    the address was added.

    Raises:
        NetworkError: the interface does not exist or the address could not be added.
    """
    # Imported here so that importing this module does not load pyroute2's netlink
    # machinery for callers that only build XML.
    from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped,unused-ignore]

    wanted = ipaddress.IPv4Interface(address)
    handle = NetNS(netns) if netns else IPRoute()
    try:
        indexes = handle.link_lookup(ifname=interface)
        if not indexes:
            raise NetworkError(f"add address {wanted}", f"no interface {interface}")
        index = indexes[0]
        for existing in handle.get_addr(index=index, family=2):
            if (existing.get_attr("IFA_ADDRESS") == str(wanted.ip)
                    and existing["prefixlen"] == wanted.network.prefixlen):
                return False
        handle.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)
        log.info("added address address=%s interface=%s", wanted, interface)
        return True
    except NetworkError:
        raise
    except Exception as error:  # pyroute2 raises NetlinkError and OSError subclasses
        raise NetworkError(f"add address {wanted} to {interface}", str(error)) from error
    finally:
        handle.close()


def hosts_lines(factory_name: str, num_slots: int) -> list[str]:
    """Vac's /etc/hosts lines, one per slot (§1.9)."""
    lines = []
    for ordinal in range(num_slots):
        identity = slot_identity(factory_name, ordinal)
        short_name = identity.machine_name.partition(".")[0]
        lines.append(f"{identity.ip_address} {short_name} {identity.machine_name} {HOSTS_LINE_MARK}")
    return lines


def ensure_hosts_entries(paths: Paths, factory_name: str, num_slots: int) -> int:
    """Append each missing slot line to <prefix>/etc/hosts; return how many were added."""
    hosts_file = paths.under_prefix("/etc/hosts")
    existing_text = read_text_or_none(hosts_file) or ""
    present = {line.strip() for line in existing_text.splitlines()}
    missing = [line for line in hosts_lines(factory_name, num_slots) if line not in present]
    if not missing:
        return 0
    hosts_file.parent.mkdir(parents=True, exist_ok=True)
    separator = "" if not existing_text or existing_text.endswith("\n") else "\n"
    write_atomic(hosts_file, existing_text + separator + "\n".join(missing) + "\n")
    log.info("added hosts lines file=%s count=%d", hosts_file, len(missing))
    return len(missing)


def ensure_guest_network(
    libvirt_uri: str,
    paths: Paths,
    *,
    factory_name: str,
    num_slots: int,
    forward_dev: Optional[str] = None,
) -> GuestNetwork:
    """Everything §1.9 asks for: the network, the metadata address on its bridge, /etc/hosts.

    Raises:
        NetworkError: any step failed (the caller skips creations this pass and retries).
    """
    # libvirt's default handler prints every error to stderr; ours arrive as exceptions.
    libvirt.registerErrorHandler(_ignore_libvirt_error, None)
    try:
        connection = libvirt.open(libvirt_uri)
    except libvirt.libvirtError as error:
        raise NetworkError(f"connect {libvirt_uri}", str(error)) from error
    try:
        guest_network = ensure_libvirt_network(
            connection,
            factory_name=factory_name,
            num_slots=num_slots,
            forward_dev=forward_dev,
            # The test driver keeps no dnsmasq options: asking for them would replace its network each pass.
            dnsmasq_options=() if uses_test_driver(libvirt_uri) else DNSMASQ_OPTIONS,
        )
    finally:
        connection.close()
    if not uses_test_driver(libvirt_uri):
        # The test driver's bridge exists only inside libvirt's memory: nothing to address.
        ensure_interface_address(guest_network.bridge, f"{METADATA_ADDRESS}/32")
    ensure_hosts_entries(paths, factory_name, num_slots)
    return guest_network


def uses_test_driver(libvirt_uri: str) -> bool:
    """libvirt's in-memory `test:///` driver: no real guests, bridges or QEMU behind it."""
    return libvirt_uri.startswith("test:")


def _ignore_libvirt_error(context: object, error: object) -> None:
    """Error handler that leaves reporting to the exception raised by the failing call."""


def ensure_network(libvirt_uri: str, paths: Paths, settings: Settings) -> GuestNetwork:
    """`ensure_guest_network` for this factory's settings (one DHCP entry per machine slot).

    Call it at startup and at each pass before creating machines (§1.3 step 8 checked the
    network every cycle): it is cheap when nothing needs doing.
    """
    return ensure_guest_network(
        libvirt_uri,
        paths,
        factory_name=settings.factory_name,
        num_slots=settings.num_machine_slots,
        forward_dev=settings.forward_dev,
    )
