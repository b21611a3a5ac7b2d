"""The VacQuery responder and the guest servers run on separate event loops (issue 11 item 3).

A guest flooding its servers keeps the guest loop busy; peers' queries must still be
answered and the responder's heartbeat stay fresh. Here the guest loop is held outright
(a callback that blocks until released), which is the worst a flood can do to it.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

from vacd.config import load_config
from vacd.daemon import Daemon
from vacd.paths import Paths
from vacquery.codec import decode_reply, encode_query
from vacquery.messages import FactoryQuery, FactoryStatus

SPACE = "vac01.example.com"
# Only stops a hung test: a real daemon answers and passes in well under a second.
DEADLINE_SECONDS = 60.0


def wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"vacd did not {what} within {DEADLINE_SECONDS:.0f}s")


def heartbeat(paths: Paths, part: str) -> int:
    try:
        return int(paths.heartbeat_file(part).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def ask_factory(port: int) -> FactoryStatus:
    """Ask until answered, as a census does: the first snapshot may not be published yet."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)
        while time.monotonic() < deadline:
            client.sendto(encode_query(FactoryQuery(SPACE, "c0ffee")), ("127.0.0.1", port))
            try:
                status = decode_reply(client.recv(65536)).status
            except socket.timeout:
                continue
            assert isinstance(status, FactoryStatus)
            return status
    raise AssertionError(f"no answer from the responder within {DEADLINE_SECONDS:.0f}s")


def test_responder_answers_and_beats_while_the_guest_loop_is_held_and_both_stop(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "prefix")
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text(
        f"[settings]\nvac_space = {SPACE}\nfactory_name = f1.example.com\nhost_processors = 1\n"
        "libvirt_uri = test:///default\nvacquery_port = 0\nvacquery_bind_address = 127.0.0.1\n"
        "vacquery_auth = optional\ncycle_seconds = 0.2\n"
    )
    paths.ensure_state_dirs()
    daemon = Daemon(paths, load_config(paths, host_fqdn="f1.example.com", host_cpu_count=1), "f1.example.com", 1)
    result: list[int] = []
    running = threading.Thread(target=lambda: result.append(daemon.run()), name="test-vacd")
    running.start()
    release = threading.Event()
    try:
        wait_until(lambda: daemon.responder_transport is not None and heartbeat(paths, "responder"),
                   "start its responder")
        assert daemon.guest_services is not None and daemon.vacquery_services is not None
        assert daemon.guest_services.thread is not daemon.vacquery_services.thread
        port = daemon.responder_transport.get_extra_info("sockname")[1]
        assert ask_factory(port).factory == "f1.example.com"
        held = threading.Event()

        def hold_the_guest_loop() -> None:
            held.set()
            release.wait(DEADLINE_SECONDS)

        daemon.guest_services.loop.call_soon_threadsafe(hold_the_guest_loop)
        assert held.wait(DEADLINE_SECONDS)
        print("COUNTERS", daemon.responder.counters)
        assert ask_factory(port).factory == "f1.example.com"
        # Passes go on and publish a fresh responder heartbeat while the guest loop is held.
        since = int(time.time()) + 1
        wait_until(lambda: heartbeat(paths, "responder") >= since, "beat for its responder")
        assert not release.is_set()
    finally:
        release.set()
        daemon.request_stop()
        running.join(DEADLINE_SECONDS)
    assert result == [0]
    assert daemon.guest_services is not None and daemon.vacquery_services is not None
    assert not daemon.guest_services.thread.is_alive()
    assert not daemon.vacquery_services.thread.is_alive()
