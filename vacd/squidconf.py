"""`vac squid-conf IN OUT`: a Squid configuration for cvmfs with the space's factories as siblings.

Rules (behaviour reference §10.5, acceptance 45):
- OUT is the template IN followed, for each configured factory (sorted by name) whose
  address is known, by `acl localnet src <ip>/32` and, for factories other than this
  one, `cache_peer <ip> sibling 3128 3130 default`. A factory's address is its
  `FactoryAddress.address` if configured, else what its name resolves to; a factory
  that does not resolve is left out with a warning (as Vac 03).
- OUT is replaced (temp file + rename) only if its content would change, so its mtime
  tells Puppet or a cron job whether Squid needs a reload.
- Rendering is a pure function of the template and the resolved addresses; only
  `resolve_address` touches the network.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from vacd.atomicfile import read_text_or_none, write_atomic
from vacd.config import FactoryAddress, Settings

log = logging.getLogger(__name__)

# Vac 03's sibling line: HTTP port 3128, ICP port 3130 (§10.5).
SQUID_HTTP_PORT = 3128
SQUID_ICP_PORT = 3130


@dataclass(frozen=True)
class ResolvedFactory:
    name: str
    address: str


def squid_lines(factories: Iterable[ResolvedFactory], this_factory: str) -> list[str]:
    """The lines appended to the template, factories sorted by name."""
    lines: list[str] = []
    for factory in sorted(factories, key=lambda factory: factory.name):
        address = ipaddress.ip_address(factory.address)
        lines.append(f"acl localnet src {address}/{address.max_prefixlen}")
        if factory.name != this_factory:
            lines.append(f"cache_peer {address} sibling {SQUID_HTTP_PORT} {SQUID_ICP_PORT} default")
    return lines


def render_squid_conf(template: str, factories: Iterable[ResolvedFactory], this_factory: str) -> str:
    body = template if template.endswith("\n") or not template else template + "\n"
    return body + "".join(line + "\n" for line in squid_lines(factories, this_factory))


def resolve_address(name: str) -> Optional[str]:
    """The first IPv4 address of `name` (IPv6 if it has none), or None if it does not resolve."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as error:
        log.warning("factory does not resolve name=%s error=%s; left out of squid.conf", name, error)
        return None
    addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    ipv4 = [address for address in addresses if ":" not in address]
    chosen = ipv4 or addresses
    return chosen[0] if chosen else None


def resolve_factories(
    factories: Sequence[FactoryAddress], resolve: Callable[[str], Optional[str]] = resolve_address
) -> list[ResolvedFactory]:
    resolved = []
    for factory in factories:
        address = factory.address or resolve(factory.name)
        if address is None:
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            log.warning("factory address is not an IP address name=%s address=%r; left out", factory.name, address)
            continue
        resolved.append(ResolvedFactory(factory.name, address))
    return resolved


def write_if_changed(path: Path, text: str) -> bool:
    """Replace `path` atomically with `text` unless it already holds exactly that; True if written."""
    if read_text_or_none(path) == text:
        return False
    write_atomic(path, text)
    return True


def squid_conf(
    template_path: Path,
    output_path: Path,
    settings: Settings,
    resolve: Callable[[str], Optional[str]] = resolve_address,
) -> bool:
    """Write OUT from IN and the configured factories; True if OUT changed.

    Raises:
        OSError: IN cannot be read or OUT cannot be written.
    """
    template = template_path.read_text()
    factories = settings.factories or (FactoryAddress(settings.factory_name),)
    text = render_squid_conf(template, resolve_factories(factories, resolve), settings.factory_name)
    changed = write_if_changed(output_path, text)
    log.info("squid configuration %s path=%s", "written" if changed else "unchanged", output_path)
    return changed
