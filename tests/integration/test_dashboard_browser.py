"""The dashboard in a real browser: headless Chromium against a live three-factory space.

Three real vacd processes form a space over real UDP on loopback (127.0.0.21-23, libvirt's
in-memory test:///default driver, as tests/integration/test_three_factories.py; no guest
network, no guest API, so no machine-wide lock). A fourth member of the space is hostile:
a real VacQuery responder (vacquery.transport) that answers with a machinetype named
`<script>…` and a machine whose shutdown message is `<script>…`. The test plays the
payloads: `work-b` machines end with `300 <script>…` (a guest's PUT, as the guest API
stores it), which backs `work-b` off across the space, with that message as the reason.

What it pins (issue 14): Chromium (Debian's `chromium`) renders f1's /dashboard with its
script running; the machines table on the rendered page holds exactly the machines, states,
machinetypes and processors that `vac machines --json` lists; the hostile names and
messages appear as text and no script of theirs exists on the page; the screenshots (desktop
and phone width) are kept in $VAC_TEST_ARTEFACTS (default test-artefacts/).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from vacd.guestapi.joboutputs import Sender, store_upload
from vacquery.messages import FactoryStatus, MachineState, MachineStatus, MachinetypeStatus, Snapshot
from vacquery.responder_transport import ResponderProtocol, start_responder

pytestmark = [pytest.mark.allow_commands(sys.executable, "chromium"), pytest.mark.slow]

REPOSITORY = Path(__file__).resolve().parents[2]
SPACE = "dash.vactest.invalid"
PORT = 29960
FACTORIES = {f"f{n}.{SPACE}": f"127.0.0.{20 + n}" for n in (1, 2, 3)}
HOSTILE_FACTORY, HOSTILE_ADDRESS = f"f4.{SPACE}", "127.0.0.24"
PROCESSORS = 3
HOSTILE_MACHINETYPE = "<script>document.title='pwned-mt'</script>"
HOSTILE_MESSAGE = "300 <script>document.title='pwned-msg'</script> no more work"
PEER_MESSAGE = "300 <img src=x onerror=alert(1)> from a peer"
DEADLINE_SECONDS = 90.0


class Factory:
    def __init__(self, name: str, address: str, root: Path, dashboard: bool) -> None:
        self.name = name
        self.address = address
        self.prefix = root / name
        self.dashboard = dashboard
        self.process: "subprocess.Popen[bytes] | None" = None

    def configure(self, kernel: Path) -> None:
        (self.prefix / "etc").mkdir(parents=True)
        peers = " ".join(f"{name}={address}" for name, address in {**FACTORIES, HOSTILE_FACTORY: HOSTILE_ADDRESS}.items())
        dashboard = "metrics_address = 127.0.0.1:0\ndashboard = true\n" if self.dashboard else ""
        (self.prefix / "etc/vac.conf").write_text(f"""[settings]
vac_space = {SPACE}
factory_name = {self.name}
factories = {peers}
host_processors = {PROCESSORS}
total_processors = {PROCESSORS}
libvirt_uri = test:///default
vacquery_port = {PORT}
vacquery_bind_address = {self.address}
udp_timeout_seconds = 10
cycle_seconds = 1
shutdown_grace_seconds = 1
overload_per_processor = 100
{dashboard}
[machinetype work-a]
target_share = 2
machine_model = vm-raw
root_kernel = {kernel}
max_wallclock_seconds = 3600
backoff_seconds = 3600

[machinetype work-b]
target_share = 1
machine_model = vm-raw
root_kernel = {kernel}
max_wallclock_seconds = 3
min_wallclock_seconds = 3
fizzle_seconds = 1
backoff_seconds = 3600
""")

    def start(self) -> None:
        log = open(self.prefix / "vacd.stderr", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vacd.daemon", "--prefix", str(self.prefix), "--stderr"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPOSITORY,
            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def play_payloads(self) -> None:
        """work-b's payload finds no work and says so with a hostile message; work-a's says nothing."""
        for record_file in (self.prefix / "var/lib/vac/machines").glob("*/machine.json"):
            record = json.loads(record_file.read_text())
            message_file = record_file.parent / "joboutputs" / "shutdown_message"
            if record["machinetype"] == "work-b" and not message_file.exists():
                store_upload(message_file.parent, "shutdown_message", HOSTILE_MESSAGE.encode() + b"\n",
                             int(time.time()), 10**6, Sender(record["uuid"], record["ip_address"]))

    def metrics_port(self) -> Optional[int]:
        path = self.prefix / "vacd.stderr"
        text = path.read_text(errors="replace") if path.exists() else ""
        marker = "metrics served address=127.0.0.1:"
        if marker not in text:
            return None
        return int(text.split(marker, 1)[1].split()[0])

    def log_tail(self) -> str:
        path = self.prefix / "vacd.stderr"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def hostile_snapshot() -> Snapshot:
    now = int(time.time())
    header: dict[str, Any] = {"space": SPACE, "factory": HOSTILE_FACTORY, "daemon_version": "<b>Vac 03.00</b>"}
    machine = MachineStatus(
        **header, num_machines=1, machine=f"f4-00.{SPACE}", state=MachineState.SHUT_DOWN, uuid=None,
        created_time=now - 600, started_time=now - 590, heartbeat_time=now - 10, cpu_seconds=5.0,
        cpu_percentage=0.0, hs06=0.0, machinetype=HOSTILE_MACHINETYPE, shutdown_message=PEER_MESSAGE,
        shutdown_time=now - 5, processors=0,
    )
    machinetype = MachinetypeStatus(
        **header, num_machinetypes=1, machinetype=HOSTILE_MACHINETYPE, running_hs06=0.0, num_before_fizzle=0,
        shutdown_message=None, shutdown_time=None, shutdown_machine=None, running_machines=0, running_processors=0.0,
    )
    factory = FactoryStatus(**header, running_processors=0, running_machines=0, max_processors=1, max_machines=1)
    return Snapshot((machine,), (machinetype,), factory)


@pytest.fixture
def hostile_peer() -> Iterator[None]:
    """A real responder for f4 that answers the space's factories with hostile names."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    protocol = ResponderProtocol(trusted_sources=frozenset(FACTORIES.values()))
    protocol.publish(hostile_snapshot())
    transport = asyncio.run_coroutine_threadsafe(start_responder(HOSTILE_ADDRESS, PORT, protocol), loop).result(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def space(tmp_path: Path, hostile_peer: None) -> Iterator[dict[str, Factory]]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"the test driver never boots this")
    factories = {name: Factory(name, address, tmp_path, dashboard=name.startswith("f1."))
                 for name, address in FACTORIES.items()}
    for factory in factories.values():
        factory.configure(kernel)
        factory.start()
    try:
        yield factories
    finally:
        for factory in factories.values():
            factory.stop()


def vac_machines(factory: Factory) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-m", "vacd.cli", "--prefix", str(factory.prefix), "machines", "-J"],
                            capture_output=True, text=True, cwd=REPOSITORY, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)))
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def listed(statuses: list[dict[str, Any]]) -> set[tuple[str, str, str, str, int]]:
    """(factory, machine, machinetype, state, processors) of every slot, as `vac machines --json` gives."""
    return {(str(status["factory"]), str(status["machine"]), str(status.get("machinetype") or "-"),
             str(status["state"]), int(status.get("num_processors") or 0)) for status in statuses}


class PageTables(HTMLParser):
    """Rows of each table by id (cell text), and every <script> element's text, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.hidden_rows: dict[str, int] = {}
        self.texts: dict[str, str] = {}
        self.scripts: list[str] = []
        self._text_of: Optional[str] = None
        self._table: Optional[str] = None
        self._in_body = False
        self._row: Optional[list[str]] = None
        self._cell: Optional[list[str]] = None
        self._script: Optional[list[str]] = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or "?"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
            if "hidden" in dict(attrs) and self._table is not None:
                self.hidden_rows[self._table] = self.hidden_rows.get(self._table, 0) + 1
                self._row = None  # a row the filter hides is not on the page as shown
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "script":
            self._script = []
        if tag == "span" and dict(attrs).get("id"):
            self._text_of = dict(attrs)["id"]
            self.texts[str(self._text_of)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._text_of is not None:
            self.texts[self._text_of] += data
            self._text_of = None
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self._script.append(data)


def chromium(*arguments: str) -> str:
    browser = shutil.which("chromium")
    assert browser is not None
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--virtual-time-budget=8000", *arguments],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def artefacts_dir() -> Path:
    directory = Path(os.environ.get("VAC_TEST_ARTEFACTS", REPOSITORY / "test-artefacts"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def wait_until(what: str, condition: Any, factories: list[Factory]) -> Any:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        for factory in factories:
            factory.play_payloads()
            assert factory.process is not None and factory.process.poll() is None, factory.log_tail()
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {DEADLINE_SECONDS:.0f}s: {what}\n" + factories[0].log_tail())


def dashboard_json(port: int) -> Optional[dict[str, Any]]:
    """The document, or None while vacd has published no pass yet (503)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard.json", timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return None
        raise


def test_chromium_shows_the_space_as_vac_machines_lists_it_with_hostile_text_escaped(space: dict[str, Factory]) -> None:
    if shutil.which("chromium") is None:
        # CI must show the page in a browser (issue 14): there a missing chromium fails.
        message = "chromium is not installed (tools/install-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    first = space[f"f1.{SPACE}"]
    factories = list(space.values())
    port = wait_until("f1 serves its metrics and dashboard", first.metrics_port, factories)

    def settled() -> bool:
        """work-b backed off on f1 and every slot of the three runs work-a, as the listing shows."""
        document = dashboard_json(port)
        if document is None:
            return False
        backed_off = any(backoff["machinetype"] == "work-b" for backoff in document["backoffs"])
        slots = [m for m in document["machines"] if m["factory"] in FACTORIES]
        return backed_off and len(slots) == 3 * PROCESSORS and all(
            m["state"] == "Running" and m["machinetype"] == "work-a" for m in slots)

    wait_until("the space settles on work-a with work-b backed off", settled, factories)

    url = f"http://127.0.0.1:{port}/dashboard"
    for _ in range(5):
        before = listed(vac_machines(first))
        dom = chromium("--dump-dom", url)
        after = listed(vac_machines(first))
        if before == after:
            break
    else:
        raise AssertionError("the space kept changing under `vac machines`")
    page = PageTables()
    page.feed(dom)

    # The numbers: every row of the page's machines table is a slot `vac machines --json` lists, and no more.
    on_page = {(row[0], row[1], row[2], row[3], int(row[4])) for row in page.tables["machines"]}
    assert on_page == after, (on_page ^ after)
    assert {factory for factory, *_ in after} == {*FACTORIES, HOSTILE_FACTORY}
    # The factories table: each real factory up with its processors as its factory_status says.
    factory_rows = {row[0]: row for row in page.tables["factories"]}
    for name in FACTORIES:
        assert factory_rows[name][1].startswith("up"), factory_rows[name]
        assert factory_rows[name][2] == f"{PROCESSORS}/{PROCESSORS}", factory_rows[name]

    # Hostile text shows as text (the parser unescaped the DOM's entities) and runs nowhere.
    machinetype_names = [row[0] for row in page.tables["machinetypes"]]
    assert HOSTILE_MACHINETYPE in machinetype_names
    backoff = next(row for row in page.tables["backoffs"] if row[0] == "work-b")
    assert backoff[3] == HOSTILE_MESSAGE
    assert PEER_MESSAGE in [row[-1] for row in page.tables["machines"]]
    assert len(page.scripts) == 1 and "pwned" not in page.scripts[0]
    assert "<script>document.title" not in dom.replace("&lt;script&gt;document.title", "")
    assert "onerror=alert" not in dom.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    # Had any hostile script run, it would have set the title (the dump is taken after the page's own script ran).
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title == f"vac space {SPACE} from {first.name}", title

    # The page's own script ran under its Content-Security-Policy: it wrote "N of M" beside the filter.
    machine_count = len(after)
    assert page.texts["machine-count"] == f"{machine_count} of {machine_count}", page.texts
    # Its poll of /dashboard-times.json ran (allowed by connect-src 'self'): it found the page
    # current, or a newer pass and swapped the new page in. Chromium's virtual time runs ahead
    # of the factories' real passes, so which of the two is not fixed.
    assert re.match(r"Live: (checked|updated) ", page.texts["live"]), page.texts["live"]
    # A bookmarked view: the script filters and sorts as the query string says.
    filtered = PageTables()
    filtered.feed(chromium("--dump-dom", f"{url}?filter=f2.dash&sort=machine&order=desc"))
    shown = [row[1] for row in filtered.tables["machines"]]
    assert shown == sorted((name for factory, name, *_ in after if factory.startswith("f2.")), reverse=True), shown
    assert filtered.hidden_rows["machines"] == machine_count - len(shown)
    assert filtered.texts["machine-count"] == f"{len(shown)} of {machine_count}"

    # The screenshots a reader of the README sees (desktop and phone width), kept as artefacts.
    artefacts = artefacts_dir()
    # Desktop at three quarters scale: the size docs/dashboard.png (the README's) is copied at.
    chromium(f"--screenshot={artefacts / 'dashboard.png'}", "--window-size=1100,1460", "--force-device-scale-factor=0.75",
             url)
    chromium(f"--screenshot={artefacts / 'dashboard-phone.png'}", "--window-size=400,1800", url)
    assert (artefacts / "dashboard.png").stat().st_size > 10_000
    assert (artefacts / "dashboard-phone.png").stat().st_size > 5_000
