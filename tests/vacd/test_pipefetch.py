"""Vacuum pipes fetched over real HTTP on loopback, cached, and expanded (§8, acceptance 4, 6)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from vacd.config import Config, load_config
from vacd.paths import Paths
from vacd.pipefetch import PipeFetcher


class PipeServer:
    def __init__(self) -> None:
        self.document: Any = {"cache_seconds": 3600, "machinetypes": [
            {"suffix": "a", "target_share": 1, "max_wallclock_seconds": 3600},
            {"suffix": "b", "target_share": 3, "root_image": "/etc/passwd"},
        ]}
        self.status = 200
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps(server.document).encode() if not isinstance(server.document, bytes) else server.document
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/ex.pipe"

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def pipe_server() -> Iterator[PipeServer]:
    server = PipeServer()
    try:
        yield server
    finally:
        server.stop()


def site_config(tmp_path: Path, url: str) -> Config:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/vac.conf").write_text(f"""[settings]
vac_space = vac01.example.com
factory_name = f1.example.com
host_processors = 4

[vacuum_pipe ex]
vacuum_pipe_url = {url}
target_share = 10
fizzle_seconds = 1234
""")
    return load_config(Paths(tmp_path), host_fqdn="f1.example.com", host_cpu_count=4)


def test_pipe_is_fetched_split_by_share_and_cached(tmp_path: Path, pipe_server: PipeServer) -> None:
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path), clock=lambda: 1e10)
    expanded = fetcher.apply(config, may_fetch=True)
    assert expanded.machinetypes["ex-a"].target_share == pytest.approx(2.5)
    assert expanded.machinetypes["ex-b"].target_share == pytest.approx(7.5)
    assert expanded.machinetypes["ex-a"].fizzle_seconds == 1234  # copied from [vacuum_pipe ex]
    assert expanded.machinetypes["ex-b"].root_image is None  # a pipe may not name /etc/passwd
    assert (tmp_path / "var/lib/vac/pipescache/ex.pipe").exists()
    assert pipe_server.requests == 1


def test_young_cache_is_not_refetched_and_readers_never_fetch(tmp_path: Path, pipe_server: PipeServer) -> None:
    config = site_config(tmp_path, pipe_server.url)
    now = [2_000_000_000.0]
    fetcher = PipeFetcher(Paths(tmp_path), clock=lambda: now[0])
    fetcher.apply(config, may_fetch=True)
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    os.utime(cache, (now[0], now[0]))
    now[0] += 3599
    fetcher.apply(config, may_fetch=True)
    assert pipe_server.requests == 1
    now[0] += 2
    assert "ex-a" in PipeFetcher(Paths(tmp_path), clock=lambda: now[0]).apply(config, may_fetch=False).machinetypes
    assert pipe_server.requests == 1
    fetcher.apply(config, may_fetch=True)
    assert pipe_server.requests == 2


def test_cache_seconds_0_fetches_every_pass(tmp_path: Path, pipe_server: PipeServer) -> None:
    pipe_server.document = dict(pipe_server.document, cache_seconds=0)
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    for _ in range(3):
        fetcher.apply(config, may_fetch=True)
    assert pipe_server.requests == 3


@pytest.mark.parametrize("failure", ["status", "not-json", "not-an-object"])
def test_failed_fetch_keeps_the_cached_pipe(tmp_path: Path, pipe_server: PipeServer, failure: str) -> None:
    pipe_server.document = dict(pipe_server.document, cache_seconds=0)
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    fetcher.apply(config, may_fetch=True)
    if failure == "status":
        pipe_server.status = 500
    elif failure == "not-json":
        pipe_server.document = b"<html>maintenance</html>"
    else:
        pipe_server.document = ["a", "list"]
    expanded = fetcher.apply(config, may_fetch=True)
    assert {"ex-a", "ex-b"} <= set(expanded.machinetypes)
    assert json.loads((tmp_path / "var/lib/vac/pipescache/ex.pipe").read_text())["machinetypes"]


def test_pipe_that_never_answered_adds_nothing(tmp_path: Path) -> None:
    config = site_config(tmp_path, "http://127.0.0.1:9/never.pipe")
    expanded = PipeFetcher(Paths(tmp_path)).apply(config, may_fetch=True)
    assert not any(name.startswith("ex-") for name in expanded.machinetypes)
