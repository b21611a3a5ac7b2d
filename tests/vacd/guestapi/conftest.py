"""Fixtures for the guest API tests: a real store under tmp_path and real servers on loopback.

The servers listen on 127.0.0.254 (metadata) and 127.0.0.253 (MJF), ports chosen by the
kernel, in an event loop on a background thread; clients are blocking sockets bound to a
source address 127.0.0.N, which the injected `source_to_ordinal` maps to slot N (N from 2
to 249; 127.0.0.1 belongs to no slot, standing in for "any other source").
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from vacd.config import Machinetype, Settings
from vacd.eventloop import ASYNCIO, UVLOOP, new_event_loop, uvloop_factory
from vacd.guestapi.connection import ConnectionLimits
from vacd.guestapi.contextualise import prepare_machine_dir
from vacd.guestapi.server import GuestApiServer
from vacd.paths import Paths
from vacd.slots import slot_identity
from vacd.records import MachineRecord
from vacd.store import Store

CREATED_TIME = 1_700_000_000
MAX_WALLCLOCK_SECONDS = 86400
FACTORY_NAME = "f1.example.com"
SPACE = "vac01.example.com"
ROOT_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyTestKeyTestKey root@f1.example.com\n"
TEMPLATE = (
    "#cloud-config\n"
    "# host=##user_data_machine_hostname## uuid=##user_data_uuid## space=##user_data_space##\n"
    "# mjf=##user_data_machinefeatures_url## gone=##user_data_zzz##\n"
)
METADATA_HOST = "127.0.0.254"
MJF_HOST = "127.0.0.253"


def loopback_source_to_ordinal(source: str) -> Optional[int]:
    if not source.startswith("127.0.0."):
        return None
    last = int(source.rsplit(".", 1)[1])
    return last if 2 <= last <= 249 else None


def source_for(ordinal: int) -> str:
    return f"127.0.0.{ordinal}"


@dataclass
class Site:
    """One factory's files under tmp_path, with helpers to make machines as the factory does."""

    paths: Paths
    store: Store
    settings: Settings
    machinetype: Machinetype

    def record_for(self, ordinal: int, **changes: Any) -> MachineRecord:
        identity = slot_identity(self.settings.factory_name, ordinal)
        record = MachineRecord(
            name=identity.machine_name,
            ordinal=ordinal,
            uuid=f"1b4e28ba-2fa1-11d2-883f-{ordinal:012d}",
            machinetype=self.machinetype.name,
            machine_model="vm-raw",
            processors=2,
            created_time=CREATED_TIME,
            shutdown_time=CREATED_TIME + MAX_WALLCLOCK_SECONDS,
            ip_address=identity.ip_address,
            hs06=20.0,
            mb=4096,
        )
        return replace(record, **changes)

    def create_machine(self, ordinal: int, **changes: Any) -> tuple[MachineRecord, Path]:
        record = self.record_for(ordinal, **changes)
        directory = self.store.begin_creation(record)
        prepare_machine_dir(self.paths, self.settings, self.machinetype, record, directory, now=record.created_time)
        self.store.mark_started(record, record.created_time)
        return record, directory


def make_site(prefix: Path, *, with_root_public_key: bool = True, **settings_changes: Any) -> Site:
    paths = Paths(prefix)
    paths.ensure_state_dirs()
    settings = Settings(
        vac_space=SPACE,
        factory_name=FACTORY_NAME,
        total_processors=8,
        host_processors=8,
        gocdb_sitename="UKI-TEST",
        hs06_per_processor=10.0,
        # As the parser does: the default key path is under the prefix.
        root_public_key=str(paths.under_prefix("/root/.ssh/id_rsa.pub")),
    )
    settings = replace(settings, **settings_changes)
    machinetype_path = paths.machinetypes_dir / "example"
    (machinetype_path / "files").mkdir(parents=True)
    (machinetype_path / "files" / "user_data").write_text(TEMPLATE)
    machinetype = Machinetype(
        name="example",
        machinegroup="example",
        machinetype_path=machinetype_path,
        user_data="user_data",
        accounting_fqan="/example/Role=NULL/Capability=NULL",
    )
    if with_root_public_key:
        key_path = Path(settings.root_public_key)
        key_path.parent.mkdir(parents=True)
        key_path.write_text(ROOT_PUBLIC_KEY)
    return Site(paths, Store(paths), settings, machinetype)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = b""


def parse_responses(raw: bytes) -> list[HttpResult]:
    """Split what a server sent into responses (Content-Length framed, as ours always are)."""
    results = []
    rest = raw
    while rest:
        head, separator, rest = rest.partition(b"\r\n\r\n")
        if not separator:
            raise AssertionError(f"incomplete response head: {head!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _colon, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body, rest = rest[:length], rest[length:]
        results.append(HttpResult(status, headers, body, head + separator + body))
    return results


@dataclass
class RunningServer:
    """A GuestApiServer on loopback, driven from blocking test code."""

    server: GuestApiServer
    loop: asyncio.AbstractEventLoop
    ports: dict[str, int] = field(default_factory=dict)

    def connect(self, part: str = "metadata", source: str = "127.0.0.3") -> socket.socket:
        host = METADATA_HOST if part == "metadata" else MJF_HOST
        client = socket.create_connection((host, self.ports[part]), timeout=10, source_address=(source, 0))
        return client

    def exchange(self, raw_request: bytes, *, part: str = "metadata", source: str = "127.0.0.3") -> list[HttpResult]:
        """Send raw bytes, read until the server closes, return every response."""
        with self.connect(part, source) as client:
            client.sendall(raw_request)
            return parse_responses(read_until_closed(client))

    def get(self, path: str, *, part: str = "metadata", source: str = "127.0.0.3", method: str = "GET") -> HttpResult:
        responses = self.exchange(f"{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode(), part=part, source=source)
        assert len(responses) == 1
        return responses[0]

    def put(
        self,
        path: str,
        body: bytes,
        *,
        source: str = "127.0.0.3",
        headers: Optional[dict[str, str]] = None,
        content_length: bool = True,
    ) -> HttpResult:
        header_lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        if content_length:
            header_lines += f"Content-Length: {len(body)}\r\n"
        raw_request = f"PUT {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header_lines}\r\n".encode() + body
        responses = self.exchange(raw_request, part="mjf", source=source)
        assert len(responses) == 1
        return responses[0]

    def is_refused(self, raw_request: bytes = b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n", *,
                   part: str = "metadata", source: str = "127.0.0.3") -> bool:
        """Whether the server closes a connection from `source` without answering a byte (reset at accept)."""
        try:
            # The reset may come before connect() has returned.
            with self.connect(part, source) as client:
                client.sendall(raw_request)
                return read_until_closed(client) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)


def read_until_closed(client: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = client.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.fixture
def limits() -> ConnectionLimits:
    return ConnectionLimits()


# Every server test runs on asyncio's own loop and, where it is installed, on uvloop's, which
# vacd's guest servers prefer (vacd.eventloop).
LOOP_KINDS = [ASYNCIO] + ([UVLOOP] if uvloop_factory() is not None else [])


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def running_server(site: Site, limits: ConnectionLimits, loop_kind: str) -> Iterator[RunningServer]:
    loop = new_event_loop(loop_kind)
    thread = threading.Thread(target=loop.run_forever, name="guestapi-test-loop", daemon=True)
    thread.start()
    server = GuestApiServer(
        site.paths,
        site.store,
        lambda: site.settings,
        metadata_addresses=(METADATA_HOST,),
        mjf_addresses=(MJF_HOST,),
        port=0,
        source_to_ordinal=loopback_source_to_ordinal,
        limits=limits,
    )
    running = RunningServer(server, loop)
    try:
        running.call(server.start())
        running.ports = {listening.part: listening.port for listening in server.listening}
        yield running
    finally:
        try:
            running.call(server.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
