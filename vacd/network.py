"""Ensure the guests' network: libvirt NAT network `vac_169.254.0.0`, metadata address, /etc/hosts.

Rules (behaviour reference §1.9, acceptance 8):
- One libvirt NAT network named `vac_169.254.0.0`: bridge address 169.254.169.253/16, a
  static DHCP `<host mac name ip>` entry for every slot 0..num_slots-1 (`vacd.slots`), no
  DHCP range, dnsmasq option `no-ping` (else every lease waits 3 s for a ping that never
  answers; test-guest notes), `<forward mode='nat'>` with `dev` if `forward_dev` is set.
- It is defined if missing; it is never duplicated; it is started if inactive and set to
  autostart. Several factories on one host (tests) share it.
- A running guest is never cut off (issue 10 item 2). DHCP host changes (a slot's entry
  missing, or with another name or address) are made with libvirt's live network update,
  never by replacing the network; an entry the slots do not use (Vac 03 had 100) is left
  unless it takes a slot's name or address. What only a new definition can change (its
  address, forwarding, DHCP range, dnsmasq options, a transient network) is changed by
  replacing it (destroy, undefine, define) only when no running domain is attached to it
  (through the network, its bridge, or a slot tap on it: vacd.backends.slottaps),
  and only at vacd's start, before any creation is under way, unless the network cannot
  serve the slots at all. With guests on it, the network is kept and vacd says why and
  what to do; if it still gives every slot its address, vacd continues with it (the
  replacement waits for a start with no guest on it), else NetworkRefused stops vacd.
- 169.254.169.254/32, the metadata address, is put on the network's bridge with pyroute2,
  idempotently. Vac 03 used a `dummy0` interface (§1.9), but some kernels have no dummy
  interfaces (CONFIG_DUMMY unset) and the bridge works everywhere.
- /etc/hosts gains `169.254.169.n short-NN short-NN.domain # added by Vac` for each slot,
  each line exactly once, in the file under the Paths prefix (the real one only when the
  prefix is /). The missing lines are written in place after the file's last byte, never by
  a temp file renamed over it: the service's sandbox makes /etc read-only but for a bind of
  /etc/hosts itself (etc/vacd.service), which a rename could not replace. Bytes before the
  end are never rewritten, so a kill -9 mid-write can cost at most the torn last line, which
  is Vac's own; the next pass writes over it (`hosts_update`).
- The wanted network is built and compared by pure functions; only the `ensure_*`
  functions touch libvirt, interfaces or files. `ensure_network(uri, paths, settings)` does
  all of it for a factory; the parts are separate for tests and tools.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Optional

import libvirt  # type: ignore[import-untyped,unused-ignore]  # no stubs or py.typed

from vacd.config import Settings
from vacd.errors import VacError
from vacd.paths import Paths
from vacd.slots import GATEWAY_ADDRESS, GUEST_NETWORK, METADATA_ADDRESS, ordinal_of_slot_tap, slot_identity

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


class NetworkRefused(NetworkError):
    """The network must be replaced to serve the slots, but running guests are on it."""


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
    """The guest network as ensured: its libvirt name and the host bridge carrying it.

    `kept_differences` are the differences from the wanted network left in place because
    guests are on it (or a pass is no time to replace it); empty when it is as wanted.
    """

    name: str
    bridge: str
    kept_differences: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostChanges:
    """The DHCP host edits that make a network's entries serve the slots, in the order to apply.

    `delete`: entries of other MACs holding a slot's name or address (they would refuse the
    slot's entry); `modify`: a slot's MAC with another name or address (the wanted entry);
    `add`: slots with no entry.
    """

    delete: tuple[DhcpHost, ...] = ()
    modify: tuple[DhcpHost, ...] = ()
    add: tuple[DhcpHost, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delete or self.modify or self.add)

    def describe(self) -> str:
        return f"{len(self.add)} to add, {len(self.modify)} to change, {len(self.delete)} conflicting to delete"


@dataclass(frozen=True)
class NetworkPlan:
    """How to bring an existing network to the wanted one (pure: from the two definitions).

    `replace_reasons` say what only a new definition can change (empty: live edits do);
    `usable` says whether the existing network, with the host changes made, still gives
    every slot its address and the bridge its .253 gateway address.
    """

    host_changes: HostChanges
    replace_reasons: tuple[str, ...]
    usable: bool


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


def _address_order(host: DhcpHost) -> tuple[int, str]:
    try:
        return (int(ipaddress.IPv4Address(host.ip_address)), host.mac_address)
    except ValueError:
        return (-1, host.mac_address)


def dhcp_host_changes(existing: frozenset[DhcpHost], wanted: frozenset[DhcpHost]) -> HostChanges:
    """The live edits that give every wanted host its entry; entries nobody wants are left alone."""
    existing_by_mac = {host.mac_address: host for host in existing}
    wanted_macs = {host.mac_address for host in wanted}
    wanted_addresses = {host.ip_address for host in wanted}
    wanted_names = {host.name for host in wanted}
    delete = [host for host in existing if host.mac_address not in wanted_macs
              and (host.ip_address in wanted_addresses or host.name in wanted_names)]
    modify = [host for host in wanted
              if host.mac_address in existing_by_mac and existing_by_mac[host.mac_address] != host]
    add = [host for host in wanted if host.mac_address not in existing_by_mac]
    return HostChanges(tuple(sorted(delete, key=_address_order)), tuple(sorted(modify, key=_address_order)),
                       tuple(sorted(add, key=_address_order)))


def _replace_reasons(existing: NetworkFacts, wanted: NetworkFacts) -> list[str]:
    """What differs that libvirt cannot change on a running network, as an admin reads it."""
    reasons = []
    if existing.interface != wanted.interface:
        reasons.append(f"bridge address {existing.interface or 'none'}, wanted {wanted.interface}")
    if existing.forward_mode != wanted.forward_mode:
        reasons.append(f"forward mode {existing.forward_mode or 'none (isolated)'}, wanted {wanted.forward_mode}")
    if existing.forward_dev != wanted.forward_dev:
        reasons.append(f"forward dev {existing.forward_dev or 'none'}, wanted {wanted.forward_dev or 'none'} "
                       "(forward_dev in [settings])")
    if existing.has_dhcp_range != wanted.has_dhcp_range:
        reasons.append("a DHCP range (vacd wants static hosts only)" if existing.has_dhcp_range
                       else "a DHCP range wanted")
    for option in sorted(wanted.dnsmasq_options - existing.dnsmasq_options):
        reasons.append(f"dnsmasq option {option} missing")
    for option in sorted(existing.dnsmasq_options - wanted.dnsmasq_options):
        reasons.append(f"dnsmasq option {option} not wanted")
    return reasons


def plan_network_change(existing_xml: str, wanted_xml: str, *, persistent: bool = True) -> NetworkPlan:
    """What it takes to make the existing network the wanted one (pure)."""
    existing, wanted = network_facts(existing_xml), network_facts(wanted_xml)
    reasons = _replace_reasons(existing, wanted)
    if not persistent:
        reasons.append("transient (not defined, so it would not come back after a reboot)")
    # A bridge on another subnet cannot hold the slots' addresses, whatever its host entries say.
    usable = existing.interface == wanted.interface
    return NetworkPlan(dhcp_host_changes(existing.hosts, wanted.hosts), tuple(reasons), usable)


def network_differences(existing_xml: str, wanted_xml: str) -> list[str]:
    """What differs between an existing network and the wanted one; empty if it will do."""
    plan = plan_network_change(existing_xml, wanted_xml)
    differences = list(plan.replace_reasons)
    if plan.host_changes:
        differences.append(f"dhcp hosts: {plan.host_changes.describe()}")
    return differences


def guests_on_network(connection: libvirt.virConnect, network_name: str, bridge: Optional[str]) -> list[str]:
    """Names of the running domains with an interface on the network (or its bridge, or a slot tap), sorted."""
    names = []
    for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            description = ElementTree.fromstring(domain.XMLDesc(0))
        except libvirt.libvirtError:
            continue  # gone between the listing and the look: not on the network any more
        if domain_is_on_network(description, network_name, bridge):
            names.append(domain.name())
    return sorted(names)


def domain_is_on_network(description: ElementTree.Element, network_name: str, bridge: Optional[str]) -> bool:
    """Whether a domain (its live XML) has an interface on the network, its bridge, or a slot tap.

    A slot tap (`<interface type='ethernet'>` on `vactNN`, vacd.backends.slottaps) is a port
    of the network's bridge that libvirt does not know as such: replacing the network would
    cut its guest off as surely as one on `<source network>`.
    """
    for interface in description.findall("devices/interface"):
        source = interface.find("source")
        if source is not None and (source.get("network") == network_name
                                   or (bridge and source.get("bridge") == bridge)):
            return True
        target = interface.find("target")
        if interface.get("type") == "ethernet" and target is not None \
                and ordinal_of_slot_tap(target.get("dev", "")) is not None:
            return True
    return False


def _host_xml(host: DhcpHost) -> str:
    element = ElementTree.Element("host", mac=host.mac_address, name=host.name, ip=host.ip_address)
    return ElementTree.tostring(element, encoding="unicode")


def apply_host_changes(network: libvirt.virNetwork, changes: HostChanges) -> None:
    """Make the DHCP host edits with libvirt's live update: dnsmasq re-reads its hosts, guests stay on.

    Raises:
        libvirt.libvirtError: libvirt refused an edit (the ones before it are made).
    """
    if not changes:
        return
    if network.isActive():
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        if network.isPersistent():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    else:
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    section = libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST
    for command, hosts in ((libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, changes.delete),
                           (libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY, changes.modify),
                           (libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, changes.add)):
        for host in hosts:
            network.update(command, section, -1, _host_xml(host), flags)
    log.info("updated network hosts live name=%s %s", network.name(), changes.describe())


def ensure_libvirt_network(
    connection: libvirt.virConnect,
    *,
    factory_name: str,
    num_slots: int,
    forward_dev: Optional[str] = None,
    dnsmasq_options: tuple[str, ...] = DNSMASQ_OPTIONS,
    may_replace: bool = True,
) -> GuestNetwork:
    """Define, fix, start and autostart the vac network; return it with its bridge name.

    `dnsmasq_options` is for libvirt drivers without dnsmasq (the test driver drops them).
    `may_replace=False` (a pass, with creations perhaps under way) keeps a network that
    differs but still serves the slots, for the next start to replace.

    Raises:
        NetworkRefused: it cannot serve the slots and guests are on it (nothing was changed).
        NetworkError: libvirt refused a step (raised from the libvirtError).
    """
    wanted_xml = network_xml(factory_name, num_slots, forward_dev, dnsmasq_options)
    operation = "look up network"
    try:
        network = _lookup_network(connection)
        kept_differences: tuple[str, ...] = ()
        if network is not None:
            operation = "read network"
            plan = plan_network_change(network.XMLDesc(0), wanted_xml, persistent=bool(network.isPersistent()))
            if plan.replace_reasons:
                operation = "list the domains on network"
                guests = guests_on_network(connection, NETWORK_NAME, _bridge_name(network) or None)
                reasons = "; ".join(plan.replace_reasons)
                if not guests and (may_replace or not plan.usable):
                    log.warning("replacing network name=%s (no running guest is on it): %s", NETWORK_NAME, reasons)
                    if network.isActive():
                        operation = "destroy network"
                        network.destroy()
                    if network.isPersistent():
                        operation = "undefine network"
                        network.undefine()
                    network = None
                elif guests:
                    refusal = (f"network {NETWORK_NAME} differs from what vacd wants ({reasons}); "
                               f"{len(guests)} running guest{'s are' if len(guests) != 1 else ' is'} on it "
                               f"({', '.join(guests)}); not replacing it while they run")
                    if not plan.usable:
                        raise NetworkRefused(
                            f"keep network {NETWORK_NAME}",
                            f"{refusal}, and it cannot give the slots their addresses: stop those guests "
                            f"(virsh destroy NAME) or let them finish, then start vacd again, or make the "
                            f"network's address {GATEWAY_ADDRESS}/{ipaddress.IPv4Network(GUEST_NETWORK).prefixlen}")
                    log.log(logging.WARNING if may_replace else logging.DEBUG,
                            "%s; vacd continues with the existing network and replaces it at a start when no "
                            "guest is on it (or stop the guests and restart vacd)", refusal)
                    kept_differences = plan.replace_reasons
                else:
                    log.debug("network name=%s differs (%s); replaced at the next start", NETWORK_NAME, reasons)
                    kept_differences = plan.replace_reasons
            if network is not None and plan.host_changes:
                operation = "update network hosts"
                apply_host_changes(network, plan.host_changes)
        if network is None:
            operation = "define network"
            network = connection.networkDefineXML(wanted_xml)
            log.info("defined network name=%s slots=%d forward_dev=%s", NETWORK_NAME, num_slots,
                     forward_dev or "-")
        if not network.isActive():
            operation = "start network"
            network.create()
            log.info("started network name=%s bridge=%s", NETWORK_NAME, _bridge_name(network))
        if network.isPersistent() and not network.autostart():
            operation = "set network autostart"
            network.setAutostart(1)
        operation = "read network bridge"
        return GuestNetwork(NETWORK_NAME, _bridge_name(network), kept_differences)
    except libvirt.libvirtError as error:
        raise NetworkError(f"{operation} {NETWORK_NAME}", str(error)) from error


def _bridge_name(network: libvirt.virNetwork) -> str:
    """The network's bridge as its definition names it ("" if none: the test driver names none itself).

    Raises:
        libvirt.libvirtError: the network could not be read.
    """
    bridge = ElementTree.fromstring(network.XMLDesc(0)).find("bridge")
    return "" if bridge is None else bridge.get("name") or ""


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


@dataclass(frozen=True)
class HostsUpdate:
    """What to write to a hosts file: `tail` at byte `offset`, the file then ending there."""

    offset: int
    tail: bytes
    added: int

    @property
    def length(self) -> int:
        return self.offset + len(self.tail)


def hosts_update(content: bytes, wanted_lines: list[str]) -> Optional[HostsUpdate]:
    """How to give a hosts file holding `content` each of `wanted_lines` once; None if it has them.

    Only the end of the file is ever written. An unterminated last line that begins one of
    Vac's lines (or is one, its newline missing) is what a kill -9 during an earlier append
    left, and is written over; any other unterminated last line is the host's and is kept,
    ended with a newline. Bytes are kept as they are, whatever their encoding.
    """
    wanted = [line.encode() for line in wanted_lines]
    last_line = content.rpartition(b"\n")[2]
    torn = bool(last_line) and any(line.startswith(last_line) for line in wanted)
    kept = content[: len(content) - len(last_line)] if torn else content
    present = {line.strip() for line in kept.split(b"\n")}
    missing = [line for line in wanted if line not in present]
    if not missing:
        # A torn duplicate of a line already present is cut off (the file only shrinks by it).
        return HostsUpdate(len(kept), b"", 0) if torn else None
    separator = b"\n" if kept and not kept.endswith(b"\n") else b""
    return HostsUpdate(len(kept), separator + b"\n".join(missing) + b"\n", len(missing))


def ensure_hosts_entries(paths: Paths, factory_name: str, num_slots: int) -> int:
    """Append each missing slot line to <prefix>/etc/hosts, in place; return how many were added.

    The file is opened for writing only when a line is missing, so a read-only /etc/hosts
    that already holds Vac's lines is no fault.

    Raises:
        NetworkError: the file could not be read or written; the message names it (and, for
            a read-only one, says why the sandbox may show it so).
    """
    hosts_file = paths.under_prefix("/etc/hosts")
    wanted = hosts_lines(factory_name, num_slots)
    try:
        try:
            with open(hosts_file, "rb") as reader:
                if hosts_update(reader.read(), wanted) is None:
                    return 0
        except FileNotFoundError:
            hosts_file.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: the host's lines are never cut, and the inode stays the one
        # the unit's bind mount makes writable. Read again through this descriptor: what is
        # written must follow what the file holds now.
        descriptor = os.open(hosts_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            update = hosts_update(_read_all(descriptor), wanted)
            if update is None:
                return 0
            written = 0
            while written < len(update.tail):
                written += os.pwrite(descriptor, update.tail[written:], update.offset + written)
            os.ftruncate(descriptor, update.length)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        reason = str(error)
        if error.errno == errno.EROFS:
            # systemd's ReadWritePaths=/etc/hosts binds the file vacd started with; a file
            # renamed over it since (sed -i, an editor, Puppet) is seen read-only until a restart.
            reason += (" (under vacd.service only /etc/hosts itself is writable, as bound at start: if it"
                       " was replaced by rename since, `systemctl restart vacd` binds the new file)")
        raise NetworkError(f"add Vac's lines to {hosts_file}", reason) from error
    if update.added:
        log.info("added hosts lines file=%s count=%d", hosts_file, update.added)
    else:
        log.info("removed a torn hosts line file=%s", hosts_file)
    return update.added


def _read_all(descriptor: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(descriptor, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def ensure_guest_network(
    libvirt_uri: str,
    paths: Paths,
    *,
    factory_name: str,
    num_slots: int,
    forward_dev: Optional[str] = None,
    may_replace: bool = True,
) -> GuestNetwork:
    """Everything §1.9 asks for: the network, the metadata address on its bridge, /etc/hosts.

    Raises:
        NetworkRefused: the network must be replaced and guests are on it; nothing was changed.
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
            may_replace=may_replace,
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


def ensure_network(libvirt_uri: str, paths: Paths, settings: Settings, *, may_replace: bool = True) -> GuestNetwork:
    """`ensure_guest_network` for this factory's settings (one DHCP entry per machine slot).

    Call it at startup (may_replace=True) and at each pass before creating machines
    (may_replace=False; §1.3 step 8 checked the network every cycle): it is cheap when
    nothing needs doing.
    """
    return ensure_guest_network(
        libvirt_uri,
        paths,
        factory_name=settings.factory_name,
        num_slots=settings.num_machine_slots,
        forward_dev=settings.forward_dev,
        may_replace=may_replace,
    )
