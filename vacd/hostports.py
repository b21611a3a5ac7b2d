"""Are the ports and addresses vacd listens on free? Asked before vacd changes anything on the host.

Rules (issue 10 item 2):
- `busy_ports(settings)` lists, as sentences an admin can act on, every endpoint vacd will
  listen on that it could not have now: the VacQuery responder's UDP port, the guest API's
  metadata and MJF TCP ports on 169.254.169.254 and .253 (not with libvirt's test driver,
  where no guest API is served) and the metrics endpoint. Empty means all are free.
- It changes nothing: each endpoint is probed by a bind (and, for TCP, a listen) made as
  vacd's own listener makes it, closed at once, and the holder of a taken port is named
  from the kernel's socket table (psutil) with its pid and process name when this user may
  see them. A probe refused for want of privilege (a port below 1024 as a user other than
  root) is decided by the socket table alone: vacd runs as root.
- vacd's start-up calls it before it touches the guest network, interfaces, /etc/hosts or
  domains (a Vac 03 still running holds port 995 and port 80 on the guest addresses: vacd
  must stop there, not after it has changed the host), and `vacd --check-host` prints it.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Optional

from vacd.config import Settings
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS

log = logging.getLogger(__name__)

# Linux's IP_FREEBIND (the socket module names it only on some versions): the guest API binds
# its addresses before the bridge has them, and the probe must be allowed to do the same.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
_PRIVILEGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


@dataclass(frozen=True)
class Endpoint:
    """An address and port vacd listens on, and which part and settings it is for."""

    protocol: str  # "udp" or "tcp"
    address: str
    port: int
    part: str  # what listens there, e.g. "VacQuery"
    settings_hint: str  # the settings that move it, e.g. "vacquery_bind_address, vacquery_port in [settings]"


def needed_endpoints(settings: Settings) -> tuple[list[Endpoint], list[str]]:
    """The endpoints vacd listens on with these settings, and problems with the settings themselves."""
    from vacd.network import uses_test_driver

    endpoints = [Endpoint("udp", settings.vacquery_bind_address, settings.vacquery_port, "VacQuery",
                          "vacquery_bind_address, vacquery_port in [settings]")]
    problems = []
    if not uses_test_driver(settings.libvirt_uri):
        endpoints.append(Endpoint("tcp", METADATA_ADDRESS, settings.metadata_port, "the guests' metadata",
                                  "metadata_port in [settings]"))
        endpoints.append(Endpoint("tcp", GATEWAY_ADDRESS, settings.metadata_port,
                                  "the guests' MJF and $JOBOUTPUTS", "metadata_port in [settings]"))
    if settings.metrics_address:
        from vacd.metrics import parse_listen_address

        try:
            host, port = parse_listen_address(settings.metrics_address)
        except ValueError as error:
            problems.append(str(error))
        else:
            endpoints.append(Endpoint("tcp", host, port, "metrics", "metrics_address in [settings]"))
    return endpoints, problems


def busy_ports(settings: Settings) -> list[str]:
    """Why vacd could not listen where it must, one sentence per endpoint; empty if all are free."""
    endpoints, problems = needed_endpoints(settings)
    for endpoint in endpoints:
        problem = endpoint_problem(endpoint)
        if problem is not None:
            problems.append(problem)
    return problems


def endpoint_problem(endpoint: Endpoint) -> Optional[str]:
    """Why `endpoint` cannot be listened on now, or None if it can (probed, then closed)."""
    where = (f"cannot listen for {endpoint.part} on {endpoint.address} port {endpoint.port} "
             f"({endpoint.protocol.upper()})")
    try:
        _probe(endpoint)
    except OSError as error:
        holder = port_holder(endpoint)
        if holder is not None:
            reason = f"in use by {holder}"
        elif error.errno == errno.EADDRINUSE:
            reason = "in use (by a process this user cannot see: run as root to name it)"
        elif error.errno in _PRIVILEGE_ERRNOS:
            return None  # not bindable as this user, and nobody holds it: root (vacd) can have it
        else:
            reason = error.strerror or str(error)
        return f"{where}: {reason} ({endpoint.settings_hint})"
    return None


def _probe(endpoint: Endpoint) -> None:
    """Bind (and for TCP listen) as vacd's listener does, and close at once. Raises OSError."""
    family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
    kind = socket.SOCK_DGRAM if endpoint.protocol == "udp" else socket.SOCK_STREAM
    probe = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # As vacquery.transport: `::` is dual stack, a named IPv6 address is IPv6 only.
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if endpoint.address == "::" else 1)
        if kind == socket.SOCK_STREAM:
            # As the guest API and metrics servers: a connection in TIME_WAIT does not hold the port,
            # and the guest addresses may not be on the bridge yet.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            except OSError:
                pass  # no IP_FREEBIND here: an address not on the host fails the bind, as it would vacd's
        probe.bind((endpoint.address, endpoint.port))
        if kind == socket.SOCK_STREAM:
            probe.listen(1)
    finally:
        probe.close()


def port_holder(endpoint: Endpoint) -> Optional[str]:
    """`pid N (name)` of a socket that takes `endpoint`, `a socket` if its owner is hidden, or None."""
    import psutil

    try:
        connections = psutil.net_connections(kind=endpoint.protocol)
    except (psutil.Error, OSError) as error:
        log.debug("cannot read the socket table error=%s", error)
        return None
    for connection in connections:
        if not connection.laddr or connection.laddr.port != endpoint.port:
            continue
        if endpoint.protocol == "tcp" and connection.status != psutil.CONN_LISTEN:
            continue
        if endpoint.protocol == "udp" and connection.raddr:
            continue  # a connected UDP socket shares the port with a listener only by SO_REUSEPORT
        held = connection.laddr.ip
        if not (held == endpoint.address or held in _WILDCARD_ADDRESSES
                or endpoint.address in _WILDCARD_ADDRESSES):
            continue
        if connection.pid is None:
            return f"a socket on {held} (its process is hidden from this user: run as root to name it)"
        try:
            name = psutil.Process(connection.pid).name()
        except psutil.Error:
            name = "exited"
        return f"pid {connection.pid} ({name}) on {held}"
    return None
