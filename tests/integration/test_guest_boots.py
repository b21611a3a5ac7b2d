"""A real guest boots through LibvirtBackend on the vac network and talks to the factory's addresses.

This proves the test guest, the network (DHCP reservation, 169.254.169.254 on the bridge,
clean-traffic pinned to the slot address), the domain XML and the backend together. The two
HTTP servers here are tiny test fixtures standing in for vacd.guestapi: one serves user-data
on 169.254.169.254:80, the other records PUTs to 169.254.169.253:80.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import pytest

from vacd.backends.base import MachineSpec
from vacd.backends.libvirt import LibvirtBackend
from vacd.slots import GATEWAY_ADDRESS, METADATA_ADDRESS

pytestmark = pytest.mark.vm

# Generous bounds for a loaded 2-core CI machine under TCG; the guest needs about 5 s.
BOOT_DEADLINE_SECONDS = 120.0
SHUTDOWN_DEADLINE_SECONDS = 60.0

SUCCESS_USER_DATA = """#!/bin/sh
echo "test payload running on $(hostname)"
http-put http://169.254.169.253/joboutputs/product_name "$(cat /sys/class/dmi/id/product_name)"
http-put http://169.254.169.253/joboutputs/shutdown_message "200 Success"
"""

# Announces itself, then waits to be shut down from outside (ACPI power button).
WAITING_USER_DATA = """#!/bin/sh
http-put http://169.254.169.253/joboutputs/heartbeat "up"
sleep 600
"""


@dataclass(frozen=True)
class Request:
    client_address: str
    method: str
    path: str
    body: bytes
    monotonic_time: float


class GuestServers:
    """User-data on 169.254.169.254:80 and a PUT recorder on 169.254.169.253:80."""

    def __init__(self, user_data: str) -> None:
        self.user_data = user_data.encode()
        self.requests: list[Request] = []
        self.arrived = threading.Condition()
        self.servers: list[http.server.ThreadingHTTPServer] = []

    def start(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._record(self, b"")
                if self.path == "/latest/user-data":
                    self._answer(200, outer.user_data)
                elif self.path == "/openstack/latest/meta_data.json":
                    self._answer(200, b'{"name": "test"}')
                else:
                    self._answer(404, b"")

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                outer._record(self, self.rfile.read(length))
                self._answer(201, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # requests are recorded, not printed

        for address in (METADATA_ADDRESS, GATEWAY_ADDRESS):
            server = http.server.ThreadingHTTPServer((address, 80), Handler)
            server.daemon_threads = True
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, name=f"test-http-{address}", daemon=True).start()

    def _record(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        with self.arrived:
            self.requests.append(Request(handler.client_address[0], handler.command, handler.path, body,
                                         time.monotonic()))
            self.arrived.notify_all()

    def wait_for(self, method: str, path: str, deadline: float) -> Optional[Request]:
        with self.arrived:
            while True:
                for request in self.requests:
                    if request.method == method and request.path == path:
                        return request
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.arrived.wait(remaining)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def guest_servers() -> Iterator[Callable[[str], GuestServers]]:
    started: list[GuestServers] = []

    def start(user_data: str) -> GuestServers:
        servers = GuestServers(user_data)
        servers.start()
        started.append(servers)
        return servers

    try:
        yield start
    finally:
        for servers in started:
            servers.stop()


class GoneWatcher:
    """Waits until a machine is no longer listed, woken early by lifecycle events."""

    def __init__(self, backend: LibvirtBackend) -> None:
        self.backend = backend
        self.changed = threading.Event()
        backend.watch(lambda name: self.changed.set())

    def wait_gone(self, name: str, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if name not in {machine.name for machine in self.backend.list_machines()}:
                return True
            self.changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            self.changed.clear()
        return False


def console_tail(spec: MachineSpec) -> str:
    try:
        return (spec.machine_dir / "console.log").read_text(errors="replace")[-3000:]
    except OSError as error:
        return f"(no console log: {error})"


def test_guest_fetches_user_data_puts_shutdown_message_and_disappears(
    libvirt_backend: LibvirtBackend,
    guest_spec: Callable[..., MachineSpec],
    guest_servers: Callable[[str], GuestServers],
    record_property: Callable[[str, object], None],
) -> None:
    spec = guest_spec(5)
    servers = guest_servers(SUCCESS_USER_DATA)
    watcher = GoneWatcher(libvirt_backend)

    created_at = time.monotonic()
    libvirt_backend.create(spec)
    create_seconds = time.monotonic() - created_at
    deadline = created_at + BOOT_DEADLINE_SECONDS

    put = servers.wait_for("PUT", "/joboutputs/shutdown_message", deadline)
    assert put is not None, f"no shutdown_message PUT; console:\n{console_tail(spec)}"
    assert put.client_address == spec.ip_address
    assert put.body == b"200 Success"
    get = servers.wait_for("GET", "/latest/user-data", deadline)
    assert get is not None and get.client_address == spec.ip_address
    product = servers.wait_for("PUT", "/joboutputs/product_name", deadline)
    assert product is not None and product.body == b"OpenStack Nova"

    assert watcher.wait_gone(spec.name, deadline), f"domain still there; console:\n{console_tail(spec)}"
    gone_seconds = time.monotonic() - created_at
    put_seconds = put.monotonic_time - created_at
    record_property("create_call_seconds", round(create_seconds, 2))
    record_property("create_to_put_seconds", round(put_seconds, 2))
    record_property("create_to_gone_seconds", round(gone_seconds, 2))
    print(f"\ncreate call {create_seconds:.2f} s, create to PUT {put_seconds:.2f} s, "
          f"create to gone {gone_seconds:.2f} s")
    assert "vac-test-guest: poweroff" in console_tail(spec)


def test_acpi_shutdown_powers_a_running_guest_off(
    libvirt_backend: LibvirtBackend,
    guest_spec: Callable[..., MachineSpec],
    guest_servers: Callable[[str], GuestServers],
    record_property: Callable[[str, object], None],
) -> None:
    spec = guest_spec(6)
    servers = guest_servers(WAITING_USER_DATA)
    watcher = GoneWatcher(libvirt_backend)
    libvirt_backend.create(spec)
    heartbeat = servers.wait_for("PUT", "/joboutputs/heartbeat", time.monotonic() + BOOT_DEADLINE_SECONDS)
    assert heartbeat is not None, f"guest never came up; console:\n{console_tail(spec)}"
    assert heartbeat.client_address == spec.ip_address

    shutdown_at = time.monotonic()
    libvirt_backend.shutdown(spec.name)
    assert watcher.wait_gone(spec.name, shutdown_at + SHUTDOWN_DEADLINE_SECONDS), (
        f"guest ignored the ACPI power button; console:\n{console_tail(spec)}")
    record_property("shutdown_to_gone_seconds", round(time.monotonic() - shutdown_at, 2))
    assert "ACPI power button" in console_tail(spec)


def test_guests_created_concurrently_each_report_from_their_own_slot(
    libvirt_backend: LibvirtBackend,
    guest_spec: Callable[..., MachineSpec],
    guest_servers: Callable[[str], GuestServers],
    record_property: Callable[[str, object], None],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    specs = [guest_spec(ordinal) for ordinal in range(8, 12)]
    servers = guest_servers(SUCCESS_USER_DATA)
    watcher = GoneWatcher(libvirt_backend)
    started = time.monotonic()
    deadline = started + BOOT_DEADLINE_SECONDS
    # As the factory does: creations from a bounded thread pool sharing one backend.
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        list(pool.map(libvirt_backend.create, specs))
    reporters: set[str] = set()
    while time.monotonic() < deadline:
        with servers.arrived:
            reporters = {r.client_address for r in servers.requests
                         if r.method == "PUT" and r.path == "/joboutputs/shutdown_message"}
            if len(reporters) >= len(specs):
                break
            servers.arrived.wait(max(0.0, deadline - time.monotonic()))
    assert reporters == {spec.ip_address for spec in specs}, "\n".join(console_tail(s) for s in specs)
    for spec in specs:
        assert watcher.wait_gone(spec.name, deadline), console_tail(spec)
    record_property("four_guests_create_to_all_gone_seconds", round(time.monotonic() - started, 2))
