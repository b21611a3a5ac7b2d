"""A real vacd's /metrics: `promtool check metrics` clean, and its counters count what they say.

The same vacd serves its dashboard (issue 14): alone in its space, it shows itself.

One vacd runs for the module on libvirt's in-memory test:///default driver, with its
responder and /metrics on 127.0.0.1 (issue 12 item 7). Two VacQuery queries are sent to it
over real UDP, one answered and one for another space, and /metrics is scraped after the
pass that counted them. promtool comes from Debian's `prometheus` package (tools/install-deps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vacd import VERSION
from vacquery.codec import decode_reply, encode
from vacquery.messages import FactoryQuery

REPOSITORY = Path(__file__).resolve().parents[2]
SPACE = "vac01.example.com"
FACTORY = "f1.example.com"
# A real process answers in well under a second; the limit only stops a hung test.
DEADLINE_SECONDS = 60.0

Found = TypeVar("Found")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclasses.dataclass(frozen=True)
class Scraped:
    text: str
    samples: Samples
    answered_reply_cookie: Optional[str]
    dashboard: dict[str, Any]  # /dashboard.json, as decoded
    history_file_size: int


def wait_for(condition: Callable[[], Optional[Found]], what: str, log_path: Path) -> Found:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        result = condition()
        if result is not None:
            return result
        time.sleep(0.1)
    raise AssertionError(f"vacd did not {what} within {DEADLINE_SECONDS:.0f}s:\n{log_path.read_text()[-3000:]}")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def query_counted(port: int, queries: int) -> Optional[str]:
    """The /metrics text once it counts `queries` queries received, else None."""
    text = scrape(port)
    received = parse(text).get(("vac_datagrams_received_total", frozenset({("kind", "query")})), 0.0)
    return text if received >= queries else None


def start_vacd(prefix: Path, log_path: Path, vacquery_port: int) -> subprocess.Popen[bytes]:
    kernel = prefix / "vmlinuz"
    kernel.parent.mkdir(parents=True, exist_ok=True)
    kernel.write_bytes(b"the test driver never boots this")
    (prefix / "etc").mkdir(parents=True, exist_ok=True)
    (prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = {SPACE}
factory_name = {FACTORY}
host_processors = 2
libvirt_uri = test:///default
vacquery_port = {vacquery_port}
vacquery_bind_address = 127.0.0.1
metrics_address = 127.0.0.1:0
dashboard = true
cycle_seconds = 1

[machinetype atlas]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
""")
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "vacd.daemon", "--prefix", str(prefix), "--stderr"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPOSITORY,
            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        )


def ask(client: socket.socket, vacquery_port: int, space: str, cookie: str) -> None:
    client.sendto(encode(FactoryQuery(space, cookie)), ("127.0.0.1", vacquery_port))


def reply_cookie(client: socket.socket) -> Optional[str]:
    try:
        return decode_reply(client.recv(65536)).cookie
    except socket.timeout:
        return None


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    prefix = tmp_path_factory.mktemp("vacd")
    log_path = prefix / "vacd.log"
    vacquery_port = free_udp_port()
    process = start_vacd(prefix, log_path, vacquery_port)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)

        def metrics_port() -> Optional[int]:
            found = re.search(r"metrics served address=127\.0\.0\.1:(\d+)", log_path.read_text())
            return int(found.group(1)) if found else None

        status_file = prefix / "var/lib/vac/status.json"

        def status_file_inode() -> Optional[int]:
            return status_file.stat().st_ino if status_file.is_file() else None

        port = wait_for(metrics_port, "serve metrics", log_path)
        first = wait_for(status_file_inode, "publish a first status.json", log_path)
        # status.json is written before the responder gets the pass's snapshot; once the next
        # pass has replaced status.json (written by rename: a new inode), the first snapshot is in.
        wait_for(lambda: True if status_file_inode() not in (None, first) else None,
                 "publish a second status.json", log_path)
        ask(client, vacquery_port, SPACE, "answered-1")
        cookie = reply_cookie(client)
        ask(client, vacquery_port, "another-space.example.com", "wrong-space-1")
        # The responder's tally reaches the metrics at the end of each pass (every second).
        text = wait_for(lambda: query_counted(port, 2), "count both queries in /metrics", log_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard.json", timeout=5) as response:
            dashboard = json.loads(response.read())
        history = prefix / "var/lib/vac/dashboard-history"
        yield Scraped(text, parse(text), cookie, dashboard, history.stat().st_size if history.exists() else -1)
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.allow_commands("promtool")
def test_promtool_check_metrics_finds_nothing_wrong_in_a_live_vacd_metrics_page(scraped: Scraped) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    completed = subprocess.run([promtool, "check", "metrics"], input=scraped.text, capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout + completed.stderr == ""


def test_live_metrics_include_the_process_and_platform_collectors(scraped: Scraped) -> None:
    names = {name for name, _ in scraped.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
    assert "python_info" in names
    assert scraped.samples[("process_start_time_seconds", frozenset())] > 0


def test_live_factory_info_names_the_factory_space_and_vacd_version(scraped: Scraped) -> None:
    labels = frozenset({("factory", FACTORY), ("space", SPACE), ("version", VERSION)})
    assert scraped.samples[("vac_factory_info", labels)] == 1


def test_live_processor_capacity_is_a_gauge_without_a_counter_suffix(scraped: Scraped) -> None:
    assert scraped.samples[("vac_processors_capacity", frozenset())] == 2
    assert not [name for name, _ in scraped.samples if name == "vac_processors_total"]


def test_live_queries_are_each_received_once_and_only_the_refused_one_dropped(scraped: Scraped) -> None:
    assert scraped.answered_reply_cookie == "answered-1"
    query = ("kind", "query")
    assert scraped.samples[("vac_datagrams_received_total", frozenset({query}))] == 2
    drops = {dict(labels)["reason"]: count for (name, labels), count in scraped.samples.items()
             if name == "vac_datagrams_dropped_total"}
    assert drops == {"wrong_space": 1}
    assert scraped.samples[("vac_vacquery_replies_capped_total", frozenset())] == 0


def test_a_lone_factory_serves_its_dashboard_and_keeps_a_history_sample(scraped: Scraped) -> None:
    """With no peers the page shows this factory alone, and the first pass's sample is on disk."""
    document = scraped.dashboard
    assert document["factory"] == FACTORY and [row["name"] for row in document["factories"]] == [FACTORY]
    assert {machine["machine"] for machine in document["machines"]} == {"f1-00.example.com", "f1-01.example.com"}
    assert document["listing_time"] is None and document["census_time"] is None
    assert [sample["sequence"] for sample in document["history"]["samples"]] == [0]
    assert scraped.history_file_size == 2048  # one slot of the ring written, in place


def test_live_passes_are_counted_with_the_loop_threads_cpu_time(scraped: Scraped) -> None:
    """The pass cost is visible in production (issue 15 item 2), from the real loop."""
    complete = scraped.samples[("vac_passes_total", frozenset({("outcome", "complete")}))]
    assert complete >= 1
    assert scraped.samples[("vac_pass_duration_seconds_count", frozenset())] >= complete
    assert scraped.samples[("vac_pass_cpu_seconds_total", frozenset())] > 0
