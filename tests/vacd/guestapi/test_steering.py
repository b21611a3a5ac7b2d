"""Steered socket groups (vacd.guestapi.steering): the kernel sends each source where the sum says.

The kernel tests use loopback sources 127.x.y.z (all of 127/8 is local), no namespace needed.
"""

from __future__ import annotations

import ipaddress
import select
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vacd.guestapi.conftest import Site
from vacd.guestapi.joboutputstotal import scan
from vacd.guestapi.steering import MAX_PROCESSES, Shard, listening_group, process_for_source, steering_program
from vacd.guestapi.workers import serving_processes
from vacd.slots import ip_address_for


def accepted_by(group: list[socket.socket], source: str) -> list[int]:
    """Connect from `source` and say which of the group's sockets has the connection."""
    port = group[0].getsockname()[1]
    with socket.create_connection(("127.0.0.254", port), timeout=5, source_address=(source, 0)):
        ready, _, _ = select.select(group, [], [], 5)
        places = sorted(group.index(member) for member in ready)
        for place in places:
            connection, _ = group[place].accept()
            connection.close()
        return places


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_the_kernel_sends_each_source_to_the_socket_process_for_source_names(count: int) -> None:
    group = listening_group("127.0.0.254", 0, count)
    try:
        sources = [f"127.{second}.{third}.{fourth}" for second, third, fourth in
                   [(0, 0, 1), (0, 0, 2), (0, 1, 3), (1, 2, 4), (9, 9, 9), (200, 13, 77), (0, 0, 200), (3, 4, 5)]]
        sources += [f"127.0.5.{last}" for last in range(1, 25)]
        assert [accepted_by(group, source) for source in sources] == [
            [process_for_source(source, count)] for source in sources]
    finally:
        for member in group:
            member.close()


def test_a_sources_connections_all_reach_the_same_socket_whatever_their_ports() -> None:
    group = listening_group("127.0.0.254", 0, 4)
    try:
        assert {tuple(accepted_by(group, "127.0.0.9")) for _ in range(20)} == {(process_for_source("127.0.0.9", 4),)}
    finally:
        for member in group:
            member.close()


def test_a_group_that_cannot_bind_leaves_nothing_open() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.254", 0))
    holder.listen()
    try:
        before = len(list(Path("/proc/self/fd").iterdir()))
        with pytest.raises(OSError):
            # Not SO_REUSEPORT: the port is taken.
            listening_group("127.0.0.254", holder.getsockname()[1], 3)
        assert len(list(Path("/proc/self/fd").iterdir())) == before
    finally:
        holder.close()


@given(st.ip_addresses(v=4), st.integers(min_value=1, max_value=MAX_PROCESSES))
def test_process_for_source_is_the_address_modulo_the_count_for_plain_and_mapped_ipv4(
        address: ipaddress.IPv4Address, count: int) -> None:
    place = process_for_source(str(address), count)
    assert place == int(address) % count
    assert process_for_source(f"::ffff:{address}", count) == place


@given(st.ip_addresses(v=6), st.integers(min_value=1, max_value=MAX_PROCESSES))
def test_an_ipv6_source_is_steered_by_its_last_32_bits(address: ipaddress.IPv6Address, count: int) -> None:
    if address.ipv4_mapped is not None:
        return
    assert process_for_source(f"{address}%br0", count) == (int(address) & 0xFFFFFFFF) % count


def test_a_program_for_no_process_or_too_many_is_refused() -> None:
    for count in (0, MAX_PROCESSES + 1):
        with pytest.raises(ValueError):
            steering_program(socket.AF_INET, count)


def test_each_shard_counts_its_own_slots_machines_against_its_part_of_the_cap(site: Site) -> None:
    directories = {}
    for ordinal in range(1, 7):
        _record, directory = site.create_machine(ordinal)
        (directory / "joboutputs" / "out.txt").write_bytes(b"x" * (100 * ordinal))
        directories[ordinal] = directory
    shards = [Shard(index, 3) for index in range(3)]
    counted = [scan(site.paths.machines_dir, lambda directory, shard=shard: shard.holds_directory(site.store,
                                                                                                  directory))
               for shard in shards]
    for shard, totals in zip(shards, counted):
        assert set(totals) == {directories[ordinal] for ordinal in range(1, 7)
                               if process_for_source(ip_address_for(ordinal), 3) == shard.index}
    # Every machine is counted by exactly one shard, and the shards' caps add up to at most the cap.
    assert sum(sum(totals.values()) for totals in counted) == sum(100 * ordinal for ordinal in range(1, 7))
    assert sum(shard.joboutputs_cap(1000) for shard in shards) <= 1000


def test_a_directory_with_no_readable_record_counts_against_every_shard(site: Site) -> None:
    stray = site.paths.machines_dir / "not-a-machine"
    (stray / "joboutputs").mkdir(parents=True)
    assert all(Shard(index, 2).holds_directory(site.store, stray) for index in range(2))


@pytest.mark.parametrize(("configured", "processors", "expected"), [
    (None, 2, 0), (None, 48, 0), (None, 64, 2), (None, 128, 4), (None, 256, 8), (None, 1024, 8),
    (0, 256, 0), (3, 2, 3),
])
def test_auto_serves_from_vacds_thread_below_64_processors_and_one_process_per_32_above(
        configured: int, processors: int, expected: int) -> None:
    assert serving_processes(configured, processors) == expected
