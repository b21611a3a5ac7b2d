"""Vacuum pipes fetched over real HTTP on loopback, off the loop, cached, and expanded (§8, issue 8 item 6)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.vacd.loopback_http import Hold, LoopbackServer, ScriptedRequest, answer
from vacd.config import Config, load_config
from vacd.reloadingconfig import ReloadingConfig
from vacd.paths import Paths
from vacd.fetch import PIPE_LIMITS
from vacd.pipefetch import RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS, BadPipeDocument, PipeFetcher, parse_pipe_document


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
root_kernel = vmlinuz
""")
    return load_config(Paths(tmp_path), host_fqdn="f1.example.com", host_cpu_count=4)


def refreshed(fetcher: PipeFetcher, config: Config) -> Config:
    """A pass that starts due refreshes, then (once they are done) what the next pass reads."""
    fetcher.apply(config, may_fetch=True)
    assert fetcher.wait_for_refreshes(timeout_seconds=30)
    return fetcher.apply(config, may_fetch=False)


def test_pipe_is_fetched_split_by_share_and_cached(tmp_path: Path, pipe_server: PipeServer) -> None:
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path), clock=lambda: 1e10)
    expanded = refreshed(fetcher, config)
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
    refreshed(fetcher, config)
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    os.utime(cache, (now[0], now[0]))
    now[0] += 3599
    refreshed(fetcher, config)
    assert pipe_server.requests == 1
    now[0] += 2
    assert "ex-a" in PipeFetcher(Paths(tmp_path), clock=lambda: now[0]).apply(config, may_fetch=False).machinetypes
    assert pipe_server.requests == 1
    refreshed(fetcher, config)
    assert pipe_server.requests == 2


def test_cache_seconds_0_fetches_every_pass(tmp_path: Path, pipe_server: PipeServer) -> None:
    pipe_server.document = dict(pipe_server.document, cache_seconds=0)
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    for _ in range(3):
        fetcher.apply(config, may_fetch=True)
        assert fetcher.wait_for_refreshes(timeout_seconds=30)
    assert pipe_server.requests == 3


@pytest.mark.parametrize("failure", ["status", "not-json", "not-an-object"])
def test_failed_fetch_keeps_the_cached_pipe(tmp_path: Path, pipe_server: PipeServer, failure: str) -> None:
    pipe_server.document = dict(pipe_server.document, cache_seconds=0)
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    refreshed(fetcher, config)
    if failure == "status":
        pipe_server.status = 500
    elif failure == "not-json":
        pipe_server.document = b"<html>maintenance</html>"
    else:
        pipe_server.document = ["a", "list"]
    expanded = refreshed(fetcher, config)
    assert pipe_server.requests == 2
    assert {"ex-a", "ex-b"} <= set(expanded.machinetypes)
    assert json.loads((tmp_path / "var/lib/vac/pipescache/ex.pipe").read_text())["machinetypes"]


def test_pipe_that_never_answered_adds_nothing(tmp_path: Path) -> None:
    config = site_config(tmp_path, "http://127.0.0.1:9/never.pipe")
    expanded = refreshed(PipeFetcher(Paths(tmp_path)), config)
    assert not any(name.startswith("ex-") for name in expanded.machinetypes)


def pipe_document(request: ScriptedRequest) -> None:
    answer(request, json.dumps({"cache_seconds": 3600, "machinetypes": [
        {"suffix": "a", "target_share": 1, "max_wallclock_seconds": 3600}]}).encode())


def test_config_source_does_not_wait_for_a_pipe_server_that_holds_the_request(tmp_path: Path) -> None:
    hold = Hold(pipe_document)
    server = LoopbackServer(hold)
    try:
        initial = site_config(tmp_path, server.url("/ex.pipe"))
        woken: list[str] = []
        source = ReloadingConfig(Paths(tmp_path), initial, "f1.example.com", 4)
        source.pipes.on_refreshed = lambda: woken.append("factory woken")
        first = source.current()
        assert hold.wait_for_arrivals(1)
        second = source.current()  # the loop's next pass, while the server still sits on the request
        assert hold.held == 1 and not hold.released.is_set()
        assert not any(name.startswith("ex-") for name in first.machinetypes | second.machinetypes)
        assert server.paths == ["/ex.pipe"]  # one refresh in flight, not one per pass
        hold.release()
        assert source.pipes.wait_for_refreshes(timeout_seconds=30)
        assert woken == ["factory woken"]
        assert "ex-a" in source.current().machinetypes
    finally:
        hold.release()
        server.stop()


def test_failed_pipe_backs_off_instead_of_being_fetched_every_pass(tmp_path: Path, pipe_server: PipeServer) -> None:
    pipe_server.status = 500
    config = site_config(tmp_path, pipe_server.url)
    now = [1000.0]
    fetcher = PipeFetcher(Paths(tmp_path), monotonic=lambda: now[0])

    def passes(count: int) -> None:
        for _ in range(count):
            fetcher.apply(config, may_fetch=True)
            assert fetcher.wait_for_refreshes(timeout_seconds=30)

    passes(5)
    assert pipe_server.requests == 1
    now[0] += RETRY_FIRST_SECONDS - 1
    passes(5)
    assert pipe_server.requests == 1
    now[0] += 1
    passes(5)
    assert pipe_server.requests == 2  # retried once, then waits twice as long
    now[0] += 2 * RETRY_FIRST_SECONDS - 1
    passes(5)
    assert pipe_server.requests == 2
    pipe_server.status = 200
    now[0] += 1
    passes(1)
    assert pipe_server.requests == 3
    assert fetcher.retry_state(config.vacuum_pipes[0]) is None  # a good fetch ends the backoff
    assert "ex-a" in fetcher.apply(config, may_fetch=False).machinetypes


def test_a_pipe_failing_for_weeks_still_backs_off_at_the_maximum(tmp_path: Path, pipe_server: PipeServer) -> None:
    # Twice an hour for three weeks: past the 1,024 doublings a float can hold, where an
    # uncapped exponent raised OverflowError inside the failure path and left the pipe
    # marked in flight, never fetched again.
    pipe_server.status = 500
    config = site_config(tmp_path, pipe_server.url)
    now = [1000.0]
    fetcher = PipeFetcher(Paths(tmp_path), monotonic=lambda: now[0])
    for failures in range(1, 1031):
        fetcher.apply(config, may_fetch=True)
        assert fetcher.wait_for_refreshes(timeout_seconds=30)
        retry = fetcher.retry_state(config.vacuum_pipes[0])
        assert retry is not None and retry.failures == failures
        now[0] = retry.retry_time
    assert pipe_server.requests == 1030
    # Still asked again once its wait is over, and still waiting the maximum.
    fetcher.apply(config, may_fetch=True)
    assert fetcher.wait_for_refreshes(timeout_seconds=30)
    last = fetcher.retry_state(config.vacuum_pipes[0])
    assert last is not None and last.failures == 1031
    assert last.retry_time - now[0] == RETRY_MAX_SECONDS


def test_oversized_pipe_is_refused_and_never_replaces_the_cache(tmp_path: Path, pipe_server: PipeServer) -> None:
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    refreshed(fetcher, config)
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    before = cache.read_text()
    pipe_server.document = b"{" + b" " * (1024 * 1024) + b"}"
    os.utime(cache, (0, 0))  # make the cached copy due again
    refreshed(fetcher, config)
    assert cache.read_text() == before
    retry = fetcher.retry_state(config.vacuum_pipes[0])
    assert retry is not None and retry.failures == 1


# --- hostile documents (issue 11 item 2) ------------------------------------------------------

HOSTILE_DOCUMENTS = {
    "repeated_key": b'{"machinetypes": [{"suffix": "a", "root_image": "a.iso", "root_image": "/etc/shadow"}]}',
    "repeated_top_level_key": b'{"machinetypes": [], "machinetypes": [{"suffix": "z"}]}',
    "deep_nesting": b'{"machinetypes": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "huge_integer": b'{"cache_seconds": ' + b"9" * 100_000 + b', "machinetypes": []}',
    "not_an_object": b'[{"suffix": "a"}]',
    "truncated": b'{"machinetypes": [{"suffix": "a"',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_DOCUMENTS))
def test_hostile_document_is_a_failed_fetch_and_keeps_the_cached_pipe(tmp_path: Path, pipe_server: PipeServer,
                                                                      kind: str) -> None:
    pipe_server.document = dict(pipe_server.document, cache_seconds=0)
    config = site_config(tmp_path, pipe_server.url)
    fetcher = PipeFetcher(Paths(tmp_path))
    refreshed(fetcher, config)
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    before = cache.read_text()
    pipe_server.document = HOSTILE_DOCUMENTS[kind]
    expanded = refreshed(fetcher, config)
    assert pipe_server.requests == 2
    assert cache.read_text() == before
    assert {"ex-a", "ex-b"} <= set(expanded.machinetypes)
    retry = fetcher.retry_state(config.vacuum_pipes[0])
    assert retry is not None and retry.failures == 1


@pytest.mark.parametrize("kind", sorted(HOSTILE_DOCUMENTS))
def test_strict_decoding_names_what_is_wrong(kind: str) -> None:
    with pytest.raises(BadPipeDocument) as refused:
        parse_pipe_document(HOSTILE_DOCUMENTS[kind])
    assert len(str(refused.value)) < 200


def test_cache_larger_than_a_fetch_may_be_is_not_read(tmp_path: Path) -> None:
    config = site_config(tmp_path, "http://127.0.0.1:9/never.pipe")
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    cache.parent.mkdir(parents=True)
    entries = [{"suffix": f"m{index}", "root_image": "x" * 1000} for index in range(1100)]
    cache.write_text(json.dumps({"cache_seconds": 3600, "machinetypes": entries}))
    assert cache.stat().st_size > PIPE_LIMITS.max_bytes
    expanded = PipeFetcher(Paths(tmp_path)).apply(config, may_fetch=False)
    assert not any(name.startswith("ex-") for name in expanded.machinetypes)


def test_warnings_of_a_changing_pipe_are_logged_once_each_and_not_hoarded(
        tmp_path: Path, pipe_server: PipeServer, caplog: pytest.LogCaptureFixture) -> None:
    initial = site_config(tmp_path, pipe_server.url)
    source = ReloadingConfig(Paths(tmp_path), initial, "f1.example.com", 4)
    cache = tmp_path / "var/lib/vac/pipescache/ex.pipe"
    for fetch in range(1, 6):
        pipe_server.document = {"cache_seconds": 3600, "machinetypes": [{"suffix": "a", f"colour{fetch}": 1}]}
        if cache.exists():
            os.utime(cache, (0, 0))  # due again: the VO's pipe says something new at every fetch
        source.current()
        assert source.pipes.wait_for_refreshes(timeout_seconds=30)
        source.current()
        source.current()
    logged = [record.getMessage() for record in caplog.records if "not accepted from a vacuum pipe" in record.getMessage()]
    assert [message.split("] ")[1].split(":")[0] for message in logged] == [f"colour{fetch}" for fetch in range(1, 6)]
    assert len(source._reported_warnings) == len(source.current().warnings)
