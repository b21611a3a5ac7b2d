"""Listening sockets shared by several guest server processes, each guest always sent to the same one.

Rules (issue 15 item 3):
- A group is `count` TCP sockets bound to one address and port with SO_REUSEPORT, so the
  kernel spreads new connections over `count` accepting processes without a process
  that hands them out.
- The kernel's own spread hashes the 4-tuple, so one guest's connections would land in
  every process, and each process would count a slot's connections, requests and uploads
  apart: a guest could take `count` times its share. A classic BPF program attached to
  the group (SO_ATTACH_REUSEPORT_CBPF) picks the socket from the source address alone,
  `source mod count` (`process_for_source` is the same sum in Python), so all of a slot's
  state lives in one process and the per-slot rules need no sharing.
- The index the program returns is a socket's place in the group, which is the order the
  sockets were bound in. The caller keeps every socket of the group open for as long as
  the group serves (the processes get duplicates), so a process that dies changes no
  place: its guests' connections wait in its socket's backlog until it is started again,
  and no guest moves to another process.
- Each socket is bound with IP_FREEBIND, as the single server's are, so a group can be
  made before the bridge has the address.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vacd.slots import ip_address_for

if TYPE_CHECKING:
    from vacd.store import Store

# Linux <asm-generic/socket.h> and <linux/filter.h>; the socket module has neither name.
SO_ATTACH_REUSEPORT_CBPF = 51
# A negative load offset that reads from the network header (the IP header) rather than
# from where the program's data starts (past the TCP header).
_SKF_NET_OFF = -0x100000
# Offsets of the source address in the IP header; for IPv6, the source's last 32 bits.
_IPV4_SOURCE_OFFSET = 12
_IPV6_SOURCE_LOW_OFFSET = 8 + 12
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_ALU_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_BPF_RET_A = 0x16  # BPF_RET | BPF_A
# Linux <netinet/in.h>; the socket module gained the name only in Python 3.12.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
LISTEN_BACKLOG = 1024
# A sane ceiling for configuration and the program's divisor alike.
MAX_PROCESSES = 64


def process_for_source(source: str, count: int) -> int:
    """Which of `count` processes the kernel sends a connection from `source` to (the program's sum)."""
    address = ipaddress.ip_address(source.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        value = int.from_bytes(address.packed[12:16], "big")
    else:
        ipv4 = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address
        assert ipv4 is not None
        value = int(ipv4)
    return value % count


def steering_program(family: socket.AddressFamily, count: int) -> bytes:
    """The classic BPF instructions that return `source mod count` for a group of `family`."""
    if not 1 <= count <= MAX_PROCESSES:
        raise ValueError(f"a group of {count} sockets: 1 to {MAX_PROCESSES}")
    offset = _IPV4_SOURCE_OFFSET if family == socket.AF_INET else _IPV6_SOURCE_LOW_OFFSET
    instructions = (
        (_BPF_LD_W_ABS, 0, 0, (_SKF_NET_OFF + offset) & 0xFFFFFFFF),
        (_BPF_ALU_MOD_K, 0, 0, count),
        (_BPF_RET_A, 0, 0, 0),
    )
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)


def attach_steering(listening_socket: socket.socket, count: int) -> None:
    """Attach the group's program through one of its sockets (it then holds for all of them)."""
    code = steering_program(listening_socket.family, count)
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel copies
    # the instructions during setsockopt, so the buffer need live only that long.
    buffer = ctypes.create_string_buffer(code, len(code))
    program = struct.pack("@HP", len(code) // 8, ctypes.addressof(buffer))
    listening_socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, program)


def listening_group(address: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on `address`:`port`, in their group's order, steered by source.

    `address` may carry a zone (`fe80::a9fe:a9fe%br0`). The sockets are made blocking; the
    process that adopts one makes it non-blocking, which its copy shares with the caller's
    (one open file), and the caller never accepts on its own. Raises OSError (the address
    cannot be bound, or the kernel refuses the program) with nothing left open.
    """
    family, socket_type, protocol, _name, socket_address = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    group: list[socket.socket] = []
    try:
        for place in range(count):
            member = socket.socket(family, socket_type, protocol)
            group.append(member)
            member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                member.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            member.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            # Port 0 (tests): the first socket's port is the group's.
            member.bind(socket_address if place == 0 else group[0].getsockname())
            if place == 0:
                # Before any other socket joins and before any listen(): no connection is
                # ever spread by the kernel's own hash.
                attach_steering(member, count)
        for member in group:
            member.listen(LISTEN_BACKLOG)
    except BaseException:
        for member in group:
            member.close()
        raise
    return group


@dataclass(frozen=True)
class Shard:
    """The slots one of `count` serving processes answers for: those the program sends to `index`.

    The node-wide joboutputs cap (`joboutputs_total_bytes`) is split evenly: each process
    counts its own slots' machine directories against its part, so together they never
    pass the cap without having to share a running total.
    """

    index: int
    count: int

    def serves(self, ordinal: int) -> bool:
        return process_for_source(ip_address_for(ordinal), self.count) == self.index

    def joboutputs_cap(self, total_cap_bytes: int) -> int:
        return total_cap_bytes // self.count

    def holds_directory(self, store: "Store", directory: Path) -> bool:
        """Whether a machine directory is one of this shard's slots'; an unreadable one counts everywhere."""
        stored = store.load_machine(directory)
        return stored is None or self.serves(stored.record.ordinal)
