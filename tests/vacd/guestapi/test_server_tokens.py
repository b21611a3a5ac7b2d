"""Session tokens over real loopback HTTP: Firecracker's MMDS V2 matrix against GuestApiServer.

Missing lifetime, lifetime out of range, forwarded PUT, no token, a bad token, an expired
token (the server's clock is the test's), a token from another slot, and a token kept across
a recreation of the machine; cloud-init's paths are served without a token throughout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from typing import Iterator, Optional

import pytest

from tests.vacd.guestapi.conftest import (
    METADATA_HOST,
    MJF_HOST,
    HttpResult,
    RunningServer,
    Site,
    loopback_source_to_ordinal,
    source_for,
)
from vacd.config import Settings
from vacd.guestapi.server import GuestApiServer
from vacd.records import FinishRecord

VAC_PATH = "/latest/meta-data.json"  # Vac 03's spelling: a token is needed when required
CLOUD_INIT_PATHS = ("/openstack/latest/meta_data.json", "/openstack/latest/user_data", "/latest/meta-data/instance-id")
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


class SettableClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class TokenServer:
    """A running server whose settings and clock the test changes."""

    def __init__(self, running: RunningServer, site: Site, clock: SettableClock) -> None:
        self.running = running
        self.site = site
        self.clock = clock
        self.settings = replace(site.settings, metadata_tokens="required")

    def request(self, method: str, path: str, headers: Optional[dict[str, str]] = None, *,
                source: str = "127.0.0.3", part: str = "metadata") -> HttpResult:
        lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        raw = f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n{lines}\r\n".encode()
        (response,) = self.running.exchange(raw, part=part, source=source)
        return response

    def token(self, ttl_seconds: int = 60, source: str = "127.0.0.3") -> str:
        response = self.request("PUT", "/latest/api/token", {TTL: str(ttl_seconds)}, source=source)
        assert response.status == 200, response
        assert response.headers["x-aws-ec2-metadata-token-ttl-seconds"] == str(ttl_seconds)
        return response.body.decode()


@pytest.fixture
def tokens(site: Site) -> Iterator[TokenServer]:
    clock = SettableClock()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="guestapi-token-loop", daemon=True)
    thread.start()
    holder: list[TokenServer] = []
    server = GuestApiServer(
        site.paths, site.store, lambda: holder[0].settings,
        metadata_addresses=(METADATA_HOST,), mjf_addresses=(MJF_HOST,), port=0,
        source_to_ordinal=loopback_source_to_ordinal, clock=clock,
    )
    running = RunningServer(server, loop)
    holder.append(TokenServer(running, site, clock))
    site.create_machine(3)
    site.create_machine(4)
    try:
        running.call(server.start())
        running.ports = {listening.part: listening.port for listening in server.listening}
        yield holder[0]
    finally:
        try:
            running.call(server.stop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()


def test_token_opens_a_vac_path_that_requires_one(tokens: TokenServer) -> None:
    token = tokens.token()
    response = tokens.request("GET", VAC_PATH, {TOKEN: token})
    assert response.status == 200 and b'"uuid": "1b4e28ba-2fa1-11d2-883f-000000000003"' in response.body
    assert tokens.request("HEAD", VAC_PATH, {TOKEN: token}).status == 200
    assert tokens.request("GET", VAC_PATH, {"X-metadata-token": token}).status == 200


def test_firecracker_ttl_header_is_accepted(tokens: TokenServer) -> None:
    response = tokens.request("PUT", "/latest/api/token", {"X-metadata-token-ttl-seconds": "30"})
    assert response.status == 200
    assert tokens.request("GET", VAC_PATH, {"X-metadata-token": response.body.decode()}).status == 200


def test_put_without_ttl_is_400(tokens: TokenServer) -> None:
    response = tokens.request("PUT", "/latest/api/token")
    assert response.status == 400 and b"ttl-seconds" in response.body


@pytest.mark.parametrize("ttl", ["0", "21601", "-5", "sixty", ""])
def test_put_with_ttl_out_of_range_or_malformed_is_400(tokens: TokenServer, ttl: str) -> None:
    assert tokens.request("PUT", "/latest/api/token", {TTL: ttl}).status == 400


def test_ttl_limits_are_inclusive(tokens: TokenServer) -> None:
    assert tokens.token(1) and tokens.token(21600)


def test_forwarded_put_is_403_and_issues_nothing(tokens: TokenServer) -> None:
    response = tokens.request("PUT", "/latest/api/token", {TTL: "60", "X-Forwarded-For": "10.1.2.3"})
    assert response.status == 403 and b"v1." not in response.body


def test_no_token_on_cloud_init_paths_is_served(tokens: TokenServer) -> None:
    for path in CLOUD_INIT_PATHS:
        assert tokens.request("GET", path).status == 200, path


def test_no_token_on_a_path_requiring_one_is_401(tokens: TokenServer) -> None:
    response = tokens.request("GET", VAC_PATH)
    assert response.status == 401 and response.body == b"token required\n"
    assert tokens.running.server.counters[("metadata", "token", 401)] == 1


def test_optional_mode_serves_vac_paths_without_a_token(tokens: TokenServer) -> None:
    tokens.settings = replace(tokens.settings, metadata_tokens="optional")
    assert tokens.request("GET", VAC_PATH).status == 200


def test_bad_token_is_401(tokens: TokenServer) -> None:
    good = tokens.token()
    for bad in ("nonsense", good[:-1] + ("A" if good[-1] != "A" else "B"), good + "x", "v1..", ""):
        assert tokens.request("GET", VAC_PATH, {TOKEN: bad}).status == 401, bad


def test_expired_token_is_401_and_a_new_one_works(tokens: TokenServer) -> None:
    token = tokens.token(ttl_seconds=60)
    tokens.clock.now += 59
    assert tokens.request("GET", VAC_PATH, {TOKEN: token}).status == 200
    tokens.clock.now += 2
    response = tokens.request("GET", VAC_PATH, {TOKEN: token})
    assert response.status == 401 and response.body == b"token expired\n"
    assert tokens.request("GET", VAC_PATH, {TOKEN: tokens.token()}).status == 200


def test_token_from_another_slot_is_401(tokens: TokenServer) -> None:
    token_of_4 = tokens.token(source=source_for(4))
    assert tokens.request("GET", VAC_PATH, {TOKEN: token_of_4}, source=source_for(4)).status == 200
    response = tokens.request("GET", VAC_PATH, {TOKEN: token_of_4}, source=source_for(3))
    assert response.status == 401 and response.body == b"token not issued to this machine\n"


def test_token_after_the_machine_is_recreated_is_401(tokens: TokenServer) -> None:
    site = tokens.site
    token = tokens.token()
    old = site.store.slot_binding(site.record_for(3).name).record  # type: ignore[union-attr]
    site.store.finish(old, FinishRecord(old.created_time + 100, None, None, old.created_time, None, 0.0))
    site.store.free_slot(old)
    site.create_machine(3, created_time=old.created_time + 200, uuid="22222222-2222-4222-8222-222222222222")
    response = tokens.request("GET", VAC_PATH, {TOKEN: token})
    assert response.status == 401 and response.body == b"token not issued to this machine\n"
    fresh = tokens.request("GET", VAC_PATH, {TOKEN: tokens.token()})
    assert fresh.status == 200 and b"22222222-2222-4222-8222-222222222222" in fresh.body


def test_stale_token_on_a_cloud_init_path_is_not_looked_at(tokens: TokenServer) -> None:
    token = tokens.token(ttl_seconds=1)
    tokens.clock.now += 3600
    for path in CLOUD_INIT_PATHS:
        assert tokens.request("GET", path, {TOKEN: token}).status == 200, path


def test_token_is_issued_only_by_the_metadata_server_and_only_at_its_path(tokens: TokenServer) -> None:
    assert tokens.request("PUT", "/latest/meta-data/", {TTL: "60"}).status == 405
    assert tokens.request("PUT", "/latest/api/token", {TTL: "60"}, part="mjf").status == 403
    # A source that is no slot is reset at accept, before any token is thought of.
    assert tokens.running.is_refused(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60"
                                     b"\r\nContent-Length: 0\r\n\r\n", source="127.0.0.1")


def test_token_request_keeps_the_connection_for_the_next_request(tokens: TokenServer) -> None:
    """curl -X PUT sends no body: the token and the GET that uses it may share a connection."""
    with tokens.running.connect() as client:
        client.sendall(f"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n{TTL}: 60\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        raw_head, _separator, body = head.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in raw_head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += client.recv(4096)
        client.sendall(f"GET {VAC_PATH} HTTP/1.1\r\nHost: x\r\n{TOKEN}: {body.decode()}\r\nConnection: close\r\n\r\n".encode())
        rest = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            rest += chunk
    assert raw_head.startswith(b"HTTP/1.1 200") and rest.startswith(b"HTTP/1.1 200")


def test_token_is_never_logged(tokens: TokenServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vacd")
    token = tokens.token()
    tokens.request("GET", VAC_PATH, {TOKEN: token})
    tokens.request("GET", VAC_PATH, {TOKEN: token}, source=source_for(4))
    tokens.request("GET", VAC_PATH, {TOKEN: token + "x"})
    tokens.request("PUT", "/latest/api/token", {TTL: "0"})
    assert "token not issued to this machine" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


def test_settings_default_is_optional() -> None:
    assert Settings(vac_space="s", factory_name="f", total_processors=1, host_processors=1,
                    gocdb_sitename="g").metadata_tokens == "optional"
